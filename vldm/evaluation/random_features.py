"""A weight-free, seeded random-projection video feature, for the FRPD (Fréchet random-projection
distance): quick relative comparisons between runs when no pretrained network is at hand.

This is **not FVD** and its values are not comparable to any published number; it is only
comparable with itself at the same name (``rp{dim}-s{seed}``), frame count and size.

Definition (fixed; changing any step changes the name's meaning):

1. each uint8 video is resampled to ``num_frames`` frames (nearest index on a uniform grid over
   the clip) and ``size x size`` pixels (area interpolation; no crop), scaled to [-1, 1];
2. it is cut into non-overlapping ``patch x patch`` RGB patches (``patch = size // 8``), one set
   per frame (appearance) and one per temporal difference ``frame[t+1] - frame[t]`` (motion);
3. each patch ``p`` (dimension ``k = 3 patch^2``) gives ``relu(W p / sqrt(k) + b)`` with Gaussian
   ``W`` (``k x dim/2``, one for appearance, one for motion) and uniform ``b`` in [-1, 1]: random
   features in the sense of Rahimi & Recht (2007);
4. features are averaged over all patches and frames (so they summarise local appearance,
   texture and motion statistics, largely independent of where things are), appearance and
   motion halves concatenated -> ``(n, dim)``.

``W`` and ``b`` come from the raw 64-bit stream of numpy's PCG64 bit generator seeded with
``seed`` (Gaussians by Box-Muller on 53-bit uniforms), which is specified bit for bit, so the
feature is identical on every machine and numpy version.
"""

from __future__ import annotations

import cv2
import numpy as np


def pcg64_uniform(seed: int, count: int) -> np.ndarray:
    """``count`` float64 uniforms in [0, 1) from PCG64(seed)'s raw stream (53 high bits each)."""
    raw = np.random.PCG64(seed).random_raw(count).astype(np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def pcg64_gaussian(seed: int, count: int) -> np.ndarray:
    """``count`` standard normals from PCG64(seed) by Box-Muller (machine-independent)."""
    m = (count + 1) // 2
    u = pcg64_uniform(seed, 2 * m)
    u1, u2 = 1.0 - u[:m], u[m:]  # u1 in (0, 1]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2.0 * np.pi * u2), r * np.sin(2.0 * np.pi * u2)])
    return z[:count]


class RandomProjectionFeatures:
    """Fixed seeded random-projection video features (see the module doc); the Fréchet distance
    on them is "FRPD", never FVD.

    ``features(videos uint8 (n, t, h, w, 3)) -> (n, dim)`` float64; any ``t >= 2``, ``h``, ``w``.
    """

    accepts_any_size: bool = True

    def __init__(self, dim: int = 256, num_frames: int = 16, size: int = 32, seed: int = 0) -> None:
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number >= 2, got {dim}")
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (motion needs frame pairs), got {num_frames}")
        if size < 8 or size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        self.dim = int(dim)
        self.num_frames = int(num_frames)
        self.size = int(size)
        self.resolution = int(size)
        self.seed = int(seed)
        self.name = f"rp{self.dim}-s{self.seed}"
        self.patch = self.size // 8
        k = 3 * self.patch * self.patch
        half = self.dim // 2
        w = pcg64_gaussian(self.seed, 2 * k * half) / np.sqrt(k)
        self.w_appearance = w[: k * half].reshape(k, half)
        self.w_motion = w[k * half:].reshape(k, half)
        b = pcg64_uniform(self.seed + 1_000_003, 2 * half) * 2.0 - 1.0
        self.b_appearance, self.b_motion = b[:half], b[half:]

    def resample(self, video: np.ndarray) -> np.ndarray:
        """uint8 ``(t, h, w, 3)`` -> float64 ``(num_frames, size, size, 3)`` in [-1, 1]."""
        t = video.shape[0]
        idx = np.rint(np.linspace(0, t - 1, self.num_frames)).astype(int)
        frames = []
        for i in idx:
            f = np.ascontiguousarray(video[i])
            if f.shape[:2] != (self.size, self.size):
                interp = cv2.INTER_AREA if min(f.shape[:2]) >= self.size else cv2.INTER_LINEAR
                f = cv2.resize(f, (self.size, self.size), interpolation=interp)
            frames.append(f)
        return np.stack(frames).astype(np.float64) / 127.5 - 1.0

    def _patches(self, x: np.ndarray) -> np.ndarray:
        """``(f, size, size, 3)`` -> ``(f * (size/patch)^2, 3 patch^2)``."""
        f, p, g = x.shape[0], self.patch, self.size // self.patch
        x = x.reshape(f, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(f * g * g, p * p * 3)

    def _one(self, video: np.ndarray) -> np.ndarray:
        x = self.resample(video)
        app = np.maximum(self._patches(x) @ self.w_appearance + self.b_appearance, 0.0).mean(axis=0)
        mot = np.maximum(self._patches(x[1:] - x[:-1]) @ self.w_motion + self.b_motion, 0.0).mean(axis=0)
        return np.concatenate([app, mot])

    def features(self, videos: np.ndarray) -> np.ndarray:
        """uint8 ``(n, t, h, w, 3)`` -> ``(n, dim)`` float64."""
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"{self.name} expects uint8 videos (n, t, h, w, 3), got shape {videos.shape}")
        if videos.dtype != np.uint8:
            raise ValueError(f"{self.name} expects uint8 pixels 0..255, got {videos.dtype}")
        if videos.shape[1] < 2:
            raise ValueError(f"{self.name} needs at least 2 frames per video, got {videos.shape[1]}")
        return np.stack([self._one(v) for v in videos]) if len(videos) else np.zeros((0, self.dim))
