"""Embedders and the conditioner: shapes, slots, dropout and the i2v inputs."""

from __future__ import annotations

import pytest
import torch

from vldm.conditioning.conditioner import Conditioner, EmbedderSpec
from vldm.conditioning.i2v_inputs import expand_to_frames, i2v_inputs
from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder, OpenCLIPTextEmbedder, build_clip
from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND, ConditioningFrameEncoder
from vldm.nn.autoencoder import AutoencoderKL
from vldm.nn.resblock import timestep_embedding

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def test_timestep_embedding_is_cos_then_sin() -> None:
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


def test_concat_timestep_embedder() -> None:
    out = ConcatTimestepEmbedderND(16)(torch.tensor([[6.0, 127.0]]))
    assert out.shape == (1, 32)
    assert torch.allclose(out[0, 16:], timestep_embedding(torch.tensor([127.0]), 16)[0])


def test_text_embedder_shapes_and_seeded_init() -> None:
    a = OpenCLIPTextEmbedder(model_cfg=TINY_CLIP, init_seed=3)
    b = OpenCLIPTextEmbedder(model_cfg=TINY_CLIP, init_seed=3)
    out = a(["a red circle moves right", "a blue square"])
    assert out.shape == (2, 16, 32)
    assert torch.equal(out, b(["a red circle moves right", "a blue square"]))
    assert not torch.allclose(out[0], out[1])
    assert all(not p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training  # frozen embedders stay in eval mode


def test_image_embedder_gives_one_token() -> None:
    emb = OpenCLIPImageEmbedder(model_cfg=TINY_CLIP)
    assert emb(torch.rand(3, 3, 40, 48) * 2 - 1).shape == (3, 1, 32)


def test_missing_clip_weights_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin|OpenCLIP weights not found"):
        build_clip(model_cfg=TINY_CLIP, weights=str(tmp_path / "open_clip_pytorch_model.bin"))


def test_clip_weights_round_trip_strictly(tmp_path) -> None:
    from safetensors.torch import save_file

    model = build_clip(model_cfg=TINY_CLIP, init_seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    loaded = build_clip(model_cfg=TINY_CLIP, weights=str(tmp_path / "clip.safetensors"), init_seed=2)
    assert torch.equal(loaded.token_embedding.weight, model.token_embedding.weight)


def i2v_conditioner(ucg: float = 0.0) -> Conditioner:
    ae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32)
    return Conditioner([
        EmbedderSpec(OpenCLIPImageEmbedder(model_cfg=TINY_CLIP), "cond_frames_without_noise", ucg),
        EmbedderSpec(ConcatTimestepEmbedderND(8), "fps_id"),
        EmbedderSpec(ConcatTimestepEmbedderND(8), "motion_bucket_id"),
        EmbedderSpec(ConditioningFrameEncoder(ae), "cond_frames", ucg),
        EmbedderSpec(ConcatTimestepEmbedderND(8), "cond_aug"),
    ])


def test_conditioner_sorts_outputs_into_slots() -> None:
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = i2v_conditioner()(i2v_inputs(image, 6, 127, 0.02))
    assert cond["crossattn"].shape == (2, 1, 32)
    assert cond["vector"].shape == (2, 24)  # fps, motion, cond_aug in that order
    assert cond["concat"].shape == (2, 4, 16, 16)
    assert torch.allclose(cond["vector"][:, 8:16], timestep_embedding(torch.tensor([127.0, 127.0]), 8))


def test_unconditional_zeroes_image_inputs_and_keeps_vector() -> None:
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    conditioner = i2v_conditioner()
    inputs = i2v_inputs(image, 6, 127, 0.02)
    cond = conditioner(inputs)
    uncond = conditioner(inputs, force_zero=("cond_frames", "cond_frames_without_noise"))
    assert uncond["crossattn"].abs().max() == 0 and uncond["concat"].abs().max() == 0
    assert torch.equal(uncond["vector"], cond["vector"])


def test_ucg_dropout_rate() -> None:
    conditioner = Conditioner([EmbedderSpec(ConcatTimestepEmbedderND(4), "x", ucg_rate=0.3)])
    out = conditioner({"x": torch.ones(4000)}, dropout=True, generator=torch.Generator().manual_seed(0))
    dropped = (out["vector"].abs().sum(1) == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.03)
    assert (conditioner({"x": torch.ones(100)})["vector"].abs().sum(1) > 0).all()  # no dropout unless asked


def test_i2v_inputs_follow_official_conventions() -> None:
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    inp = i2v_inputs(image, fps_id=6, motion_bucket_id=127, cond_aug=0.02, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inp["cond_frames"], image + 0.02 * noise)
    assert torch.equal(inp["cond_frames_without_noise"], image)
    assert inp["fps_id"].tolist() == [6, 6] and inp["motion_bucket_id"].tolist() == [127, 127]


def test_expand_to_frames_repeats_each_video() -> None:
    out = expand_to_frames({"vector": torch.tensor([[1.0], [2.0]])}, 3)
    assert out["vector"].flatten().tolist() == [1, 1, 1, 2, 2, 2]


def test_missing_conditioning_input_is_named() -> None:
    with pytest.raises(KeyError, match="motion_bucket_id"):
        i2v_conditioner()({"cond_frames_without_noise": torch.zeros(1, 3, 32, 32), "fps_id": torch.zeros(1)})
