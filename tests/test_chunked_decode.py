"""Chunked decoding: exact when the overlap covers twice the temporal receptive radius, smooth otherwise."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from vldm.sampling.chunked_decode import chunk_starts, chunked_decode, seam_weights


class TemporalConvDecoder(nn.Module):
    """Stand-in video decoder: per-frame convs and ``layers`` (3, 1, 1) convs over time (radius = layers)."""

    def __init__(self, layers: int = 3, ch: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, ch, 3, padding=1)
        self.time = nn.ModuleList(nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0)) for _ in range(layers))
        self.conv_out = nn.Conv2d(ch, 3, 3, padding=1)
        self.calls: list[tuple[int, int]] = []

    @property
    def temporal_receptive_radius(self) -> int:
        return len(self.time)

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        num_frames = z.shape[0] if num_frames is None else num_frames
        self.calls.append((z.shape[0], num_frames))
        h = nn.functional.interpolate(self.conv_in(z), scale_factor=2.0)
        h = rearrange(h, "(b t) c h w -> b c t h w", t=num_frames)
        for conv in self.time:
            h = h + torch.tanh(conv(h))
        return self.conv_out(rearrange(h, "b c t h w -> (b t) c h w"))


def test_chunk_spans_cover_the_clip_with_the_overlap() -> None:
    assert chunk_starts(25, 8, 2) == [(0, 8), (6, 14), (12, 20), (18, 25)]
    assert chunk_starts(10, 14, 4) == [(0, 10)]
    assert chunk_starts(7, 1, 0) == [(i, i + 1) for i in range(7)]
    for t, c, o in [(25, 8, 7), (25, 4, 3), (16, 5, 0), (9, 3, 1)]:
        spans = chunk_starts(t, c, o)
        assert spans[0][0] == 0 and spans[-1][1] == t
        assert all(e - s <= c and e - s > o for s, e in spans)
        assert all(e0 - s1 == o for (_, e0), (s1, _) in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="overlap < chunk"):
        chunk_starts(10, 4, 4)


def test_seam_weights_hand_over_on_exact_frames_or_ramp_over_the_whole_overlap() -> None:
    assert seam_weights(10, 18, 3).tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1])
    assert seam_weights(10, 16, 3).tolist() == [0, 0, 0, 1, 1, 1]
    assert seam_weights(10, 14, 3).tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert seam_weights(10, 12, 0).tolist() == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("chunk,overlap", [(8, 6), (8, 7), (7, 6), (10, 6), (12, 8), (17, 0)])
def test_overlap_of_twice_the_radius_equals_the_one_shot_decode(chunk: int, overlap: int) -> None:
    dec = TemporalConvDecoder(layers=3)
    z = torch.randn(2 * 17, 4, 6, 5)
    with torch.no_grad():
        full = dec.decode(z, num_frames=17)
    dec.calls.clear()
    out = chunked_decode(dec, z, 17, chunk, overlap)
    assert out.shape == full.shape == (34, 3, 12, 10)
    assert (out - full).abs().max().item() <= 1e-6
    assert max(n for n, _ in dec.calls) <= 2 * chunk and all(n == 2 * t for n, t in dec.calls)


def test_smaller_overlap_differs_but_the_cross_fade_keeps_seams_continuous() -> None:
    dec = TemporalConvDecoder(layers=4)
    z = torch.randn(24, 4, 6, 6)
    with torch.no_grad():
        full = dec.decode(z, num_frames=24)

    def seam_jump(x: torch.Tensor) -> float:  # worst error of the frame-to-frame change
        return ((x[1:] - x[:-1]) - (full[1:] - full[:-1])).abs().amax().item()

    hard = chunked_decode(dec, z, 24, 8, overlap=0)
    faded = chunked_decode(dec, z, 24, 8, overlap=4)  # 4 < 2 * radius = 8: no exact hand-over frame
    assert (faded - full).abs().max().item() > 1e-3
    assert seam_jump(faded) < 0.5 * seam_jump(hard)
    assert (faded - full).abs().max().item() < (hard - full).abs().max().item()


def test_image_decoder_chunks_equal_the_one_shot_decode() -> None:
    from vldm.nn.autoencoder import AutoencoderKL

    ae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16).eval()
    z = torch.randn(10, 4, 4, 4)
    with torch.no_grad():
        full = ae.decode(z)
    for chunk, overlap in [(3, 0), (4, 1), (1, 0), (None, 0)]:
        assert (chunked_decode(ae, z, 5, chunk, overlap) - full).abs().max().item() <= 1e-6


def test_temporal_autoencoder_whole_clip_chunk_equals_decode_and_chunks_stay_close() -> None:
    from vldm.nn.autoencoder import AutoencoderKL

    ae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16, use_quant_conv=False,
                       decoder="temporal").eval()
    with torch.no_grad():
        for p in ae.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))  # make the temporal layers do something
    radius = ae.temporal_receptive_radius
    assert radius == 2 * (2 + 2 * 2) + 1  # two convs per time_stack in 6 resblocks, plus time_mix_conv
    z = torch.randn(2 * 6, 4, 4, 4)
    with torch.no_grad():
        full = ae.decode(z, num_frames=6)
    assert (chunked_decode(ae, z, 6, None) - full).abs().max().item() <= 1e-6
    chunked = chunked_decode(ae, z, 6, 4, overlap=2)
    assert chunked.shape == full.shape and torch.isfinite(chunked).all()


def test_dtype_and_shape_errors() -> None:
    dec = TemporalConvDecoder(layers=1)
    z = torch.randn(6, 4, 4, 4)
    out = chunked_decode(dec.to(torch.float64), z, 6, 3, 2, dtype=torch.float64)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="whole number of clips"):
        chunked_decode(dec, z, 4, 2)
