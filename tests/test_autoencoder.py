"""Tests for the SD KL autoencoder (vldm.nn.autoencoder) and its training module."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from vldm.nn.autoencoder import AutoencoderKL, DiagonalGaussian
from vldm.training.autoencoder_module import AutoencoderModule, psnr_db

TINY = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=32,
            attn_resolutions=())


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: bicubic upsampling of 4x4 noise, squashed by tanh."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (norm affines included) so no weight sits at its init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_shapes_and_downsample_factor() -> None:
    torch.manual_seed(0)
    ae = AutoencoderKL(**TINY).eval()
    x = smooth_images(2)
    with torch.no_grad():
        post = ae.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, 4, 8, 8)
        recon = ae.decode(post.mode())
        out, post2 = ae(x, sample=False)
    assert ae.downsample_factor == 4
    assert recon.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, recon)
    torch.testing.assert_close(post2.mean, post.mean)


def test_frame_chunking_matches_full_batch() -> None:
    torch.manual_seed(0)
    ae = AutoencoderKL(**TINY).eval()
    x = smooth_images(5)
    with torch.no_grad():
        full, chunked = ae.encode_frames(x), ae.encode_frames(x, chunk_size=2)
        torch.testing.assert_close(chunked.mean, full.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chunked.logvar, full.logvar, rtol=1e-5, atol=1e-5)
        z = full.mode()
        torch.testing.assert_close(ae.decode_frames(z, chunk_size=3), ae.decode_frames(z), rtol=1e-5, atol=1e-5)


def test_diagonal_gaussian() -> None:
    mean = torch.randn(3, 4, 2, 2)
    logvar = torch.full_like(mean, 50.0)
    d = DiagonalGaussian(mean, logvar)
    assert d.logvar.max().item() == 20.0
    assert DiagonalGaussian(mean, -logvar).logvar.min().item() == -30.0
    # KL of N(mu, 1) to N(0, 1) is |mu|^2 / 2 per sample; 0 for the standard normal.
    unit = DiagonalGaussian(mean, torch.zeros_like(mean))
    torch.testing.assert_close(unit.kl(), 0.5 * mean.pow(2).flatten(1).sum(1))
    assert DiagonalGaussian(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)).kl().abs().max() == 0
    # Closed-form KL for a scalar variance: 0.5 * (var - 1 - log var) per element.
    lv = torch.full((2, 4, 3, 3), 0.7)
    expected = torch.full((2,), 0.5 * (torch.tensor(0.7).exp().item() - 1 - 0.7) * 36)
    torch.testing.assert_close(DiagonalGaussian(torch.zeros_like(lv), lv).kl(), expected)
    # Sampling: reproducible with a generator, mode is the mean, moments roughly right.
    s1 = unit.sample(torch.Generator().manual_seed(1))
    s2 = unit.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(s1, s2)
    assert unit.mode() is mean
    big = DiagonalGaussian(torch.zeros(4000, 1), torch.full((4000, 1), 2 * torch.tensor(3.0).log().item()))
    assert abs(big.sample(torch.Generator().manual_seed(0)).std().item() - 3.0) < 0.2


def test_state_dict_key_layout() -> None:
    with_attn = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=2, resolution=32, attn_resolutions=(16,))
    keys = set(with_attn.state_dict())
    expected = {
        "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.1.conv2.bias",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.attn.0.q.weight", "encoder.down.1.attn.1.proj_out.bias",
        "encoder.mid.block_1.conv1.weight", "encoder.mid.attn_1.q.weight", "encoder.mid.attn_1.k.weight",
        "encoder.mid.attn_1.v.weight", "encoder.mid.attn_1.proj_out.weight", "encoder.mid.attn_1.norm.weight",
        "encoder.mid.block_2.norm2.bias", "encoder.norm_out.weight", "encoder.conv_out.weight",
        "decoder.conv_in.weight", "decoder.mid.attn_1.v.bias", "decoder.up.1.upsample.conv.weight",
        "decoder.up.1.attn.2.q.weight", "decoder.up.0.block.0.nin_shortcut.weight",
        "decoder.up.0.block.2.norm1.weight", "decoder.norm_out.bias", "decoder.conv_out.weight",
        "quant_conv.weight", "post_quant_conv.bias",
    }
    assert expected <= keys, sorted(expected - keys)
    prefixes = ("encoder.conv_in.", "encoder.down.", "encoder.mid.", "encoder.norm_out.", "encoder.conv_out.",
                "decoder.conv_in.", "decoder.mid.", "decoder.up.", "decoder.norm_out.", "decoder.conv_out.",
                "quant_conv.", "post_quant_conv.")
    assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
    # Level 0 (32 px) has no attention; no downsample on the last level, no upsample on level 0;
    # identity shortcuts carry no parameters.
    assert not any(k.startswith(("encoder.down.0.attn", "decoder.up.0.attn", "encoder.down.1.downsample",
                                 "decoder.up.0.upsample")) for k in keys)
    assert "encoder.down.0.block.0.nin_shortcut.weight" not in keys
    assert "decoder.up.1.block.3.conv1.weight" not in keys  # num_res_blocks + 1 = 3 blocks per level
    shapes = AutoencoderKL(ch=32, ch_mult=(1, 2), resolution=32, z_channels=4, embed_dim=3).state_dict()
    assert shapes["encoder.conv_out.weight"].shape == (8, 64, 3, 3)  # double_z
    assert shapes["quant_conv.weight"].shape == (6, 8, 1, 1)
    assert shapes["post_quant_conv.weight"].shape == (4, 3, 1, 1)

    no_quant = AutoencoderKL(ch=32, ch_mult=(1, 2), resolution=32, use_quant_conv=False).state_dict()
    assert not any("quant_conv" in k for k in no_quant)
    with pytest.raises(ValueError):
        AutoencoderKL(ch=32, ch_mult=(1, 2), z_channels=4, embed_dim=3, use_quant_conv=False)
    with torch.no_grad():  # the per-level attention path runs and keeps shapes
        out, post = with_attn(smooth_images(1), sample=False)
    assert out.shape == (1, 3, 32, 32) and post.mean.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("use_quant_conv", [True, False])
def test_matches_diffusers_autoencoder(use_quant_conv: bool) -> None:
    """Same random weights through diffusers' own LDM->diffusers VAE conversion give the same numbers."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    ours = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=4, embed_dim=4, resolution=32,
                         use_quant_conv=use_quant_conv).eval()
    randomize_(ours)
    config = {
        "sample_size": 32, "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [32, 64], "latent_channels": 4, "layers_per_block": 2,
        "use_quant_conv": use_quant_conv, "use_post_quant_conv": use_quant_conv,
    }
    ldm = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(ldm, config)
    assert len(converted) == len(ldm)  # 1:1 renaming: we carry no key diffusers doesn't know
    ref = DiffusersAutoencoderKL(**config).eval()
    ref.load_state_dict(converted, strict=True)

    x = smooth_images(2, seed=3)
    with torch.no_grad():
        post = ours.encode(x)
        out = ours.decode(post.mode())
        ref_dist = ref.encode(x).latent_dist
        ref_out = ref.decode(ref_dist.mode()).sample

    def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max()).item()

    assert rel_err(post.mean, ref_dist.mean) <= 1e-4
    assert rel_err(post.logvar, ref_dist.logvar) <= 1e-4
    assert rel_err(out, ref_out) <= 1e-4


