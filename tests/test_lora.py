"""LoRA adapters (peft): target groups, ComfyUI-format files, scales, merging, bad input; the full-size SVD-XT layout."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from tests.helpers.models import randomize, tiny_svd_cfg
from vldm.adapters.lora import (LoraSpec, adapter_parameters, base_state_dict, inject_lora, lora_layers,
                                merge_and_unload, target_names)
from vldm.adapters.lora_file import LORA_PREFIX, UNET_PREFIX, base_identity, read_lora, save_lora
from vldm.adapters.merge import apply_loras, parse_lora_arg
from vldm.io.safe_load import CheckpointError


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    """The tiny SVD-architecture UNet (every width shrunk), random weights."""
    from vldm.checkpoints.load import build_model

    return randomize(build_model(tiny_svd_cfg().model).network).eval()


def unet_inputs(net: torch.nn.Module, frames: int = 3, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    c = net.config
    n = frames
    return {"x": torch.randn(n, c.in_channels, 8, 8, generator=gen), "timesteps": torch.rand(n, generator=gen),
            "context": torch.randn(n, 1, c.context_dim, generator=gen), "y": torch.randn(n, c.adm_in_channels, generator=gen),
            "num_frames": frames, "image_only_indicator": torch.zeros(1, frames)}


@pytest.fixture(scope="module")
def trained_file(base: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporal-attention LoRA with random (nonzero) weights saved for ``base``."""
    net = copy.deepcopy(base)
    spec = LoraSpec(rank=4, alpha=8.0)
    inject_lora(net, spec)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter_parameters(net).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    path = tmp_path_factory.mktemp("lora") / "pan_left.safetensors"
    return save_lora(path, net, spec, {"base": "tiny-svd"})


def test_groups_select_the_layers_they_name(base: torch.nn.Module) -> None:
    ta = target_names(base, ["temporal_attention"])
    assert ta and all(re.fullmatch(r".+\.time_stack\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)", n) for n in ta)
    attention = set(target_names(base, ["attention"]))
    assert set(ta) < attention and any(".transformer_blocks." in n for n in attention)
    temporal = set(target_names(base, ["temporal"]))
    assert set(ta) < temporal and any(n.endswith("time_stack.in_layers.2") for n in temporal)
    assert not any(".transformer_blocks." in n for n in temporal)
    linear = target_names(base, ["all_linear"])
    assert all(isinstance(base.get_submodule(n), torch.nn.Linear) for n in linear) and "time_embed.0" in linear
    assert target_names(base, [r"middle_block\.1\.proj_(in|out)"]) == ["middle_block.1.proj_in", "middle_block.1.proj_out"]


def test_a_fresh_adapter_trains_only_itself_and_starts_at_the_base(base: torch.nn.Module) -> None:
    net = copy.deepcopy(base)
    names = inject_lora(net, LoraSpec(rank=2, targets=("temporal",)))
    assert set(lora_layers(net)) == set(names)
    assert {k: v for k, v in base_state_dict(net).items()}.keys() == base.state_dict().keys()
    inputs = unet_inputs(base)
    with torch.no_grad():
        assert torch.equal(net(**inputs), base(**inputs))


