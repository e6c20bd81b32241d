"""Attention and feed-forward layers in the LDM / SGM parameter layout.

Matches ``sgm.modules.attention`` (CrossAttention, GEGLU FeedForward, BasicTransformerBlock,
SpatialTransformer) in parameter names and arithmetic. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``, or xformers' memory-efficient kernel
when it is installed and the tensors are on a CUDA device.

Memory-lean sampling can bound the working set of both (:func:`set_chunking`): attention runs
over chunks of query rows and the feed-forward over chunks of tokens, so the largest
intermediate (score matrix, GEGLU projection) scales with the chunk instead of with
``batch * tokens``. Chunks are plain attributes, off by default, and not in the state dict; the
results equal the unchunked ones up to float rounding.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              chunk: int | None = None) -> torch.Tensor:
    """Multi-head softmax attention on ``(batch, tokens, heads * dim)`` tensors.

    ``chunk``: at most this many query rows (batch element x query token) at a time. Sequences
    shorter than the chunk go several at once (temporal attention: many short pixel-sequences);
    longer ones one at a time, in query chunks of ``chunk`` tokens against all keys.
    """
    b, n = q.shape[:2]
    if chunk is None or b * n <= chunk:
        return _attention(q, k, v, heads)
    out = q.new_empty(b, n, v.shape[-1])
    if n <= chunk:
        per = chunk // n
        for i in range(0, b, per):
            out[i:i + per] = _attention(q[i:i + per], k[i:i + per], v[i:i + per], heads)
        return out
    for i in range(b):
        for j in range(0, n, chunk):
            out[i:i + 1, j:j + chunk] = _attention(q[i:i + 1, j:j + chunk], k[i:i + 1], v[i:i + 1], heads)
    return out


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
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
        self.chunk_size: int | None = None  # query rows per chunk (set_chunking); None: all at once
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.chunk_size)
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
        self.chunk_size: int | None = None  # tokens per chunk (set_chunking); None: all at once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token-wise, so chunking over the flattened tokens changes nothing but the peak memory."""
        rows = x.numel() // x.shape[-1]
        if self.chunk_size is None or rows <= self.chunk_size:
            return self.net(x)
        flat = x.reshape(rows, x.shape[-1])
        out = x.new_empty(rows, self.net[2].out_features)
        for i in range(0, rows, self.chunk_size):
            out[i:i + self.chunk_size] = self.net(flat[i:i + self.chunk_size])
        return out.reshape(*x.shape[:-1], out.shape[-1])


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


def set_chunking(module: nn.Module, attention_chunk: int | None, ff_chunk: int | None) -> None:
    """Set the chunk sizes of every :class:`CrossAttention` / :class:`FeedForward` under ``module``
    (spatial and temporal alike; None switches chunking off). Weights and keys are untouched."""
    for name, value in (("attention_chunk", attention_chunk), ("ff_chunk", ff_chunk)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of rows or None, got {value}")
    for m in module.modules():
        if isinstance(m, CrossAttention):
            m.chunk_size = attention_chunk
        elif isinstance(m, FeedForward):
            m.chunk_size = ff_chunk


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
