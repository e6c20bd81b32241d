"""Attention and feed-forward layers in the LDM / SGM parameter layout.

Matches ``sgm.modules.attention`` (CrossAttention, GEGLU FeedForward, BasicTransformerBlock,
SpatialTransformer) in parameter names and arithmetic. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``, or xformers' memory-efficient kernel
when it is installed and the tensors are on a CUDA device.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention on ``(batch, tokens, heads * dim)`` tensors."""
    if _HAS_XFORMERS and q.is_cuda:
        import xformers.ops  # noqa: PLC0415 - optional GPU dependency

        q, k, v = (rearrange(t, "b n (h d) -> b n h d", h=heads).contiguous() for t in (q, k, v))
        out = xformers.ops.memory_efficient_attention(q, k, v)
        return rearrange(out, "b n h d -> b n (h d)")
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Self-attention, or cross-attention to ``context`` when ``context_dim`` is given."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer, 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` (GEGLU or Linear+GELU) -> dropout -> ``net.2`` (Linear)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, glu: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention, feed-forward, each residual."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """The 32-group GroupNorm used throughout the SD networks."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=eps, affine=True)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map (Rombach et al., 2022, LDM).

    ``use_linear`` selects linear ``proj_in``/``proj_out`` (SD 2.x and SVD) instead of 1x1 convs.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 context_dim: int | None = None, dropout: float = 0.0, use_linear: bool = True) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = group_norm(in_channels)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
            self.proj_out: nn.Module = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim, dropout) for _ in range(depth)
        )

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w)`` -> ``(b, h*w, inner)``."""
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        return self.proj_in(x) if self.use_linear else x

    def project_out(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``(b, h*w, inner)`` -> ``(b, c, h, w)``."""
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        return x if self.use_linear else self.proj_out(x)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.project_in(x)
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.project_out(y, h, w) + x
