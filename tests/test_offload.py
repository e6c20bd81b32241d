"""Streaming weights around forwards: same outputs as resident weights, loaded only while running."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers.models import TINY_UNET
from vldm.nn.unet import UNet
from vldm.sampling.offload import cast_io, stream


def tiny_video_unet() -> UNet:
    unet = UNet(**{**TINY_UNET, "video": True}).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))  # no zero-initialised branches: every layer matters
    return unet


def unet_inputs(frames: int = 3) -> tuple:
    x = torch.randn(2 * frames, 4, 8, 8)
    return x, torch.rand(2 * frames), torch.randn(2 * frames, 1, 24)


def test_streamed_blocks_give_the_resident_output_and_release_after_each_forward() -> None:
    unet = tiny_video_unet()
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        resident = unet(x, t, context=ctx, num_frames=3)
    units = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    streamer = stream(units, "cpu")
    seen = []

    def check(unit_index: int):
        def hook(_m, _a) -> None:
            seen.append(streamer.units[unit_index].loaded)
        return hook

    probes = [units[i][-1].register_forward_pre_hook(check(i)) for i in range(len(units))]
    with torch.no_grad():
        streamed = unet(x, t, context=ctx, num_frames=3)
        again = unet(x, t, context=ctx, num_frames=3)
    for h in probes:
        h.remove()
    assert torch.equal(streamed, resident) and torch.equal(again, resident)
    assert len(seen) == 2 * len(units) and all(seen)  # loaded when its last layer starts ...
    assert all(not u.loaded and u.loads == 2 for u in streamer.units)  # ... released after, loaded once per forward
    assert streamer.weight_bytes() == sum(p.numel() * 4 for u in units for p in u.parameters())
    keys = set(unet.state_dict())
    streamer.remove()
    assert set(unet.state_dict()) == keys and not any(u._forward_pre_hooks for u in unet.modules())
    with torch.no_grad():
        assert torch.equal(unet(x, t, context=ctx, num_frames=3), resident)


def test_home_copies_are_the_parameters_between_forwards() -> None:
    block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    streamer = stream([block], "cpu", pin=False)
    unit = streamer.units[0]
    assert set(unit.home) == {"param:0.weight", "param:0.bias", "param:1.weight", "param:1.bias",
                              "buffer:1.running_mean", "buffer:1.running_var", "buffer:1.num_batches_tracked"}
    assert block[0].weight.data_ptr() == unit.home["param:0.weight"].data_ptr()
    out = block(torch.randn(3, 4))
    assert out.shape == (3, 4) and unit.loads == 1 and not unit.loaded
    assert block[1].running_var is unit.home["buffer:1.running_var"]


def test_cast_io_runs_a_low_precision_module_in_a_float32_pipeline() -> None:
    lin = nn.Linear(4, 3).to(torch.float64)
    hooks = cast_io(lin, torch.float64)
    out = lin(torch.randn(2, 4))
    assert out.dtype == torch.float32
    assert lin(torch.randn(2, 4, dtype=torch.float16), ).dtype == torch.float32
    for h in hooks:
        h.remove()
    assert lin(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64
