"""Stage run directories with random weights, and ``sample.py`` called in-process, for the sampling tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers.configs import compose, compose_train
from tests.helpers.models import randomize
from vldm.checkpoints.export import export_safetensors
from vldm.checkpoints.load import build_model

FAST = {"sampler.num_steps": 2, "num_frames": 3}


def make_run(root: Path, stage: str, *overrides: str, metadata: dict | None = None) -> Path:
    """A stage run directory as ``train.py`` leaves it (config.yaml + model.safetensors), random weights."""
    cfg = compose_train([f"stage={stage}", f"paths.root_dir={root}", *overrides])
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(0)
    module = randomize(build_model(cfg.model), 0)
    module.scale_factor.fill_(0.9)
    export_safetensors(module, run / "model.safetensors", metadata={"stage": stage, "global_step": "4",
                                                                     **(metadata or {})})
    return run


def sample(**overrides) -> list[Path]:
    """``sample.py`` with ``key=value`` overrides, in this process; the files it wrote."""
    from vldm.sampling.run import sample_videos

    return sample_videos(compose("sample", [f"{k}={v}" for k, v in overrides.items()]))


def frames_of(mp4: Path) -> np.ndarray:
    """int16 ``(T, H, W, 3)`` of the PNG frames written beside ``mp4`` (``save_frames=true``)."""
    folder = mp4.parent / f"{mp4.stem}_frames"
    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])
