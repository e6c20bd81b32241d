"""TemporalConv3d: a time-only Conv3d computed as a Conv2d over (time, pixels) — same numbers, same keys."""

import pytest
import torch
from torch import nn

from vldm.nn.temporal_conv import TemporalConv3d


def pair(kernel, padding, **kwargs) -> tuple[nn.Conv3d, TemporalConv3d]:
    torch.manual_seed(0)
    ref = nn.Conv3d(6, 4, kernel, padding=padding, **kwargs)
    ours = TemporalConv3d(6, 4, kernel, padding=padding, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("kernel,padding,kwargs,time_only", [
    ((3, 1, 1), (1, 0, 0), {}, True),
    ((5, 1, 1), (4, 0, 0), {"dilation": (2, 1, 1)}, True),
    ((3, 1, 1), (0, 0, 0), {"stride": (2, 1, 1), "bias": False}, True),
    ((3, 3, 3), (1, 1, 1), {}, False),   # not time-only: the ordinary Conv3d
    ((3, 1, 1), (1, 1, 1), {}, False),   # spatial padding: also the ordinary path
])
def test_matches_conv3d_forward_and_backward(kernel, padding, kwargs, time_only):
    ref, ours = pair(kernel, padding, **kwargs)
    assert ours.time_only is time_only
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 6, 7, 5, 3, dtype=torch.float64)
    ref, ours = ref.double(), ours.double()
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    assert yo.shape == yr.shape
    torch.testing.assert_close(yo, yr, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    if ref.bias is not None:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


def test_temporal_layers_use_it():
    from vldm.nn.resblock import ResBlock
    from vldm.nn.temporal_decoder import TimeMixConv

    block = ResBlock(32, 4, dims=3, kernel_size=(3, 1, 1))
    assert isinstance(block.in_layers[-1], TemporalConv3d) and block.in_layers[-1].time_only
    assert isinstance(TimeMixConv(4, 4).time_mix_conv, TemporalConv3d)


def test_channels_last_input_gives_the_same_numbers() -> None:
    """The autoencoder's channels-last frames reach the decoder's time_mix_conv as a channels-last-3d view."""
    ref, ours = pair((3, 1, 1), (1, 0, 0))
    frames = torch.randn(6, 6, 5, 3).contiguous(memory_format=torch.channels_last)  # (b t) c h w
    x = frames.reshape(2, 3, 6, 5, 3).transpose(1, 2)  # b c t h w, channels innermost
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    torch.testing.assert_close(ours(x), ref(x.contiguous()), rtol=1e-5, atol=1e-5)
