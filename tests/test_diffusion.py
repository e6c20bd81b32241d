"""Preconditioning, schedules, samplers and guidance against closed forms and references."""

from __future__ import annotations

import math

import pytest
import torch

from vldm.diffusion.denoiser import (Denoiser, DiscreteDenoiser, EDMScaling, EpsScaling, VScaling,
                                     VScalingWithEDMcNoise)
from vldm.diffusion.discretization import ddpm_sigmas, karras_sigmas, sigma_schedule
from vldm.diffusion.guidance import guide, linear_frame_scales
from vldm.diffusion.loss_weighting import EDMWeighting
from vldm.diffusion.samplers import SAMPLERS
from vldm.diffusion.sigma_sampling import EDMSigmaSampler


def test_svd_scalings_match_the_closed_form() -> None:
    sigma = torch.tensor([0.5, 2.0, 700.0])
    c_skip, c_out, c_in, c_noise = VScalingWithEDMcNoise()(sigma)
    assert torch.allclose(c_skip, 1 / (sigma**2 + 1))
    assert torch.allclose(c_out, -sigma / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(c_in, 1 / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(c_noise, 0.25 * torch.log(sigma))


@pytest.mark.parametrize("scaling", [VScalingWithEDMcNoise(), EDMScaling(1.0), EpsScaling(), VScaling()])
def test_perfect_network_output_recovers_clean_sample(scaling) -> None:
    """With the network output that its parameterisation targets, D(x0 + sigma n) == x0."""
    x0, n = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, _ = (v.reshape(-1, 1, 1, 1) for v in scaling(sigma))
    target = (x0 - c_skip * (x0 + s * n)) / c_out  # F* = (x0 - c_skip x) / c_out
    denoiser = Denoiser(scaling)
    out = denoiser(lambda x, c, context=None, y=None: target, x0 + s * n, sigma, {})
    assert torch.allclose(out, x0, atol=1e-5)


def test_concat_conditioning_is_appended_unscaled() -> None:
    seen = {}

    def net(x, c_noise, context=None, y=None):
        seen["x"] = x
        return torch.zeros_like(x[:, :2])

    x, concat, sigma = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3), torch.tensor([3.0, 3.0])
    Denoiser(VScalingWithEDMcNoise())(net, x, sigma, {"concat": concat})
    assert torch.allclose(seen["x"][:, :2], x / math.sqrt(10)) and torch.equal(seen["x"][:, 2:], concat)


def test_ddpm_sigmas_match_diffusers_scaled_linear_schedule() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ac = sched.alphas_cumprod.double()
    assert torch.allclose(ddpm_sigmas().double(), ((1 - ac) / ac).sqrt(), rtol=1e-4)  # diffusers works in fp32


def test_discrete_denoiser_uses_nearest_level_index() -> None:
    d = DiscreteDenoiser(EpsScaling())
    idx = torch.tensor([0, 10, 999])
    assert torch.equal(d.sigma_to_idx(d.idx_to_sigma(idx)), idx)
    assert torch.equal(d.noise_condition(d.idx_to_sigma(idx) * 1.0001), idx.float())


def test_karras_sigmas_endpoints_and_order() -> None:
    s = karras_sigmas(25, 0.002, 700.0, 7.0)
    assert len(s) == 26 and s[-1] == 0
    assert s[0].item() == pytest.approx(700.0, rel=1e-5) and s[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert torch.all(s[1:] < s[:-1])


def test_sigma_schedules_share_endpoints_and_differ_inside() -> None:
    k = sigma_schedule("karras", 10, 0.002, 700.0)
    e = sigma_schedule("exponential", 10, 0.002, 700.0)
    assert torch.allclose(k[[0, -2, -1]], e[[0, -2, -1]], rtol=1e-4)
    steps = e[:-1].log().diff()  # exponential: equal steps in log sigma
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)
    assert not torch.allclose(k, e)
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        sigma_schedule("cosine", 10, 0.002, 700.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sigma_schedule("karras", 10, 5.0, 1.0)


def test_edm_sigma_sampler_is_lognormal() -> None:
    s = EDMSigmaSampler(p_mean=0.7, p_std=1.6)(200_000, generator=torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(0.7, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.6, abs=0.02)


def test_edm_weighting_with_unit_sigma_data() -> None:
    sigma = torch.tensor([0.5, 2.0])
    assert torch.allclose(EDMWeighting(1.0)(sigma), (sigma**2 + 1) / sigma**2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_reach_a_point_mass(name: str) -> None:
    """For data that is a single point x0 the ideal denoiser is constant: every sampler lands on x0."""
    x0 = torch.randn(2, 3)
    sigmas = karras_sigmas(10, 0.002, 80.0)
    x = torch.randn(2, 3) * sigmas[0]
    out = SAMPLERS[name](lambda x, s: x0.expand_as(x), x, sigmas)
    assert torch.allclose(out, x0, atol=1e-5)


def test_euler_on_gaussian_data_matches_the_exact_ode() -> None:
    """Data N(0, 1): D(x; s) = x / (1 + s^2); the ODE maps x(s_max) to x * sqrt(1 / (1 + s_max^2))."""
    sigmas = karras_sigmas(400, 0.002, 10.0)
    x = torch.tensor([3.0, -7.0])
    out = SAMPLERS["heun"](lambda x, s: x / (1 + s**2), x, sigmas)
    exact = x * math.sqrt(1 / (1 + 10.0**2))
    assert torch.allclose(out, exact, rtol=1e-3)


def test_linear_guidance_per_frame() -> None:
    scales = linear_frame_scales(4, 1.0, 2.5)
    assert torch.allclose(scales, torch.tensor([1.0, 1.5, 2.0, 2.5]))
    u, c = torch.zeros(8, 1), torch.ones(8, 1)  # 2 videos x 4 frames
    assert torch.allclose(guide(u, c, scales, 4).flatten(), scales.repeat(2))
