"""Lean, strict loading of checkpoints (vldm.checkpoints.official): dtypes, devices, shared modules,
file formats, bad files, known-model advice, the released SVD-XT layout at full size, and host memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.configs import compose_train
from tests.helpers.models import builder, meta_shapes, randomize, save_state, tiny_i2v_cfg
from tests.helpers.repo import REPO
from vldm.checkpoints.official import load_pretrained
from vldm.io.safe_load import CheckpointError
from vldm.io.safetensors_stream import header_bytes, tensor_bytes, write_safetensors


# ---------------------------------------------------------------------------- helpers
def sparse_safetensors(path: Path, shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype,
                       filled: Mapping[str, torch.Tensor] = {}) -> Path:
    """A full-size safetensors file made in an instant: the header, the ``filled`` tensors at their
    offsets, and a sparse (zero, unallocated) remainder."""
    specs = [(k, shape, dtype) for k, shape in sorted(shapes.items())]
    head, offsets = header_bytes(specs)
    with open(path, "wb") as f:
        f.write(head)
        for key, value in filled.items():
            f.seek(len(head) + offsets[key][0])
            f.write(tensor_bytes(value, dtype))
        f.truncate(len(head) + max((end for _, end in offsets.values()), default=0))
    return path


@pytest.fixture(scope="module")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Callable[[], nn.Module], nn.Module, Path]:
    """(builder, a random tiny video module, its state in the SGM layout on disk)."""
    build = builder(tiny_i2v_cfg())
    torch.manual_seed(0)
    module = randomize(build()).eval()
    module.scale_factor.fill_(0.9)
    path = save_state(module.state_dict(), tmp_path_factory.mktemp("video") / "video.safetensors")
    return build, module, path


# ---------------------------------------------------------------------------- dtype, device, buffers
def test_fp16_with_fp32_prefix_no_meta_left(video_file) -> None:
    build, reference, path = video_file
    module = load_pretrained(build, path, dtype=torch.float16, keep_fp32=["first_stage_model"])
    assert not [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    dtypes = {n: p.dtype for n, p in module.named_parameters(remove_duplicate=False)}
    assert {d for n, d in dtypes.items() if n.startswith("model.")} == {torch.float16}
    # the first stage is shared with the conditioning-frame encoder: fp32 under both names
    assert {d for n, d in dtypes.items() if n.startswith("first_stage_model.")} == {torch.float32}
    assert {d for n, d in dtypes.items() if n.startswith("conditioner.embedders.3.encoder.")} == {torch.float32}
    assert module.first_stage_model is module.conditioner.embedders[3].encoder
    assert float(module.scale_factor) == pytest.approx(0.9)  # a persistent buffer, read from the file
    loaded = module.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded[name], value.to(loaded[name].dtype)), name


def test_built_dtype_and_identical_outputs(video_file) -> None:
    build, reference, path = video_file
    module = load_pretrained(build, path).eval()
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    x = torch.randn(2, 4, 8, 8)
    cond = {"crossattn": torch.randn(2, 1, 64), "vector": torch.randn(2, 96), "concat": torch.randn(2, 4, 8, 8)}
    sigma = torch.tensor([0.5, 3.0])
    kwargs = dict(num_frames=2, image_only_indicator=torch.zeros(1, 2))
    out = module.denoiser(module.model, x, sigma, cond, **kwargs)
    ref = reference.denoiser(reference.model, x, sigma, cond, **kwargs)
    assert out.abs().mean() > 0.01 and torch.equal(out, ref)


def test_computed_buffers_survive_and_follow_the_device(video_file) -> None:
    build, _, path = video_file
    module = load_pretrained(build, path, dtype=torch.bfloat16, device="cpu")
    sf = module.scale_factor
    assert sf.device.type == "cpu" and not sf.is_meta


def test_torch_checkpoint_formats(video_file, tmp_path: Path) -> None:
    build, reference, _ = video_file
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "global_step": 3}, tmp_path / "lightning.ckpt")
    for name in ("plain.pt", "lightning.ckpt"):
        module = load_pretrained(build, tmp_path / name, dtype=torch.float16)
        key = "model.diffusion_model.input_blocks.0.0.weight"
        assert torch.equal(module.state_dict()[key], state[key].half())


def test_shared_module_with_differing_copies_is_refused(video_file, tmp_path: Path) -> None:
    build, reference, _ = video_file
    state = dict(reference.state_dict())
    key = "conditioner.embedders.3.encoder.encoder.conv_in.weight"
    state[key] = state[key] + 1.0
    path = save_state(state, tmp_path / "alias.safetensors")
    with pytest.raises(CheckpointError, match=r"shares one module.*first_stage_model\.encoder\.conv_in\.weight"):
        load_pretrained(build, path)


def test_meta_tensor_left_over_is_named(tmp_path: Path) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("table", torch.empty(3, device="meta"), persistent=False)

    path = save_state({f"lin.{k}": v for k, v in nn.Linear(2, 2).state_dict().items()}, tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match="still on the meta device.*table"):
        load_pretrained(Odd, path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loads_straight_onto_the_gpu(video_file) -> None:
    build, reference, path = video_file
    module = load_pretrained(build, path, dtype=torch.float16, device="cuda")
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    assert {t.device.type for _, t in tensors} == {"cuda"}
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(module.state_dict()[key].cpu(), reference.state_dict()[key].half())


def test_identify_other_formats() -> None:
    from vldm.io.identify import identify

    assert "diffusers-format" in str(identify({"down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3)}))
    assert "OpenCLIP model file" in str(identify({"visual.proj": (4, 4), "transformer.resblocks.0.ln_1.weight": (4,)}))
    assert "autoencoder on its own" in str(identify({"encoder.conv_in.weight": (1,), "decoder.conv_in.weight": (1,)}))
    assert identify({"something.else": (1,)}) is None


# ---------------------------------------------------------------------------- bad files
def test_missing_file_names_it_and_where_it_is_published(video_file, tmp_path: Path) -> None:
    build = video_file[0]
    with pytest.raises(FileNotFoundError, match=r"svd_xt\.safetensors.*stabilityai/stable-video-diffusion-img2vid-xt"):
        load_pretrained(build, tmp_path / "svd_xt.safetensors")
    with pytest.raises(FileNotFoundError, match=r"v2-1_768-ema-pruned\.safetensors.*stabilityai/stable-diffusion-2-1"):
        load_pretrained(build, tmp_path / "v2-1_768-ema-pruned.safetensors", layout="ldm")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*mine\.safetensors$"):
        load_pretrained(build, tmp_path / "mine.safetensors")


def test_truncated_and_corrupt_files(video_file, tmp_path: Path) -> None:
    build, _, path = video_file
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not a zip either")
    for name in ("cut.safetensors", "junk.safetensors", "junk.ckpt"):
        with pytest.raises(CheckpointError, match=rf"cannot read checkpoint .*{name}"):
            load_pretrained(build, tmp_path / name)


def test_missing_unexpected_and_wrong_shapes_are_named(video_file, tmp_path: Path) -> None:
    build, reference, _ = video_file
    state = dict(reference.state_dict())
    del state["model.diffusion_model.out.2.bias"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    path = save_state(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(build, path)
    msg = str(err.value)
    assert "missing keys: model.diffusion_model.out.2.bias" in msg
    assert "unexpected keys: model.diffusion_model.extra.weight" in msg
    assert "shape mismatches: model.diffusion_model.input_blocks.0.0.weight (32, 4, 3, 3) vs model (32, 8, 3, 3)" in msg


def test_unknown_layout_is_refused(video_file) -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        load_pretrained(video_file[0], video_file[2], layout="diffusers")


# ---------------------------------------------------------------------------- released layouts, full size
@pytest.fixture(scope="module")
def released_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    from vldm.checkpoints.ldm_layout import ldm_schedule, to_ldm_key
    from vldm.diffusion.discretization import ddpm_sigmas

    svd = meta_shapes(builder(compose_train(["model=svd_xt"]).model))
    sd = {to_ldm_key(k): v for k, v in meta_shapes(builder(compose_train(["model=sd21"]).model)).items()}
    sd.update({k: tuple(v.shape) for k, v in ldm_schedule(ddpm_sigmas()).items()})
    return {"svd_xt": svd, "sd21": sd}


def test_svd_xt_config_has_the_released_layout(released_shapes) -> None:
    import gzip

    with gzip.open(REPO / "tests" / "data" / "svd_xt_reference_keys.json.gz", "rt") as f:
        reference = {k: tuple(s) for k, s in json.load(f)}
    assert released_shapes["svd_xt"] == reference


def test_wrong_released_file_says_which_model_it_is(released_shapes, tmp_path: Path) -> None:
    """SVD-XT's file into the SD 2.1 config and back: only the headers are read (sparse files)."""
    svd = sparse_safetensors(tmp_path / "svd_xt.safetensors", released_shapes["svd_xt"], torch.float16)
    sd = sparse_safetensors(tmp_path / "v2-1_768-ema-pruned.safetensors", released_shapes["sd21"], torch.float16)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(builder(compose_train(["model=sd21"]).model), svd, layout="ldm")
    assert "Stable Video Diffusion with the temporal VAE decoder" in str(err.value)
    assert "use model=svd_xt" in str(err.value) and "Stable Diffusion 2.x" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(builder(compose_train(["model=svd_xt"]).model), sd)
    assert "Stable Diffusion 2.x in the LDM layout" in str(err.value) and "use model=sd21" in str(err.value)
    assert "checkpoint_layout: ldm" in str(err.value)


