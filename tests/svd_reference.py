"""Test-only bridge to diffusers' Stable Video Diffusion: tiny builders and SGM -> diffusers name maps.

diffusers (``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder``,
``StableVideoDiffusionPipeline``) and transformers (``CLIPVisionModelWithProjection``) form an
independent implementation of SVD; the parity tests fill them with our random weights through the
maps below and compare outputs. Every load into the reference is ``strict=True``, so each map is
proven complete in both directions (nothing of ours left over, nothing of theirs left unset).

The key arithmetic follows the facts of diffusers' ``scripts/convert_svd_to_diffusers.py`` (resnet
``in_layers.0 -> norm1`` ..., ``input_blocks.i`` -> ``down_blocks.(i-1)//(n+1)``, ...); the code is
our own and never used outside tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

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


# ---------------------------------------------------------------------------------------------- UNet map

_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
           ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut."))


def _replace_prefix(name: str, pairs: Sequence[tuple[str, str]]) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old):]
    raise KeyError(f"no mapping for {name!r}")


def _unet_resnet(rest: str) -> str:
    """``VideoResBlock`` sub-key -> ``SpatioTemporalResBlock`` sub-key."""
    if rest.startswith("time_mixer."):
        return rest
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _replace_prefix(rest[len("time_stack."):], _RESNET)
    return "spatial_res_block." + _replace_prefix(rest, _RESNET)


def _unet_transformer(rest: str) -> str:
    """``SpatialVideoTransformer`` sub-key -> ``TransformerSpatioTemporalModel`` sub-key."""
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack."):]
    if rest.startswith("time_pos_embed."):
        return _replace_prefix(rest, (("time_pos_embed.0.", "time_pos_embed.linear_1."),
                                      ("time_pos_embed.2.", "time_pos_embed.linear_2.")))
    return rest  # norm, proj_in, proj_out, transformer_blocks.*, time_mixer.mix_factor


def infer_num_res_blocks(state: Mapping[str, Tensor]) -> int:
    """The first downsampler sits at ``input_blocks.{num_res_blocks + 1}.0.op``."""
    ops = [int(m.group(1)) for k in state if (m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.weight", k))]
    if not ops:
        raise ValueError("cannot infer num_res_blocks: the UNet has no downsampler")
    return min(ops) - 1


def sgm_unet_to_diffusers(state: Mapping[str, Tensor], num_res_blocks: int | None = None) -> State:
    """SGM ``VideoUNet`` keys (``model.diffusion_model.`` stripped) -> ``UNetSpatioTemporalConditionModel`` keys."""
    n = infer_num_res_blocks(state) if num_res_blocks is None else num_res_blocks
    top = (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
           ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
           ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
           ("middle_block.0.", "mid_block.resnets.0."), ("middle_block.1.", "mid_block.attentions.0."),
           ("middle_block.2.", "mid_block.resnets.1."))
    out: State = {}
    for key, value in state.items():
        m = None if key.startswith("input_blocks.0.") else re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
        if m:
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            block, layer = divmod(i - 1, n + 1)
            if layer == n:  # the level's downsampler
                new = f"down_blocks.{block}.downsamplers.0.conv." + _replace_prefix(rest, (("op.", ""),))
            elif j == 0:
                new = f"down_blocks.{block}.resnets.{layer}." + _unet_resnet(rest)
            else:
                new = f"down_blocks.{block}.attentions.{layer}." + _unet_transformer(rest)
        elif m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            block, layer = divmod(i, n + 1)
            if j == 0:
                new = f"up_blocks.{block}.resnets.{layer}." + _unet_resnet(rest)
            elif rest.startswith("conv."):  # Upsample is the last layer of a level's last block
                new = f"up_blocks.{block}.upsamplers.0." + rest
            else:
                new = f"up_blocks.{block}.attentions.{layer}." + _unet_transformer(rest)
        else:
            new = _replace_prefix(key, top)
            if new.startswith("mid_block.resnets."):
                head, rest = new[: len("mid_block.resnets.0.")], new[len("mid_block.resnets.0."):]
                new = head + _unet_resnet(rest)
            elif new.startswith("mid_block.attentions."):
                head, rest = new[: len("mid_block.attentions.0.")], new[len("mid_block.attentions.0."):]
                new = head + _unet_transformer(rest)
        if new in out:
            raise KeyError(f"{key!r} maps onto {new!r} twice")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------- VAE map

_AE_RESNET = (("norm1.", "norm1."), ("conv1.", "conv1."), ("norm2.", "norm2."), ("conv2.", "conv2."),
              ("nin_shortcut.", "conv_shortcut."))
_AE_ATTN = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."))


def _ae_attention(prefix: str, rest: str, value: Tensor) -> tuple[str, Tensor]:
    """1x1-conv attention (``AttnBlock``) -> diffusers ``Attention`` with linear projections."""
    new = prefix + _replace_prefix(rest, _AE_ATTN)
    if value.ndim == 4:
        value = value[:, :, 0, 0]
    return new, value


def _ae_resnet(rest: str) -> str:
    """Decoder/encoder ``ResnetBlock`` (+ temporal ``time_stack`` / ``mix_factor``) sub-key."""
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _replace_prefix(rest[len("time_stack."):], _RESNET)
    return _replace_prefix(rest, _AE_RESNET)


def _ae_part(key: str, value: Tensor, part: str, levels: int, temporal: bool) -> tuple[str, Tensor]:
    rest = key[len(part) + 1:]
    spatial = "spatial_res_block." if temporal else ""
    if m := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        sub = _ae_resnet(m.group(2))
        sub = sub if sub.startswith(("temporal_res_block.", "time_mixer.")) else spatial + sub
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{sub}", value
    if rest.startswith("mid.attn_1."):
        return _ae_attention(f"{part}.mid_block.attentions.0.", rest[len("mid.attn_1."):], value)
    if m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(.+)", rest):
        level = int(m.group(2)) if m.group(1) == "down" else levels - 1 - int(m.group(2))
        kind = "down_blocks" if m.group(1) == "down" else "up_blocks"
        sub = _ae_resnet(m.group(4))
        sub = sub if sub.startswith(("temporal_res_block.", "time_mixer.")) else spatial + sub
        return f"{part}.{kind}.{level}.resnets.{int(m.group(3))}.{sub}", value
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(.+)", rest):
        return f"{part}.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}", value
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(.+)", rest):
        return f"{part}.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}", value
    if rest.startswith("conv_out.time_mix_conv."):
        return f"{part}.time_conv_out." + rest[len("conv_out.time_mix_conv."):], value
    if rest.startswith("norm_out."):
        return f"{part}.conv_norm_out." + rest[len("norm_out."):], value
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{part}.{rest}", value
    raise KeyError(f"no mapping for {key!r}")


def _levels(state: Mapping[str, Tensor], part: str) -> int:
    pattern = re.compile(rf"{part}\.(?:down|up)\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not found:
        raise ValueError(f"no {part} levels in the state dict")
    return max(found) + 1


def sgm_vae_to_diffusers(encoder_state: Mapping[str, Tensor], decoder_state: Mapping[str, Tensor]) -> State:
    """SVD's two autoencoders -> one ``AutoencoderKLTemporalDecoder``.

    ``encoder_state``: ``encoder.*`` + ``quant_conv.*`` of the conditioning-frame autoencoder
    (SGM ``conditioner.embedders.3.encoder``), which encodes the conditioning frame;
    ``decoder_state``: ``decoder.*`` of the first stage with the temporal decoder
    (SGM ``first_stage_model``), which decodes the video. Both as ``AutoencoderKL.state_dict()``
    keys. diffusers has a ``quant_conv`` but no ``post_quant_conv`` (SVD's first stage has neither).
    """
    out: State = {}
    enc_levels, dec_levels = _levels(encoder_state, "encoder"), _levels(decoder_state, "decoder")
    for key, value in encoder_state.items():
        if key.startswith("quant_conv."):
            new = key
        elif key.startswith("encoder."):
            new, value = _ae_part(key, value, "encoder", enc_levels, temporal=False)
        else:
            raise KeyError(f"encoder_state holds {key!r}: give only encoder.* and quant_conv.*")
        out[new] = value
    for key, value in decoder_state.items():
        if not key.startswith("decoder."):
            raise KeyError(f"decoder_state holds {key!r}: give only decoder.*")
        new, value = _ae_part(key, value, "decoder", dec_levels, temporal=True)
        if new in out:
            raise KeyError(f"{key!r} maps onto {new!r} twice")
        out[new] = value
    return out


def sub_state(state: Mapping[str, Tensor], prefixes: Sequence[str]) -> State:
    """The entries whose key starts with one of ``prefixes`` (kept whole)."""
    return {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}


# ---------------------------------------------------------------------------------------------- CLIP map

def openclip_visual_to_hf(visual_state: Mapping[str, Tensor]) -> State:
    """OpenCLIP ``VisionTransformer`` keys (``visual.`` stripped) -> ``CLIPVisionModelWithProjection`` keys.

    ``attn.in_proj_*`` splits into q / k / v in that order; ``proj`` (``width x embed``, used as
    ``x @ proj``) becomes the transposed ``visual_projection.weight``.
    """
    simple = (("class_embedding", "vision_model.embeddings.class_embedding"),
              ("positional_embedding", "vision_model.embeddings.position_embedding.weight"),
              ("conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
              ("ln_pre.", "vision_model.pre_layrnorm."), ("ln_post.", "vision_model.post_layernorm."))
    block = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
             ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
    out: State = {}
    for key, value in visual_state.items():
        if key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            prefix, rest = f"vision_model.encoder.layers.{m.group(1)}.", m.group(2)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
            else:
                out[prefix + _replace_prefix(rest, block)] = value
        else:
            out[_replace_prefix(key, simple)] = value
    return out


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
    """A :class:`~vldm.training.module.DiffusionModule` with the SVD image-to-video architecture and
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
    from vldm.diffusion.loss_weighting import EDMWeighting
    from vldm.diffusion.sigma_sampling import EDMSigmaSampler
    from vldm.nn.autoencoder import AutoencoderKL
    from vldm.nn.unet import UNet
    from vldm.training.module import DiffusionModule

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
    module = DiffusionModule(network, first_stage, conditioner, Denoiser(VScalingWithEDMcNoise()),
                             EDMSigmaSampler(), EDMWeighting(), scale_factor=0.18215, ema_decay=None,
                             image_to_video=True)
    return module.eval()


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
