"""The official SVD / SVD-XT architecture: released key layout, size, strict loading, temporal decoder.

The reference layouts in ``tests/data`` come from the reference implementation itself
(``tools/make_svd_reference_keys.py`` builds SGM's ``DiffusionEngine`` from its own configs),
independently of vldm's classes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.configs import compose_train
from tests.helpers.models import TINY_AE, TINY_CLIP, tiny_svd_cfg
from vldm.checkpoints.load import build_model
from vldm.io.safe_load import CheckpointError, load_state_dict_file, load_strict
from vldm.conditioning.i2v_inputs import expand_to_frames, i2v_inputs
from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder, antialiased_resize, build_clip, causal_mask
from vldm.nn.autoencoder import AutoencoderKL
from vldm.nn.temporal_decoder import FrameStackResBlock, TemporalDecoder

DATA = Path(__file__).parent / "data"
REFERENCE = {
    "svd": "svd_xt_reference_keys.json.gz",  # SVD and SVD-XT share one architecture
    "svd_xt": "svd_xt_reference_keys.json.gz",
    "svd_xt_1_1": "svd_xt_reference_keys.json.gz",
    "svd_image_decoder": "svd_xt_image_decoder_reference_keys.json.gz",
    "svd_xt_image_decoder": "svd_xt_image_decoder_reference_keys.json.gz",
}
SVD_UNET_PARAMETERS = 1_524_623_082  # measured; the paper's "1.52B"
def reference_layout(name: str) -> dict[str, tuple[int, ...]]:
    with gzip.open(DATA / REFERENCE[name], "rt") as f:
        return {key: tuple(shape) for key, shape in json.load(f)}


def build_on_meta(model: str):
    cfg = compose_train([f"model={model}"])
    with torch.device("meta"):
        return build_model(cfg.model)


def key_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- released layout


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_state_dict_equals_released_layout(model: str) -> None:
    ours, ref = key_shapes(build_on_meta(model)), reference_layout(model)
    missing, unexpected = sorted(set(ref) - set(ours)), sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing {missing[:8]}; unexpected {unexpected[:8]}"
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}
    assert len(ours) == (2446 if "image_decoder" not in model else 2322)


def test_unet_size_and_decoder_reach() -> None:
    module = build_on_meta("svd_xt")
    n = sum(p.numel() for p in module.network.parameters())
    assert n == SVD_UNET_PARAMETERS
    assert round(n / 1e9, 2) == 1.52
    assert module.first_stage_model.temporal_receptive_radius == 29  # 14 resblocks x 2 + conv_out
    assert build_on_meta("svd_image_decoder").first_stage_model.temporal_receptive_radius == 0


def test_no_non_persistent_buffers_below_the_module() -> None:
    """A non-persistent buffer would stay on ``meta`` after ``load_state_dict(assign=True)``."""
    module = build_on_meta("svd_xt")
    for part in (module.model, module.conditioner, module.first_stage_model):
        leftovers = [f"{name}.{b}" for name, m in part.named_modules() for b in m._non_persistent_buffers_set]
        assert leftovers == []
    assert [name for name, _ in module.conditioner.named_buffers()] == []


# ---------------------------------------------------------------- strict round trip at toy size


def _forward(module, seed: int = 0, num_frames: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning -> one UNet call -> decode: every part of the model takes part."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    cond = expand_to_frames(module.conditioner(i2v_inputs(image, 6, 127, 0.02, generator=g)), num_frames)
    x = torch.randn(num_frames, 4, 8, 8, generator=g)
    net_in = torch.cat([x, cond["concat"]], dim=1)
    out = module.network(net_in, torch.full((num_frames,), 0.3), context=cond["crossattn"], y=cond["vector"],
                         num_frames=num_frames, image_only_indicator=torch.zeros(1, num_frames))
    return out, module.first_stage_model.decode(out, num_frames=num_frames)


def _perturb(module: nn.Module, seed: int) -> None:
    """Move every weight (zero-initialised layers too), so equality is meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["svd_xt", "svd_image_decoder"])