@pytest.mark.slow
def test_full_size_svd_xt_loads_in_fp16(released_shapes, tmp_path: Path) -> None:
    """A file in the exact released layout (4.8 GB, mostly sparse zeros, a few random tensors) loads
    strictly into ``model=svd_xt`` as fp16 with nothing left on ``meta``."""
    shapes = released_shapes["svd_xt"]
    picks = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
             "first_stage_model.decoder.conv_out.time_mix_conv.weight",
             "conditioner.embedders.0.open_clip.model.visual.proj",
             "conditioner.embedders.3.encoder.quant_conv.weight"]
    filled = {k: torch.randn(shapes[k]) for k in picks}
    path = sparse_safetensors(tmp_path / "svd_xt.safetensors", shapes, torch.float16, filled)
    module = load_pretrained(builder(compose_train(["model=svd_xt"]).model), path, dtype=torch.float16)
    state = module.state_dict()
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert not [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    for key, value in filled.items():
        assert torch.equal(state[key], value.half()), key
    assert sum(p.numel() for p in module.network.parameters()) == 1_524_623_082


# ---------------------------------------------------------------------------- host memory
RSS_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    mode, path = sys.argv[1], sys.argv[2]
    build = lambda: nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(16)])
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    from safetensors.torch import load_file
    from vldm.checkpoints.official import load_pretrained
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak: measure the load alone
    start = hwm()
    if mode == "lean":
        model = load_pretrained(build, path, dtype=torch.float16)
    elif mode == "load_then_cast":
        state = {k: v.half() for k, v in load_file(path).items()}
        model = build().half()
        model.load_state_dict(state)
    else:  # build fp32, load fp32, cast the model
        model = build()
        model.load_state_dict(load_file(path))
        model = model.half()
    assert next(model.parameters()).dtype == torch.float16
    print(json.dumps({"mode": mode, "peak_bytes": hwm() - start}))
