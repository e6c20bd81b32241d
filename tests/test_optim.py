"""Learning-rate schedules."""

import pytest

from vldm.training.optim import lr_multiplier


def test_warmup_then_cosine_to_zero() -> None:
    assert lr_multiplier(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, "cosine", warmup_steps=10) == pytest.approx(0.0, abs=1e-12)


def test_constant_after_warmup() -> None:
    assert [lr_multiplier(s, 50, "constant", 2) for s in (0, 1, 2, 49)] == [0.5, 1.0, 1.0, 1.0]


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(0, 10, "linear")
