"""Our SVD-architecture module with random weights, and diffusers' SVD models holding the same weights.

diffusers (``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder``,
``StableVideoDiffusionPipeline``) and transformers (``CLIPVisionModelWithProjection``) form an
independent implementation of SVD; the parity tests and the benchmarks fill them with our random
weights through the name maps of :mod:`vldm.testing.diffusers_maps`. Every load into the reference is
``strict=True``, so each map is proven complete in both directions (nothing of ours left over, nothing
of theirs left unset).

The key arithmetic follows the facts of diffusers' ``scripts/convert_svd_to_diffusers.py`` (resnet
``in_layers.0 -> norm1`` ..., ``input_blocks.i`` -> ``down_blocks.(i-1)//(n+1)``, ...); the code is
our own. Used by the tests and benchmarks only: diffusers and transformers (dev extras) are imported
inside the functions that need them, and nothing else in vldm imports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vldm.testing.diffusers_maps import openclip_visual_to_hf, sgm_unet_to_diffusers, sgm_vae_to_diffusers, sub_state

Tensor = torch.Tensor
State = dict[str, Tensor]

# ---------------------------------------------------------------------------------------------- builders

#: The released SVD / SVD-XT UNet (sgm ``configs/inference/svd.yaml``) and SD autoencoder sizes.
SVD_UNET = dict(in_channels=8, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                attention_resolutions=(4, 2, 1), num_head_channels=64, context_dim=1024, adm_in_channels=768,
                video=True)
SD_VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4, resolution=256,
              attn_resolutions=())

#: A reduced SVD UNet: 4 levels, attention at the first three and in the middle (as in SVD), 2 res
#: blocks, 16 channels per head, a 32-wide CLIP token, 3 x 16 sinusoids of vector conditioning.
TINY_SVD_UNET = dict(in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                     attention_resolutions=(4, 2, 1), num_head_channels=16, context_dim=32, adm_in_channels=48,
                     video=True)
#: Width of one micro-conditioning sinusoid (fps_id, motion_bucket_id, cond_aug) for TINY_SVD_UNET.
TINY_SCALAR_DIM = 16
#: A reduced SD VAE (x4, no attention inside the levels, like SD's). 2 res blocks as in SD: diffusers'
#: ``TemporalDecoder`` ties its middle block's resnet count to ``layers_per_block`` (SGM always has 2).
TINY_SVD_VAE = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=4, embed_dim=4, resolution=64,
                    attn_resolutions=())
#: A reduced OpenCLIP ViT (exact GELU, like ViT-H-14) whose image embedding is the UNet's context.
TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=64, patch_size=16, width=64, layers=2, head_width=32),
                 text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))


def randomize_(module: nn.Module, seed: int = 0, norm_jitter: float = 0.1) -> nn.Module:
    """Give every parameter a non-trivial random value, in place.

    Linear / conv layers get PyTorch's default init (so the zero-initialised residual outputs and
    ``proj_out``s of our networks become non-zero), norm affines ``1 + jitter`` / ``jitter``, and every
    other parameter (mix factors, CLIP embeddings and projection) a normal draw, so that no branch is
    trivially zero and no blend sits at its initial value.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        handled: set[int] = set()
        for m in module.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                if m.weight is not None:
                    m.weight.copy_(1.0 + norm_jitter * torch.randn_like(m.weight))
                    m.bias.copy_(norm_jitter * torch.randn_like(m.bias))
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, nn.MultiheadAttention):
                m._reset_parameters()
                m.in_proj_bias.normal_(0.0, 0.02)
            else:
                continue
            handled.update(id(p) for p in m.parameters(recurse=False))
        for name, p in module.named_parameters():
            if id(p) in handled:
                continue
            if name.endswith("mix_factor"):
                p.normal_(0.0, 1.0)
            elif name.endswith("logit_scale"):
                p.fill_(2.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1)
    return module


def diffusers_unet_config(unet_cfg: object, scalar_dim: int, num_frames: int = 14) -> dict:
    """The ``UNetSpatioTemporalConditionModel`` config equal to our video :class:`~vldm.nn.unet.UNetConfig`.

    ``scalar_dim``: width of each micro-conditioning sinusoid (``addition_time_embed_dim``);
    ``adm_in_channels`` must be three of them (fps_id, motion_bucket_id, cond_aug).
    """
    c = unet_cfg
    if not c.video or c.adm_in_channels != 3 * scalar_dim:
        raise ValueError("needs a video UNet whose vector input is 3 sinusoids of width scalar_dim")
    if not c.use_linear_in_transformer or c.transformer_depth != 1:
        raise ValueError("diffusers' SVD UNet has linear projections and one transformer layer per block")
    channels = [c.model_channels * m for m in c.channel_mult]
    has_attn = [2**level in c.attention_resolutions for level in range(len(channels))]
    return dict(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=tuple(channels),
        down_block_types=tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal"
                               for a in has_attn),
        up_block_types=tuple("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
                             for a in reversed(has_attn)),
        addition_time_embed_dim=scalar_dim, projection_class_embeddings_input_dim=c.adm_in_channels,
        layers_per_block=c.num_res_blocks, cross_attention_dim=c.context_dim, transformer_layers_per_block=1,
        num_attention_heads=tuple(ch // c.num_head_channels for ch in channels), num_frames=num_frames,
    )