def test_strict_round_trip_through_safetensors(model: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cfg = tiny_svd_cfg(model)
    source = build_model(cfg.model).eval()
    _perturb(source, seed=1)
    path = tmp_path / f"{model}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    fresh = build_model(cfg.model).eval()
    load_strict(fresh, load_state_dict_file(path), what=str(path))
    with torch.device("meta"):
        on_meta = build_model(cfg.model).eval()
    on_meta.load_state_dict(load_state_dict_file(path), strict=True, assign=True)
    for part in (on_meta.model, on_meta.conditioner, on_meta.first_stage_model):
        assert not any(t.is_meta for t in [*part.parameters(), *part.buffers()])

    expected = _forward(source)
    for loaded in (fresh, on_meta):
        for a, b in zip(expected, _forward(loaded)):
            assert torch.equal(a, b)
    assert expected[1].shape == (3, 3, 16, 16)


def test_wrong_layout_fails_naming_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cfg = tiny_svd_cfg("svd_xt")
    module = build_model(cfg.model)
    state = module.state_dict()
    # a key in the pre-SVD layout of the image embedder (no ``open_clip.`` level), a dropped mix factor
    state["conditioner.embedders.0.model.logit_scale"] = state.pop("conditioner.embedders.0.open_clip.model.logit_scale")
    state.pop("first_stage_model.decoder.mid.block_1.mix_factor")
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_strict(build_model(cfg.model), load_state_dict_file(path), what=str(path))
    message = str(err.value)
    assert "first_stage_model.decoder.mid.block_1.mix_factor" in message
    assert "missing keys: conditioner.embedders.0.open_clip.model.logit_scale" in message
    assert "unexpected keys: conditioner.embedders.0.model.logit_scale" in message


# ---------------------------------------------------------------- temporal decoder


def _decoders(**ae) -> tuple[AutoencoderKL, AutoencoderKL]:
    image = AutoencoderKL(**TINY_AE, use_quant_conv=False, **ae).eval()
    video = AutoencoderKL(**TINY_AE, use_quant_conv=False, decoder="temporal", **ae).eval()
    _perturb(image, seed=2)
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(("time_stack." in k or k.endswith("mix_factor") or ".time_mix_conv." in k) for k in missing)
    return image, video


@torch.no_grad()
def test_fresh_temporal_decoder_equals_image_decoder_per_frame() -> None:
    image, video = _decoders()
    z = torch.randn(6, 4, 8, 8)
    expected = image.decode(z)
    assert torch.equal(video.decode(z, num_frames=3), expected)  # two clips of three frames
    for block in (m for m in video.modules() if hasattr(m, "mix_factor")):
        block.mix_factor.fill_(1.7)  # any blend: the zero-output time_stack is the identity
    torch.testing.assert_close(video.decode(z, num_frames=6), expected, rtol=0, atol=1e-5)
    video.decoder.mid.block_1.time_stack.out_layers[-1].weight.normal_()
    assert (video.decode(z, num_frames=6) - expected).abs().max() > 1e-3  # the temporal path is live


@torch.no_grad()
def test_temporal_decoder_clips_are_independent() -> None:
    _, video = _decoders()
    _perturb(video, seed=3)
    z = torch.randn(8, 4, 4, 4)
    both = video.decode(z, num_frames=4)
    torch.testing.assert_close(both, torch.cat([video.decode(z[:4]), video.decode(z[4:])]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="whole number of clips"):
        video.decode(z, num_frames=3)


@torch.no_grad()
def test_temporal_receptive_radius() -> None:
    _, video = _decoders()
    _perturb(video, seed=4)
    radius = video.temporal_receptive_radius
    assert radius == 13  # 6 resblocks (mid 2 + 2 levels x 2) x 2 time convs + conv_out's time_mix_conv
    frames, hit = 16, 0
    z = torch.randn(frames, 4, 4, 4)
    bumped = z.clone()
    bumped[hit] += 1.0

    def change(decoder: AutoencoderKL) -> torch.Tensor:
        return (decoder.decode(bumped) - decoder.decode(z)).flatten(1).abs().amax(dim=1)

    # the time_stack GroupNorms see the whole clip: with them every frame moves a little
    assert (change(video) > 0).all()
    # without them only the temporal convolutions carry information across frames
    for block in (m for m in video.modules() if isinstance(m, FrameStackResBlock)):
        block.in_layers[0] = nn.Identity()
        block.out_layers[0] = nn.Identity()
    for conv in (m for m in video.modules() if isinstance(m, nn.Conv3d)):
        conv.weight.normal_(0.0, 0.3)  # strong enough to carry a change across all 13 hops
    reach = change(video)
    assert (reach[: radius + 1] > 1e-5).all()
    assert (reach[radius + 1:] == 0).all()
    assert isinstance(video.decoder, TemporalDecoder)


# ---------------------------------------------------------------- the CLIP image embedder


def test_image_embedder_layout_and_preprocessing() -> None:
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    emb = OpenCLIPImageEmbedder(model_cfg=TINY_CLIP)
    keys = list(emb.state_dict())
    assert keys and all(k.startswith("open_clip.model.") for k in keys)
    assert not any(k.startswith("open_clip.model.transformer.") for k in keys)
    assert "open_clip.model.token_embedding.weight" in keys and "open_clip.model.logit_scale" in keys
    assert list(emb.buffers()) == []
    g = torch.Generator().manual_seed(0)
    for shape, size in [((2, 3, 72, 128), (28, 28)), ((1, 3, 40, 20), (28, 28)), ((1, 3, 57, 33), (14, 30))]:
        x = torch.rand(shape, generator=g) * 2 - 1
        torch.testing.assert_close(antialiased_resize(x, size), _resize_with_antialiasing(x, size),
                                   rtol=0, atol=1e-5)
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert antialiased_resize(x, (32, 32)) is x


def test_causal_mask_matches_open_clip() -> None:
    clip = build_clip(model_cfg=TINY_CLIP)
    assert torch.equal(causal_mask(16, torch.device("cpu"), torch.float32), clip.attn_mask)
