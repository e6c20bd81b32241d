"""Small, uniform ODE samplers in the style of k-diffusion (Karras et al., 2022).

Each takes ``denoise(x, sigma) -> x0_hat`` (guidance already folded in), the starting noise
``x`` (already scaled to ``sigmas[0]``) and a descending ``sigmas`` ending in 0.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _steps(sigmas: torch.Tensor, progress: bool) -> tqdm:
    return tqdm(range(len(sigmas) - 1), desc="sampling", disable=not progress, leave=False)


@torch.no_grad()
def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE, no churn (the official SVD default)."""
    for i in _steps(sigmas, progress):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (EDM Algorithm 1, no churn); Euler on the last step to 0."""
    for i in _steps(sigmas, progress):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x_next = x + d * (sigmas[i + 1] - sigmas[i])
        if sigmas[i + 1] > 0:
            d_next = (x_next - denoise(x_next, sigmas[i + 1])) / sigmas[i + 1]
            x_next = x + (d + d_next) / 2 * (sigmas[i + 1] - sigmas[i])
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022), multistep in log-sigma."""
    old_denoised = None
    for i in _steps(sigmas, progress):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            break
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None:
            d = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m,
}