def diffusers_vae_config(ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                         resolution: int = 64, **_: object) -> dict:
    """The ``AutoencoderKLTemporalDecoder`` config for our SD VAE sizes (same keywords as ``AutoencoderKL``)."""
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(ch_mult),
                block_out_channels=tuple(ch * m for m in ch_mult), layers_per_block=num_res_blocks,
                latent_channels=z_channels, sample_size=resolution, scaling_factor=0.18215)


def hf_clip_vision_config(visual: nn.Module):
    """A ``transformers.CLIPVisionConfig`` equal to an OpenCLIP ``VisionTransformer`` (``model.visual``).

    The activation is read off the tower (OpenCLIP ViT-H-14: exact GELU -> ``"gelu"``;
    the OpenAI towers: QuickGELU -> ``"quick_gelu"``).
    """
    from transformers import CLIPVisionConfig

    block = visual.transformer.resblocks[0]
    act = block.mlp[1] if isinstance(block.mlp, nn.Sequential) else block.mlp.gelu
    if type(act).__name__ == "QuickGELU":
        hidden_act = "quick_gelu"
    elif isinstance(act, nn.GELU) and act.approximate == "none":
        hidden_act = "gelu"
    else:
        raise ValueError(f"no transformers activation for {act!r}")
    for unsupported in ("ls_1", "ls_2"):
        if not isinstance(getattr(block, unsupported, nn.Identity()), nn.Identity):
            raise ValueError("layer scale has no CLIPVisionModel equivalent")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("only class-token pooling maps to CLIPVisionModel")
    size = visual.image_size
    patch = visual.patch_size
    return CLIPVisionConfig(
        hidden_size=visual.conv1.out_channels, intermediate_size=block.mlp.c_fc.out_features,
        projection_dim=visual.proj.shape[1], num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, image_size=size[0] if isinstance(size, (tuple, list)) else size,
        patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch, hidden_act=hidden_act,
        layer_norm_eps=visual.ln_pre.eps,
    )