def _fixed_batch_loader(batch: dict, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader([batch] * steps, batch_size=None)


def test_training_lowers_reconstruction_loss() -> None:
    torch.manual_seed(0)
    module = AutoencoderModule(AutoencoderKL(**TINY), lr=1e-3)
    x = smooth_images(8, seed=1)
    batch = {"jpg": x, "txt": ["ignored"] * 8, "fps_id": torch.zeros(8)}

    def rec_loss() -> float:
        with torch.no_grad():
            recon, _ = module.first_stage_model(x, sample=False)
            return (F.l1_loss(recon, x) + F.mse_loss(recon, x)).item()

    def psnr() -> float:
        with torch.no_grad():
            return psnr_db(module.first_stage_model(x, sample=False)[0], x).item()

    initial, initial_psnr = rec_loss(), psnr()
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=_fixed_batch_loader(batch, 30),
                    val_dataloaders=_fixed_batch_loader(batch, 1))
    assert trainer.global_step == 30
    module.eval()
    final = rec_loss()
    assert final < 0.5 * initial, (initial, final)
    assert psnr() > initial_psnr + 3.0
    logged = trainer.callback_metrics
    assert {"train/loss", "train/rec", "train/kl", "val/psnr"} <= set(logged)
    assert torch.isfinite(logged["val/psnr"])


def test_psnr_db() -> None:
    x = torch.zeros(2, 3, 4, 4)
    # [-1, 1] offset of 0.2 is 0.1 in [0, 1]: PSNR = -10 log10(0.01) = 20 dB.
    torch.testing.assert_close(psnr_db(x + 0.2, x), torch.tensor(20.0))


def test_non_finite_loss_raises() -> None:
    torch.manual_seed(0)
    module = AutoencoderModule(AutoencoderKL(**TINY))
    x = smooth_images(2)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        module.training_step({"jpg": x}, 0)


def test_conv_layout_is_channels_last_on_cpu_and_outputs_come_back_contiguous() -> None:
    from vldm.nn.autoencoder_blocks import conv_layout

    x = torch.randn(2, 4, 8, 8)
    assert conv_layout(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv_layout(x), x)
    assert conv_layout(torch.randn(1, 4, 2, 8, 8)).is_contiguous()  # 5D (time) tensors are left alone
    ae = AutoencoderKL(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, decoder="temporal").eval()
    with torch.no_grad():
        out = ae.decode(torch.randn(3, 4, 8, 8), num_frames=3)
        params = ae.encoder(out)
    assert out.is_contiguous() and params.is_contiguous() and out.shape == (3, 3, 16, 16)
