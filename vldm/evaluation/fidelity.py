"""Reference-based fidelity metrics: PSNR and SSIM (Wang et al., 2004).

Inputs are numpy arrays or torch tensors of identical shape, as floats in
``[0, data_range]``. Nothing is rescaled here: for uint8 images pass
``data_range=255`` (they are cast to float64 as they are).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SSIM_WINDOW: int = 11
SSIM_SIGMA: float = 1.5
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03


def _as_float64(x: Any) -> np.ndarray:
    """numpy array or torch tensor (any device/dtype) -> float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a64, b64 = _as_float64(a), _as_float64(b)
    if a64.shape != b64.shape:
        raise ValueError(f"shape mismatch: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    return a64, b64


def psnr(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over all elements.

    Identical inputs give ``float("inf")``.
    """
    a64, b64 = _pair(a, b)
    mse = float(np.mean((a64 - b64) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM map of two 2-D float64 images, ``valid`` part only (as Wang's reference code)."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    r = SSIM_WINDOW // 2
    return (num / den)[r:-r, r:-r]


def ssim(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al., 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03.

    ``a``/``b`` are ``(H, W)`` or ``(H, W, C)``; the SSIM map is computed per channel, cropped
    by the window radius (``valid`` filtering, as the authors' MATLAB code) and averaged over
    pixels and channels. ``H`` and ``W`` must be at least 11.
    """
    a64, b64 = _pair(a, b)
    if a64.ndim == 2:
        a64, b64 = a64[..., None], b64[..., None]
    if a64.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {tuple(a64.shape)}")
    if min(a64.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs H, W >= {SSIM_WINDOW}, got shape {tuple(a64.shape)}")
    a64, b64 = np.moveaxis(a64, -1, 0).copy(), np.moveaxis(b64, -1, 0).copy()  # contiguous per channel
    maps = [_ssim_map(x, y, data_range) for x, y in zip(a64, b64)]
    return float(np.mean(maps))