def load_strict(module: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that names the missing and unexpected keys."""
    missing, unexpected = set(module.state_dict()) - set(state), set(state) - set(module.state_dict())
    if missing or unexpected:
        raise KeyError(f"name map incomplete: missing {sorted(missing)[:20]} (of {len(missing)}), "
                       f"unexpected {sorted(unexpected)[:20]} (of {len(unexpected)})")
    # meta tensors (a dry run of the maps at full size) cannot be copied, only assigned
    module.load_state_dict(dict(state), strict=True, assign=any(v.is_meta for v in state.values()))
    return module


def build_hf_image_encoder(visual: nn.Module):
    """A ``CLIPVisionModelWithProjection`` computing what the OpenCLIP tower ``visual`` computes."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(hf_clip_vision_config(visual)).eval()
    return load_strict(model, openclip_visual_to_hf(visual.state_dict()))


def clip_image_processor():
    """CLIP normalisation only: the SVD pipeline resizes itself (``do_resize=False`` in its call)."""
    from transformers import CLIPImageProcessor

    from vldm.conditioning.open_clip_towers import CLIP_MEAN, CLIP_STD

    return CLIPImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=True,
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def svd_scheduler():
    """The scheduler of the official diffusers SVD / SVD-XT repos (``scheduler_config.json``):
    EDM/Karras sigmas 0.002..700, v-prediction, continuous timesteps ``0.25 ln sigma``, initial
    noise ``sqrt(sigma_max^2 + 1)`` (``timestep_spacing="leading"``), Euler without churn."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="v_prediction",
                                  interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002,
                                  sigma_max=700.0, steps_offset=1, timestep_spacing="leading",
                                  timestep_type="continuous")


# ---------------------------------------------------------------------------------------------- whole models

def build_svd_module(unet: dict, vae: dict, scalar_dim: int, clip_cfg: dict | None = None, clip_arch: str | None = None,
                     seed: int = 0):
    """A :class:`~vldm.models.LatentDiffusion` with the SVD image-to-video architecture and
    random weights (:func:`randomize_`): video UNet (``unet`` keywords), first stage without quant
    convs + temporal decoder and a separate conditioning-frame autoencoder with quant convs (``vae``
    keywords), SVD's conditioner (CLIP image token from ``clip_cfg`` / ``clip_arch``; fps_id and
    motion_bucket_id sinusoids of width ``scalar_dim``; the conditioning-frame latent; cond_aug
    sinusoid) and the v-prediction EDM denoiser. Parameters are created on the current default
    device (``with torch.device("cuda"): ...`` builds on the GPU)."""
    from vldm.conditioning.conditioner import Conditioner, EmbedderSpec
    from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder
    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND, ConditioningFrameEncoder
    from vldm.diffusion.denoiser import Denoiser, VScalingWithEDMcNoise
    from vldm.nn.autoencoder import AutoencoderKL
    from vldm.nn.unet import UNet
    from vldm.models.latent_diffusion import LatentDiffusion

    network = randomize_(UNet(**unet), seed)
    first_stage = randomize_(AutoencoderKL(**vae, use_quant_conv=False, decoder="temporal"), seed + 1)
    cond_ae = randomize_(AutoencoderKL(**vae, use_quant_conv=True), seed + 2)
    clip = randomize_(OpenCLIPImageEmbedder(arch=clip_arch, model_cfg=clip_cfg), seed + 3)
    conditioner = Conditioner([
        EmbedderSpec(clip, "cond_frames_without_noise"),
        EmbedderSpec(ConcatTimestepEmbedderND(scalar_dim), "fps_id"),
        EmbedderSpec(ConcatTimestepEmbedderND(scalar_dim), "motion_bucket_id"),
        EmbedderSpec(ConditioningFrameEncoder(cond_ae), "cond_frames"),
        EmbedderSpec(ConcatTimestepEmbedderND(scalar_dim), "cond_aug"),
    ])
    model = LatentDiffusion(network, first_stage, conditioner, Denoiser(VScalingWithEDMcNoise()), scale_factor=0.18215,
                            image_to_video=True)
    return model.eval()


def build_tiny_svd_module(seed: int = 0, clip_cfg: dict | None = None):
    """:func:`build_svd_module` at test size (:data:`TINY_SVD_UNET`, :data:`TINY_SVD_VAE`,
    ``clip_cfg`` or :data:`TINY_CLIP`)."""
    return build_svd_module(TINY_SVD_UNET, TINY_SVD_VAE, TINY_SCALAR_DIM, clip_cfg=clip_cfg or TINY_CLIP, seed=seed)


def _find(module: nn.Module, kind: type) -> nn.Module:
    found = [m for m in module.modules() if isinstance(m, kind)]
    if len(found) != 1:
        raise ValueError(f"expected one {kind.__name__}, found {len(found)}")
    return found[0]


def build_reference_pipeline(module, unet_num_frames: int = 14):
    """diffusers' ``StableVideoDiffusionPipeline`` holding exactly the weights of our SVD ``module``
    (UNet, conditioning-frame encoder + temporal decoder, CLIP image tower), every load strict,
    built on the device of ``module``'s UNet."""
    from diffusers import StableVideoDiffusionPipeline

    network = module.network
    with torch.device(next(network.parameters()).device):
        unet, vae, image_encoder = _reference_models(module, network, unet_num_frames)
    pipe = StableVideoDiffusionPipeline(vae=vae.eval(), image_encoder=image_encoder, unet=unet.eval(),
                                        scheduler=svd_scheduler(), feature_extractor=clip_image_processor())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference_models(module, network: nn.Module, unet_num_frames: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from vldm.conditioning.open_clip_towers import OpenCLIPImageEmbedder
    from vldm.conditioning.scalar_embedders import ConcatTimestepEmbedderND, ConditioningFrameEncoder

    scalar_dims = {m.outdim for m in module.conditioner.modules() if isinstance(m, ConcatTimestepEmbedderND)}
    if len(scalar_dims) != 1:
        raise ValueError(f"the micro-conditioning sinusoids must share one width, got {scalar_dims}")
    unet = UNetSpatioTemporalConditionModel(**diffusers_unet_config(network.config, scalar_dims.pop(),
                                                                    unet_num_frames))
    load_strict(unet, sgm_unet_to_diffusers(network.state_dict()))
    use_sgm_resnet_eps_(unet)
    cond_ae = _find(module.conditioner, ConditioningFrameEncoder).encoder
    first = module.first_stage_model
    vae = AutoencoderKLTemporalDecoder(**diffusers_vae_config(
        ch=first.encoder.conv_in.out_channels, ch_mult=first.ch_mult,
        num_res_blocks=len(first.encoder.down[0].block), z_channels=first.embed_dim))
    load_strict(vae, sgm_vae_to_diffusers(sub_state(cond_ae.state_dict(), ["encoder.", "quant_conv."]),
                                          sub_state(first.state_dict(), ["decoder."])))
    clip = _find(module.conditioner, OpenCLIPImageEmbedder)
    return unet, vae, build_hf_image_encoder(clip.model.visual)


def use_sgm_resnet_eps_(unet: nn.Module) -> int:
    """Set the GroupNorm eps of every resnet in a diffusers SVD UNet to SGM's 1e-5; returns how many changed.

    SGM's ``VideoResBlock`` (both its spatial and its ``time_stack`` half) normalises with
    ``normalization(channels)`` = ``GroupNorm32(32, channels)``, eps 1e-5, everywhere; diffusers'
    ``CrossAttnDownBlockSpatioTemporal`` and the up blocks build theirs with eps 1e-6 (a deviation
    of diffusers' port, worth ~1e-4 relative on random weights). Transformer norms (1e-6 in both) are
    left alone.
    """
    changed = 0
    for name, m in unet.named_modules():
        if isinstance(m, nn.GroupNorm) and ".resnets." in f".{name}" and m.eps != 1e-5:
            m.eps = 1e-5
            changed += 1
    return changed
