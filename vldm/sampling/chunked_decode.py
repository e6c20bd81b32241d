"""Decode a clip's latents a few frames at a time, with overlapping chunks cross-faded.

A temporal decoder (SVD's, :mod:`vldm.nn.temporal_decoder`) mixes neighbouring frames through
convolutions over time, so decoding chunk by chunk changes the frames near a chunk's edges: inside
a chunk the temporal convs zero-pad where the clip goes on. With ``R`` the decoder's
``temporal_receptive_radius`` (frames each side that reach a decoded frame through those convs),
a decoded frame is exactly the full-clip frame when it lies ``R`` or more frames from every chunk
edge that is not an edge of the clip.

So neighbouring chunks overlap by ``overlap`` frames and, in that overlap, we leave out ``R``
frames at each chunk's inner edge and cross-fade linearly over what is left. Exactness: if
``overlap >= 2 R`` every output frame is taken only from chunk frames that are exact, so the
stitched clip equals the one-shot decode (up to rounding where the two exact values are mixed).
For a smaller overlap there is no exact frame to hand over at, and the whole overlap is
cross-faded: the result differs from the one-shot decode but moves smoothly from one chunk to the
next instead of jumping at the seam (the flicker of plain chunking, as in the official sampler's
``decoding_t`` and diffusers' ``decode_chunk_size``). A decoder without temporal layers (R = 0)
gives the one-shot result for any chunking.

Caveat: SVD's ``time_stack`` GroupNorms normalise over all frames of a call, a weak whole-chunk
dependence that ``R`` does not count; with that decoder "exact" means "as exact as the chunk
statistics allow". The official sampler decodes in chunks too (with no overlap at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch


class FrameDecoder(Protocol):
    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor: ...


def receptive_radius(autoencoder: object) -> int:
    """The decoder's temporal receptive radius in frames (0 for image decoders)."""
    return int(getattr(autoencoder, "temporal_receptive_radius", 0))


def chunk_starts(num_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(num_frames)``; neighbours share ``overlap`` frames.

    Chunks step by ``chunk - overlap``; the last one ends at the clip's end (it may be shorter,
    but is always longer than ``overlap``).
    """
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if chunk >= num_frames:
        return [(0, num_frames)]
    spans, start = [], 0
    while start + chunk < num_frames:
        spans.append((start, start + chunk))
        start += chunk - overlap
    spans.append((start, num_frames))
    return spans


def seam_weights(start: int, prev_end: int, radius: int) -> torch.Tensor:
    """Weight of the new chunk for frames ``start .. prev_end - 1`` (the overlap with the previous one).

    ``radius`` frames at each inner edge get weight 0 (old chunk) and 1 (new chunk) when the
    overlap is at least ``2 * radius``; the frames between ramp linearly, strictly inside (0, 1).
    """
    overlap = prev_end - start
    margin = radius if overlap >= 2 * radius else 0
    ramp = overlap - 2 * margin
    pos = torch.arange(overlap, dtype=torch.float64) - margin + 1
    return (pos / (ramp + 1)).clamp(0.0, 1.0)


@torch.no_grad()
def iter_chunked_decode(autoencoder: FrameDecoder, z: torch.Tensor, num_frames: int, chunk: int | None,
                        overlap: int = 0, radius: int | None = None,
                        dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
    """:func:`chunked_decode` as finished pieces ``(b, t_piece, 3, H, W)`` in frame order, each yielded as
    soon as no later chunk blends into it (one chunk's pixels held at a time)."""
    if z.shape[0] % num_frames:
        raise ValueError(f"{z.shape[0]} latents are not a whole number of clips of {num_frames} frames")
    radius = receptive_radius(autoencoder) if radius is None else radius
    b = z.shape[0] // num_frames
    clips = z.reshape(b, num_frames, *z.shape[1:])
    spans = chunk_starts(num_frames, chunk or num_frames, min(overlap, (chunk or num_frames) - 1))
    tail: torch.Tensor | None = None  # the previous chunk's frames that this chunk blends into
    prev_end = 0
    for i, (start, end) in enumerate(spans):
        zc = clips[:, start:end].reshape(b * (end - start), *z.shape[1:])
        x = autoencoder.decode(zc.to(dtype or zc.dtype), num_frames=end - start).float()
        x = x.reshape(b, end - start, *x.shape[1:])
        if tail is not None and start < prev_end:  # cross-fade the overlap with what the earlier chunks gave
            w = seam_weights(start, prev_end, radius).to(x).reshape(1, -1, *([1] * (x.ndim - 2)))
            n = prev_end - start
            x[:, :n] = tail * (1.0 - w) + x[:, :n] * w
        keep = (spans[i + 1][0] if i + 1 < len(spans) else end) - start
        yield x[:, :keep]
        tail, prev_end = x[:, keep:], end


@torch.no_grad()
def chunked_decode(autoencoder: FrameDecoder, z: torch.Tensor, num_frames: int, chunk: int | None,
                   overlap: int = 0, radius: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Latents ``(b * t, c, h, w)`` (``b`` clips of ``t = num_frames``) -> pixels ``(b * t, 3, H, W)``.

    Calls ``autoencoder.decode(z_chunk, num_frames=len(chunk))`` with ``b * len(chunk)`` latents at a
    time; ``chunk=None`` decodes each whole clip at once. ``radius`` defaults to the autoencoder's
    ``temporal_receptive_radius``. ``dtype``: the decoder's weight dtype (latents are cast to it;
    pixels come back in float32).
    """
    out = torch.cat(list(iter_chunked_decode(autoencoder, z, num_frames, chunk, overlap, radius, dtype)), dim=1)
    return out.reshape(out.shape[0] * num_frames, *out.shape[2:])