""")


def measure_peak_rss(path: Path, mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, mode, str(path)], capture_output=True, text=True,
                         env=env, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


@pytest.mark.slow
def test_fp16_load_of_an_fp32_file_never_holds_an_fp32_copy(tmp_path: Path) -> None:
    """1.07 GB fp32 file (16 x 4096^2 weights) loaded as fp16: lean peak ~ the fp16 model plus one
    tensor, against loading the file whole then casting."""
    shapes = {f"{i}.weight": (4096, 4096) for i in range(16)} | {f"{i}.bias": (4096,) for i in range(16)}
    gen = torch.Generator().manual_seed(0)
    path = write_safetensors(tmp_path / "big.safetensors", [(k, s, torch.float32) for k, s in shapes.items()],
                             lambda k: torch.randn(shapes[k], generator=gen))
    size = path.stat().st_size
    peaks = {mode: measure_peak_rss(path, mode) for mode in ("lean", "load_then_cast", "fp32_model_then_cast")}
    print("\nfile %.2f GB fp32; peak host RSS during the load: " % (size / 1e9)
          + ", ".join(f"{m} {p / 1e9:.2f} GB" for m, p in peaks.items()))
    assert peaks["lean"] < 0.5 * size + 0.25e9  # the fp16 model (0.54 GB) + one 64 MB tensor + slack
    assert peaks["load_then_cast"] > size  # the whole fp32 file was in memory
    assert peaks["lean"] < 0.6 * peaks["load_then_cast"]