def test_file_keys_follow_the_comfyui_rule_and_round_trip(base: torch.nn.Module, trained_file: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(trained_file))
    stems = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in tensors}
    sgm = {UNET_PREFIX + k for k in base.state_dict()}
    for stem in stems:
        assert stem.startswith(LORA_PREFIX)
        matches = [k for k in sgm if k.endswith(".weight") and
                   LORA_PREFIX + k[len(UNET_PREFIX):-len(".weight")].replace(".", "_") == stem]
        assert len(matches) == 1, stem
        assert {stem + ".lora_down.weight", stem + ".lora_up.weight", stem + ".alpha"} <= tensors.keys()
    lora = read_lora(trained_file, base)
    assert len(lora.down) == len(stems) == len(target_names(base, ["temporal_attention"]))
    assert set(lora.alpha.values()) == {8.0} and set(lora.ranks.values()) == {4}
    assert lora.metadata["vldm_base"] == "tiny-svd"
    again = copy.deepcopy(base)
    apply_loras(again, [(trained_file, 1.0)])
    resaved = save_lora(trained_file.with_name("again.safetensors"), again, LoraSpec(rank=4, alpha=8.0),
                        {"base": "tiny-svd"}, adapter_name="lora0")
    back = load_file(str(resaved))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_scale_zero_is_the_base_and_merged_equals_unmerged(base: torch.nn.Module, trained_file: Path) -> None:
    inputs = unet_inputs(base)
    with torch.no_grad():
        reference = base(**inputs)
        zero = copy.deepcopy(base)
        apply_loras(zero, [(trained_file, 0.0)])
        assert torch.equal(zero(**inputs), reference)
        unmerged, merged = copy.deepcopy(base), copy.deepcopy(base)
        apply_loras(unmerged, [(trained_file, 0.7), (trained_file, 0.5)])
        apply_loras(merged, [(trained_file, 0.7), (trained_file, 0.5)], merge=True)
        assert not lora_layers(merged) and merged.state_dict().keys() == base.state_dict().keys()
        out_unmerged, out_merged = unmerged(**inputs), merged(**inputs)
        assert (out_unmerged - reference).abs().max() > 1e-3  # the adapter does change the output
        assert (out_merged - out_unmerged).abs().max() <= 1e-5
        single = copy.deepcopy(base)
        apply_loras(single, [(trained_file, 1.2)])
        assert (single(**inputs) - out_unmerged).abs().max() <= 1e-5  # scales add up (0.7 + 0.5)


def test_fp16_base_keeps_fp32_adapter_weights(base: torch.nn.Module, trained_file: Path) -> None:
    half = copy.deepcopy(base).half()
    apply_loras(half, [(trained_file, 1.0)])
    params = adapter_parameters(half)
    assert params and all(p.dtype == torch.float32 for p in params.values())
    assert all(v.dtype == torch.float16 for v in base_state_dict(half).values() if v.is_floating_point())


# ---------------------------------------------------------------- bad input


def test_an_adapter_for_another_base_names_the_keys_and_its_base(base: torch.nn.Module, tmp_path: Path) -> None:
    from vldm.checkpoints.load import build_model
    from omegaconf import OmegaConf

    cfg = tiny_svd_cfg().model
    OmegaConf.set_struct(cfg, False)
    cfg.diffusion.network.model_channels = 64
    other = build_model(cfg).network
    inject_lora(other, LoraSpec(rank=2))
    path = save_lora(tmp_path / "other.safetensors", other, LoraSpec(rank=2), {"base": "/models/wider.safetensors"})
    with pytest.raises(CheckpointError, match=r"lora_unet_input_blocks_1_1_time_stack_0_attn1_to_k\.lora_down\.weight "
                                              r"has shape \(2, 64\).*made for /models/wider\.safetensors"):
        read_lora(path, base)
    from vldm.io.safe_load import save_safetensors

    bad = save_safetensors({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
                            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2)},
                           tmp_path / "keys.safetensors")
    with pytest.raises(CheckpointError, match=r"lora_te_text_model.*not a lora_unet_.*lora_unet_no_such_layer.*no layer"):
        read_lora(bad, base)


