"""Sampling, evaluation and export need no Lightning: with ``pytorch_lightning`` made unimportable
(a meta-path blocker in a fresh interpreter), ``sample.py`` samples a run directory and an
official-layout file loads and samples, giving the video it gives with Lightning present (float rounding
aside: another process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers.configs import compose_train
from vldm.checkpoints.export import export_safetensors
from vldm.checkpoints.load import build_model

REPO = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class NoLightning(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric"):
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, NoLightning())
""")


def run_blocked(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code) + "\nassert not any(m.split('.')[0] in ('pytorch_lightning', " \
        "'lightning', 'lightning_fabric') for m in sys.modules)\n"
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=600)


def random_run(root: Path) -> Path:
    """An image-to-video stage's run directory as ``train.py`` leaves it (config.yaml + model.safetensors), random weights."""
    cfg = compose_train(["stage=i2v", "experiment=smoke", f"paths.root_dir={root}"])
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model = build_model(cfg.model)
    model.scale_factor.fill_(0.8)
    export_safetensors(model, run / "model.safetensors", metadata={"stage": "i2v"})
    return run


def test_the_blocker_blocks() -> None:
    result = run_blocked("import pytorch_lightning\n")
    assert result.returncode != 0 and "blocked: pytorch_lightning" in result.stderr


def test_library_imports_and_sample_py_run_without_lightning(tmp_path: Path) -> None:
    run = random_run(tmp_path)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "frame.png")
    result = run_blocked(f"""
        import vldm.sampling, vldm.evaluation, vldm.checkpoints.load, vldm.checkpoints.svd_export
        import vldm.sampling.run, vldm.evaluation.run, vldm.models
        import runpy
        sys.argv = ["sample.py", "checkpoint={run}", "image={tmp_path / 'frame.png'}", "output_dir={tmp_path / 'out'}",
                    "sampler.num_steps=2", "hydra.run.dir={tmp_path / 'hydra'}"]
        try:
            runpy.run_path("sample.py", run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    [mp4] = (tmp_path / "out").glob("frame_seed0_*.mp4")  # <image>_seed<N>_<settings hash>
    assert mp4.stat().st_size > 0 and mp4.with_suffix(".json").is_file()


def test_an_official_layout_file_loads_and_samples_without_lightning(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tests.helpers.models import tiny_svd_cfg
    from vldm.checkpoints.load import load_model_file
    from vldm.sampling.pipeline import LatentDiffusionSampler

    cfg = tiny_svd_cfg("svd_xt")
    model = build_model(cfg.model).eval()
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    weights = tmp_path / "svd_xt_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    OmegaConf.save(cfg.model, tmp_path / "model.yaml", resolve=True)
    image = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    torch.save(image, tmp_path / "image.pt")
    sample = """
        loaded = load_model_file(OmegaConf.load(r"{dir}/model.yaml"), r"{dir}/svd_xt_tiny.safetensors")
        image = torch.load(r"{dir}/image.pt", weights_only=True)
        cfg = loaded.sampler_cfg.__class__(num_steps=2)
        video = LatentDiffusionSampler.from_model(loaded).image_to_video(image, 3, fps_id=6, motion_bucket_id=127,
                                                                         cond_aug=0.02, cfg=cfg, seed=1)
    """.format(dir=tmp_path)
    imports = textwrap.dedent("""
        import torch
        from omegaconf import OmegaConf
        from safetensors.torch import save_file
        from vldm.checkpoints.load import load_model_file
        from vldm.sampling.pipeline import LatentDiffusionSampler
    """)
    save = f'save_file({{"video": video.contiguous()}}, r"{tmp_path}/video.safetensors")\n'
    result = run_blocked(imports + textwrap.dedent(sample) + save)
    assert result.returncode == 0, result.stderr[-3000:]
    scope = {"torch": torch, "OmegaConf": OmegaConf, "load_model_file": load_model_file,
             "LatentDiffusionSampler": LatentDiffusionSampler}
    exec(textwrap.dedent(sample), scope)
    blocked = load_file(str(tmp_path / "video.safetensors"))["video"]
    assert blocked.shape == (1, 3, 3, 32, 32) and torch.isfinite(blocked).all()
    torch.testing.assert_close(blocked, scope["video"], rtol=1e-5, atol=1e-6)
