"""Chunked attention and feed-forward compute what the unchunked layers compute."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import TINY_UNET
from vldm.nn.attention import CrossAttention, FeedForward, attention, set_chunking
from vldm.nn.unet import UNet


@pytest.mark.parametrize("chunk", [1, 5, 7, 16, 40, 1000])
def test_attention_over_query_chunks_equals_full_attention(chunk: int) -> None:
    q, k, v = torch.randn(3, 20, 32), torch.randn(3, 11, 32), torch.randn(3, 11, 32)
    full = attention(q, k, v, heads=4)
    assert (attention(q, k, v, heads=4, chunk=chunk) - full).abs().max().item() <= 1e-6


def test_layers_chunk_rows_and_keep_their_keys() -> None:
    attn, ff = CrossAttention(16, 8, heads=2, dim_head=8), FeedForward(16, mult=4)
    keys = (set(attn.state_dict()), set(ff.state_dict()))
    x, ctx = torch.randn(6, 9, 16), torch.randn(6, 3, 8)
    ref = attn(x, ctx), ff(x)
    set_chunking(attn, 4, None)
    set_chunking(ff, None, 5)
    assert attn.chunk_size == 4 and ff.chunk_size == 5
    assert (attn(x, ctx) - ref[0]).abs().max().item() <= 1e-6
    assert (ff(x) - ref[1]).abs().max().item() <= 1e-6
    assert (set(attn.state_dict()), set(ff.state_dict())) == keys
    with pytest.raises(ValueError, match="ff_chunk"):
        set_chunking(ff, None, 0)


def test_video_unet_with_chunking_equals_the_unchunked_unet() -> None:
    unet = UNet(**{**TINY_UNET, "video": True}).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, ctx = torch.randn(8, 4, 8, 8), torch.rand(8), torch.randn(8, 1, 24)
    with torch.no_grad():
        ref = unet(x, t, context=ctx, num_frames=4)
        for a, f in [(24, 13), (64, None), (None, 40)]:
            set_chunking(unet, a, f)
            out = unet(x, t, context=ctx, num_frames=4)
            assert (out - ref).abs().max().item() <= 1e-6, (a, f)
    set_chunking(unet, None, None)
    assert all(m.chunk_size is None for m in unet.modules() if isinstance(m, (CrossAttention, FeedForward)))