def test_a_file_that_is_not_safetensors_is_refused(base: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "adapter.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="is not a safetensors LoRA file"):
        read_lora(path, base)


@pytest.mark.parametrize("arg", ["pan.safetensors:strong", "pan.safetensors:", "pan.safetensors:nan"])
def test_a_scale_that_is_not_a_number_is_refused(arg: str) -> None:
    with pytest.raises(ValueError, match="scale"):
        parse_lora_arg(arg)


def test_lora_arguments_parse() -> None:
    assert parse_lora_arg("runs/x/lora.safetensors:0.5") == (Path("runs/x/lora.safetensors"), 0.5)
    assert parse_lora_arg("pan.safetensors") == (Path("pan.safetensors"), 1.0)
    assert parse_lora_arg("C:/loras/pan.safetensors:-1") == (Path("C:/loras/pan.safetensors"), -1.0)


def test_bad_specs_and_targets_are_refused(base: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match="unknown keys"):
        LoraSpec.from_config({"kind": "lora", "rnk": 4})
    with pytest.raises(ValueError, match="selects no linear"):
        target_names(base, ["nothing_like_this"])
    with pytest.raises(ValueError, match="valid regular expression"):
        target_names(base, ["attn[1"])


# ---------------------------------------------------------------- full size


def test_full_size_svd_xt_temporal_attention_lora(tmp_path: Path) -> None:
    """SVD-XT on meta (real shapes), rank 16 on temporal_attention: counts from the shapes, file keys map onto
    existing ``model.diffusion_model.*`` weights, and the fp32 file's size.

    16 temporal transformers (5 of width C = 320, 5 of 640, 6 of 1280; context 1024), each attn1 q/k/v/out
    (C -> C) and attn2 q/out (C -> C), k/v (1024 -> C): r * (14 C + 2048) per transformer, 3,319,808 at r = 16."""
    from tests.helpers.configs import compose_train
    from vldm.adapters.lora_file import lora_key
    from vldm.checkpoints.load import build_model
    from vldm.io.safe_load import save_safetensors

    with torch.device("meta"):
        model = build_model(compose_train(["model=svd_xt"]).model)
    sgm = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(UNET_PREFIX)}
    names = inject_lora(model.network, LoraSpec(rank=16))
    expected = 0
    for name in names:
        out_f, in_f = sgm[f"{UNET_PREFIX}{name}.weight"]
        expected += 16 * (in_f + out_f)
    params = adapter_parameters(model.network)
    assert sum(p.numel() for p in params.values()) == expected == 3_319_808
    assert len(names) == 16 * 8  # 16 temporal transformers x (attn1, attn2) x (q, k, v, out)
    lookup = {LORA_PREFIX + k[len(UNET_PREFIX):-len(".weight")].replace(".", "_"): k for k in sgm if k.endswith(".weight")}
    state = {}
    for name in names:
        key = lookup[lora_key(name)]
        assert key == f"{UNET_PREFIX}{name}.weight"
        out_f, in_f = sgm[key]
        state[lora_key(name) + ".lora_down.weight"] = torch.zeros(16, in_f)
        state[lora_key(name) + ".lora_up.weight"] = torch.zeros(out_f, 16)
        state[lora_key(name) + ".alpha"] = torch.tensor(16.0)
    path = save_safetensors(state, tmp_path / "svd_xt_rank16.safetensors")
    size = path.stat().st_size
    assert 4 * (expected + len(names)) < size < 4 * (expected + len(names)) + 64 * 1024  # fp32 tensors + header
    print(f"SVD-XT temporal_attention rank 16: {expected} parameters, {len(names)} layers, {size} bytes")


def test_sd21_takes_attention_loras_and_refuses_temporal_ones(tmp_path: Path) -> None:
    from tests.helpers.models import tiny_sd21_cfg
    from vldm.checkpoints.load import build_model

    net = randomize(build_model(tiny_sd21_cfg()).network).eval()
    with pytest.raises(ValueError, match="'temporal_attention' selects no linear"):
        target_names(net, ["temporal_attention"])
    adapted = copy.deepcopy(net)
    spec = LoraSpec(rank=2, targets=("attention",))
    names = inject_lora(adapted, spec)
    assert names and all(".transformer_blocks." in n for n in names)
    with torch.no_grad():
        for p in adapter_parameters(adapted).values():
            p.normal_(0, 0.5)
    path = save_lora(tmp_path / "sd21.safetensors", adapted, spec, {"base": "tiny-sd21"})
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context = torch.randn(1, 3, net.config.context_dim)
    merged = copy.deepcopy(net)
    apply_loras(merged, [(path, 1.0)], merge=True)
    with torch.no_grad():
        assert (merged(x, t, context) - adapted(x, t, context)).abs().max() <= 1e-5
        assert (merged(x, t, context) - net(x, t, context)).abs().max() > 1e-4


def test_a_lora_run_given_as_a_model_says_how_to_sample_it(base: torch.nn.Module, trained_file: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    from vldm.checkpoints.load import resolve_run

    run = tmp_path / "lora"
    run.mkdir()
    shutil.copyfile(trained_file, run / "lora.safetensors")
    with pytest.raises(FileNotFoundError, match=r"is a LoRA stage.*checkpoint=tiny-svd lora=\["):
        resolve_run(run)
