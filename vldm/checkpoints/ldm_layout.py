"""The LDM checkpoint layout of Stable Diffusion 2.x (Stability-AI/stablediffusion, ``ldm``).

``v2-1_768-ema-pruned`` keeps the same names as SGM for the UNet (``model.diffusion_model.*``)
and autoencoder (``first_stage_model.*``); the one documented correspondence is the text tower,
LDM ``cond_stage_model.`` = SGM ``conditioner.embedders.0.``. The file also carries the DDPM
schedule buffers that ``ldm.models.diffusion.ddpm.DDPM.register_schedule`` registers (and,
after EMA pruning, ``model_ema.decay`` / ``model_ema.num_updates``). vldm computes its schedule
(:func:`vldm.diffusion.discretization.ddpm_sigmas`), so those buffers are checked against it —
a different schedule means a different model — and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vldm.io.safe_load import CheckpointError

LDM_TEXT = "cond_stage_model."
SGM_TEXT = "conditioner.embedders.0."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
EMA_SCALARS = ("model_ema.decay", "model_ema.num_updates")


def to_sgm_key(key: str) -> str:
    """The SGM name of an LDM key (only the text tower's prefix differs)."""
    return SGM_TEXT + key[len(LDM_TEXT):] if key.startswith(LDM_TEXT) else key


def to_ldm_key(key: str) -> str:
    return LDM_TEXT + key[len(SGM_TEXT):] if key.startswith(SGM_TEXT) else key


def split_ldm_keys(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """(``{sgm name: file key}`` for the weights, the schedule buffers found)."""
    weights, schedule = {}, []
    for key in keys:
        if key in SCHEDULE_BUFFERS:
            schedule.append(key)
        elif key not in EMA_SCALARS:
            weights[to_sgm_key(key)] = key
    return weights, schedule


def ldm_schedule(sigmas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 12 LDM schedule buffers implied by an ascending DDPM sigma ladder (float64)."""
    alphas_cumprod = 1.0 / (1.0 + sigmas.double() ** 2)
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    alphas = alphas_cumprod / prev
    betas = 1.0 - alphas
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }


def verify_schedule(found: Mapping[str, torch.Tensor], sigmas: torch.Tensor, path: str) -> None:
    """Raise :class:`CheckpointError` unless every schedule buffer in ``found`` matches ``sigmas``.

    Tolerances allow an fp16 file (relative 5e-3, absolute 1e-3 — a different beta schedule is
    off by far more; SD 2.x's scaled-linear 0.00085..0.012 is what ``ddpm_sigmas`` computes).
    """
    ours = ldm_schedule(sigmas)
    wrong = []
    for name, value in found.items():
        ref = ours[name]
        value = value.double()
        if value.shape != ref.shape:
            wrong.append(f"{name} has {tuple(value.shape)} steps, vldm's schedule {tuple(ref.shape)}")
        elif not torch.allclose(value, ref, rtol=5e-3, atol=1e-3):
            i = int((value - ref).abs().argmax())
            wrong.append(f"{name}[{i}] = {value[i].item():.6g}, vldm's schedule gives {ref[i].item():.6g}")
    if wrong:
        raise CheckpointError(f"{path}: its DDPM schedule differs from the model's discretisation "
                              f"({'; '.join(wrong[:4])}): this is a different model (not SD 2.x's scaled-linear "
                              f"1000-step schedule), or the config's denoiser does not fit it")
