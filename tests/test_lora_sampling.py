"""Sampling with LoRA files: scale 0 is the base exactly, merged equals unmerged, sample.py records the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.configs import compose
from vldm.adapters.lora import LoraSpec, adapter_parameters, inject_lora
from vldm.adapters.lora_file import base_identity, save_lora
from vldm.adapters.merge import apply_loras


@pytest.fixture(scope="module")
def pan_lora(smoke_chain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporal-attention LoRA with random weights for the smoke chain's i2v model."""
    from vldm.checkpoints.load import load_run

    model, _ = load_run(smoke_chain / "i2v")
    spec = LoraSpec(rank=2, alpha=2.0)
    inject_lora(model.network, spec)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter_parameters(model.network).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    path = tmp_path_factory.mktemp("loras") / "camera_pan_left.safetensors"
    return save_lora(path, model.network, spec, base_identity(smoke_chain / "i2v" / "model.safetensors"))


def _clip(smoke_chain: Path, loras: list, merge: bool = False) -> torch.Tensor:
    from vldm.checkpoints.load import load_run
    from vldm.diffusion.sampler_config import SamplerConfig
    from vldm.sampling.pipeline import LatentDiffusionSampler

    model, _ = load_run(smoke_chain / "i2v")
    apply_loras(model.network, loras, merge=merge)
    image = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    sampler = LatentDiffusionSampler.from_model(model)
    return sampler.image_to_video(image, 4, cfg=SamplerConfig(num_steps=2, sigma_max=80.0), seed=1)


def test_scale_zero_is_the_base_and_merged_equals_unmerged(smoke_chain: Path, pan_lora: Path) -> None:
    base = _clip(smoke_chain, [])
    assert torch.equal(_clip(smoke_chain, [(pan_lora, 0.0)]), base)
    unmerged = _clip(smoke_chain, [(pan_lora, 1.0), (pan_lora, -0.5)])
    merged = _clip(smoke_chain, [(pan_lora, 1.0), (pan_lora, -0.5)], merge=True)
    assert (unmerged - base).abs().max() > 1e-3
    assert (merged - unmerged).abs().max() <= 1e-5


def test_sample_py_with_loras(smoke_chain: Path, toy_root: Path, pan_lora: Path, tmp_path: Path) -> None:
    from vldm.sampling.run import sample_videos

    image = toy_root / "first_frames" / "val_000000.png"
    common = [f"checkpoint={smoke_chain / 'i2v'}", f"image={image}", f"output_dir={tmp_path}", "sampler.num_steps=1",
              "num_frames=2"]
    plain = sample_videos(compose("sample", common))
    adapted = sample_videos(compose("sample", [*common, f"lora=[{pan_lora}:0.8]", "lora_merge=true"]))
    assert plain[0] != adapted[0]  # the LoRA and its scale are part of the output's name
    record = json.loads(adapted[0].with_suffix(".json").read_text())
    assert record["lora"][0]["scale"] == 0.8 and str(pan_lora.resolve()) in record["lora"][0]["file"]
    assert record["lora_merge"] is True
    with pytest.raises(ValueError, match="must be a number"):
        sample_videos(compose("sample", [*common, f"lora=[{pan_lora}:strong]"]))


def test_merge_lora_job_writes_a_run_and_its_svd_export(smoke_chain: Path, pan_lora: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from vldm.checkpoints.load import load_run
    from vldm.checkpoints.svd_export import load_exported
    from vldm.io.safe_load import file_metadata
    from vldm.jobs.merge_lora import main

    out, svd = tmp_path / "merged_run", tmp_path / "merged_svd.safetensors"
    assert main([str(smoke_chain / "i2v"), str(out), "--lora", f"{pan_lora}:0.7", "--svd", str(svd),
                 "--dtype", "fp32"]) == 0
    assert "SVD layout" in capsys.readouterr().out
    base, _ = load_run(smoke_chain / "i2v")
    merged, _ = load_run(out)
    apply_loras(base.network, [(pan_lora, 0.7)], merge=True)
    own, theirs = base.state_dict(), merged.state_dict()
    assert own.keys() == theirs.keys() and all(torch.equal(own[k], theirs[k]) for k in own)
    assert file_metadata(out / "model.safetensors")["stage"] == "i2v"
    exported = load_exported(svd).state_dict()
    for key, value in own.items():
        if key in exported:
            assert torch.equal(exported[key], value), key
    with pytest.raises(FileExistsError, match="not empty"):
        main([str(smoke_chain / "i2v"), str(out), "--lora", str(pan_lora)])
