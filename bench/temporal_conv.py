"""TemporalConv3d on CPU: a ``(k, 1, 1)`` Conv3d as a ``(k, 1)`` Conv2d over ``(t, h * w)``, vs ``nn.Conv3d``.

Per shape, with the same weights: forward + backward of ``nn.Conv3d`` and of
:class:`vldm.nn.temporal_conv.TemporalConv3d` on contiguous input; and, forward only, on
channels-last input (the CPU autoencoder's layout) ``nn.Conv3d`` (which ``TemporalConv3d`` keeps
there) vs the reshaped Conv2d forced on it. Each case is the fastest of ``--repeats`` timings of
``--iters`` calls, with torch at ``--threads`` threads.

    python -m bench.temporal_conv --threads 1
    python -m bench.temporal_conv --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vldm.nn.temporal_conv import TemporalConv3d

# name: (batch, channels, frames, height, width); the toy video UNet's and SVD UNet blocks' sizes
SHAPES = {
    "toy UNet block (64 ch, 6 frames, 16x16)": (2, 64, 6, 16, 16),
    "SVD block (320 ch, 14 frames, 32x32)": (1, 320, 14, 32, 32),
    "SVD block (640 ch, 14 frames, 16x16)": (1, 640, 14, 16, 16),
    "decoder (128 ch, 8 frames, 64x96)": (1, 128, 8, 64, 96),
}


def fastest(fn: Callable[[], object], iters: int, repeats: int) -> float:
    """Seconds per call: the fastest of ``repeats`` timings of ``iters`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def forward_backward(conv: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> None:
        conv.zero_grad(set_to_none=True)
        conv(x).sum().backward()

    return step


def reshaped_conv2d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """TemporalConv3d's Conv2d path, applied whatever ``x``'s layout."""
    b, c, t, h, w = x.shape
    y = F.conv2d(x.reshape(b, c, t, h * w), conv.weight.squeeze(-1), conv.bias, padding=(conv.padding[0], 0))
    return y.reshape(b, y.shape[1], y.shape[2], h, w)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); ms per call, fastest of {args.repeats}")
    for name, shape in SHAPES.items():
        c = shape[1]
        ref = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0))
        ours = TemporalConv3d(c, c, (3, 1, 1), padding=(1, 0, 0))
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(shape, requires_grad=True)
        conv3d = fastest(forward_backward(ref, x), args.iters, args.repeats)
        temporal = fastest(forward_backward(ours, x), args.iters, args.repeats)
        last = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            kept = fastest(lambda: ref(last), args.iters, args.repeats)
            reshaped = fastest(lambda: reshaped_conv2d(ref, last), args.iters, args.repeats)
        print(f"{name}\n  contiguous, forward + backward: Conv3d {conv3d * 1e3:.1f}, TemporalConv3d "
              f"{temporal * 1e3:.1f} (Conv3d / TemporalConv3d = {conv3d / temporal:.2f})\n  channels-last, "
              f"forward: Conv3d {kept * 1e3:.1f}, reshaped Conv2d {reshaped * 1e3:.1f} "
              f"(reshaped / Conv3d = {reshaped / kept:.2f})")


if __name__ == "__main__":
    main()
