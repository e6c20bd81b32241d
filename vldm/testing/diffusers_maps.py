"""SGM -> diffusers / transformers parameter-name maps, for the parity tests and the benchmarks.

The key arithmetic follows the facts of diffusers' ``scripts/convert_svd_to_diffusers.py`` (resnet
``in_layers.0 -> norm1`` ..., ``input_blocks.i`` -> ``down_blocks.(i-1)//(n+1)``, ...); the code is
our own. Every map is used with ``strict=True`` loads, which prove it complete both ways.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

Tensor = torch.Tensor
State = dict[str, Tensor]

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
