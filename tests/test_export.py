"""The export layout: EMA weights in place of the network's, the EMA copy dropped, from a module or a state dict."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vldm.checkpoints.export import export_safetensors, export_state, export_state_dict
from vldm.training.ema import EMA


class Module(nn.Module):
    """The keys of a diffusion module: ``model.diffusion_model``, its ``model_ema`` and a first stage."""

    def __init__(self, ema: bool = True) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = nn.Linear(2, 2)
        self.first_stage_model = nn.Linear(2, 1)
        self.model_ema = EMA(self.model.diffusion_model) if ema else None


def test_export_state_dict_puts_the_ema_weights_in_place_of_the_network() -> None:
    live, ema, other = torch.zeros(2), torch.ones(2), torch.full((3,), 5.0)
    state = {"model.diffusion_model.w": live, "model_ema.shadow.w": ema, "model_ema.num_updates": torch.tensor(3),
             "first_stage_model.x": other}
    out = export_state_dict(state)
    assert set(out) == {"model.diffusion_model.w", "first_stage_model.x"}
    assert out["model.diffusion_model.w"] is ema and out["first_stage_model.x"] is other
    assert export_state_dict(state, use_ema=False)["model.diffusion_model.w"] is live
    assert export_state_dict({"model.diffusion_model.w": live})["model.diffusion_model.w"] is live  # no EMA kept


def test_module_export_is_the_state_dict_export(tmp_path: Path) -> None:
    module = Module()
    with torch.no_grad():
        module.model_ema.shadow.weight.fill_(7.0)
    out = export_state(module)
    assert set(out) == set(Module(ema=False).state_dict())
    assert torch.equal(out["model.diffusion_model.weight"], torch.full((2, 2), 7.0))
    live = export_state(module, use_ema=False)["model.diffusion_model.weight"]
    assert torch.equal(live, module.model.diffusion_model.weight)
    assert all(torch.equal(v, export_state_dict(module.state_dict())[k]) for k, v in out.items())
    path = export_safetensors(module, tmp_path / "model.safetensors", metadata={"stage": "video", "steps": 3})
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
        assert set(f.keys()) == set(out)
    assert metadata.pop("vldm_sha256") and metadata == {"stage": "video", "steps": "3"}  # + the content hash
