"""What a model needs in memory: weight counts per component and activation costs from its architecture.

The activation model counts tensor elements that are alive at the same time inside each layer of a
no-grad forward, per token of the layer's feature map, from the layer's real widths; the planner
multiplies by frames, latent pixels and bytes per element. The constants below are the number of
feature maps of the layer's width alive at its peak, read off the forward code (PyTorch frees a
tensor when its last reference goes):

- ``ResBlock`` (UNet) / ``ResnetBlock`` (VAE), ``in -> out`` channels: the input, GroupNorm and
  SiLU copies of it, then conv / norm / SiLU / conv outputs and the residual sum: ``2 in + 3 out``.
- their video versions add the temporal 3D ResBlock on the output, the rearranged copies and the
  alpha blend: ``2 in + 7 out``.
- spatial / temporal attention with a memory-efficient kernel (flash / xformers / SDPA's
  efficient path, the default on CUDA and CPU): the transformer's input, norm, q, k, v, the
  kernel's output and its rearranged copy, ``to_out`` and the residual sum: ``C + 9 dim``
  (temporal: ``C + 12 dim`` for the frame-major copies, positional add and blend). Without such a
  kernel the score matrix and its softmax add ``2 heads * query rows * keys`` elements.
- GEGLU feed-forward (``mult = 4``): ``C + 4 dim`` that stay, plus ``16 dim`` per token row that
  chunking bounds (the ``8 dim`` projection, GELU of the gate ``4 dim``, product ``4 dim``).
- resampling: the input plus the interpolated / padded map and the conv output.
- the UNet's skip connections stay alive from their input block to their output block; the
  output blocks' concatenated input is held by the caller while the block runs.

These are estimates, to be calibrated on a GPU (``calibration`` multiplies each phase); the
planner also keeps a safety margin. Weight counts are exact (shared parameters counted once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from vldm.nn.attention import GEGLU, FeedForward, SpatialTransformer
from vldm.nn.resblock import Downsample, ResBlock, Upsample
from vldm.nn.temporal import VideoResBlock

TOWER_FALLBACK = 257 * 20 * 1280  # elements per sample when a tower's shape is unknown (ViT-H/14 at 224 px)


@dataclass(frozen=True)
class LayerCost:
    """Live activations while one layer runs, in elements.

    ``area``: tokens of the layer's feature map per latent pixel (UNet: 1, 1/4, ...; VAE decoder up
    to ``f**2``). ``held``: elements per latent pixel kept alive elsewhere meanwhile (skips, the
    block input). ``per_token``: the layer's own working set per token. ``ff_row``: per token row of
    the part that feed-forward chunking bounds. ``heads`` / ``keys``: self-attention score matrices
    (``keys`` "tokens": over the feature map; "frames": over time), counted only without a
    memory-efficient attention kernel and bounded by attention chunking.
    """

    name: str
    area: float
    per_token: float
    held: float = 0.0
    ff_row: float = 0.0
    heads: int = 0
    keys: str = ""

    def elements(self, frames: int, latent_px: int, num_frames: int, attention_chunk: int | None = None,
                 ff_chunk: int | None = None, efficient_attention: bool = True) -> float:
        """``frames``: frames in the forward (all clips, both guidance halves); ``num_frames``: per clip."""
        rows = frames * latent_px * self.area
        total = frames * latent_px * self.held + rows * self.per_token
        if self.ff_row:
            total += min(rows, ff_chunk or rows) * self.ff_row
        if self.heads and not efficient_attention:
            keys = latent_px * self.area if self.keys == "tokens" else num_frames
            total += 2 * self.heads * min(rows, attention_chunk or rows) * keys
        return total


def _ff_row(ff: FeedForward) -> float:
    inner = ff.net[2].in_features
    return 4.0 * inner if isinstance(ff.net[0], GEGLU) else 2.0 * inner


def _transformer_costs(name: str, layer: SpatialTransformer, area: float, held: float) -> list[LayerCost]:
    c = layer.norm.num_channels
    costs = []
    for i, block in enumerate(layer.transformer_blocks):
        dim, heads = block.norm1.normalized_shape[0], block.attn1.heads
        costs.append(LayerCost(f"{name}.transformer_blocks.{i}.attn1", area, c + 9 * dim, held, heads=heads,
                               keys="tokens"))
        costs.append(LayerCost(f"{name}.transformer_blocks.{i}.ff", area, c + 4 * dim, held, _ff_row(block.ff)))
    for i, block in enumerate(getattr(layer, "time_stack", [])):
        dim, heads = block.norm1.normalized_shape[0], block.attn1.heads
        costs.append(LayerCost(f"{name}.time_stack.{i}.attn1", area, c + 12 * dim, held, heads=heads, keys="frames"))
        costs.append(LayerCost(f"{name}.time_stack.{i}.ff", area, c + 7 * dim, held, _ff_row(block.ff)))
    return costs


def _unet_layer(name: str, layer: nn.Module, ch: int, area: float, held: float
                ) -> tuple[list[LayerCost], int, float]:
    """Costs of one UNet layer, and the channels / area of its output."""
    if isinstance(layer, ResBlock):  # VideoResBlock is a ResBlock
        out = layer.out_layers[-1].out_channels
        extra = 7 if isinstance(layer, VideoResBlock) else 3
        return [LayerCost(name, area, 2 * ch + extra * out, held)], out, area
    if isinstance(layer, SpatialTransformer):  # incl. SpatialVideoTransformer
        return _transformer_costs(name, layer, area, held), ch, area
    if isinstance(layer, Downsample):
        out = layer.op.out_channels
        return [LayerCost(name, area, ch + out / 4, held)], out, area / 4
    if isinstance(layer, Upsample):
        out = layer.conv.out_channels
        return [LayerCost(name, area, ch + 4 * (ch + out), held)], out, area * 4
    if isinstance(layer, nn.Conv2d):
        return [LayerCost(name, area, ch + layer.out_channels, held)], layer.out_channels, area
    raise TypeError(f"no memory model for UNet layer {name} ({type(layer).__name__})")


def unet_costs(unet: nn.Module) -> list[LayerCost]:
    """Walk the UNet in execution order (input blocks, middle, output blocks), tracking skips."""
    ch, area = unet.config.in_channels, 1.0
    skips: list[float] = []  # elements per latent pixel of each stored skip
    costs: list[LayerCost] = []
    for i, block in enumerate(unet.input_blocks):
        held = sum(skips)
        for j, layer in enumerate(block):
            c, ch, area = _unet_layer(f"input_blocks.{i}.{j}", layer, ch, area, held)
            costs += c
        skips.append(ch * area)
    for j, layer in enumerate(unet.middle_block):
        c, ch, area = _unet_layer(f"middle_block.{j}", layer, ch, area, sum(skips))
        costs += c
    for i, block in enumerate(unet.output_blocks):
        skip = skips.pop()
        held = sum(skips) + ch * area + (ch * area + skip)  # previous h and the concatenated input
        ch = ch + round(skip / area)
        for j, layer in enumerate(block):
            c, ch, area = _unet_layer(f"output_blocks.{i}.{j}", layer, ch, area, held)
            costs += c
    costs.append(LayerCost("out", area, 3 * ch))
    return costs


def _vae_block(name: str, block: nn.Module, area: float) -> LayerCost:
    ch, out = block.in_channels, block.out_channels
    extra = 7 if hasattr(block, "time_stack") else 3
    return LayerCost(name, area, 2 * ch + extra * out)


def _vae_attn(name: str, attn: nn.Module, area: float) -> LayerCost:
    return LayerCost(name, area, 8 * attn.q.in_channels, heads=1, keys="tokens")


def decoder_costs(decoder: nn.Module) -> list[LayerCost]:
    """The SD / SVD decoder (``conv_in``, ``mid``, ``up[i]`` coarse to fine, ``conv_out``); area 1 = latent."""
    area = 1.0
    costs = [LayerCost("conv_in", area, decoder.conv_in.in_channels + decoder.conv_in.out_channels)]
    costs += [_vae_block("mid.block_1", decoder.mid.block_1, area), _vae_attn("mid.attn_1", decoder.mid.attn_1, area),
              _vae_block("mid.block_2", decoder.mid.block_2, area)]
    for i in reversed(range(len(decoder.up))):
        level = decoder.up[i]
        for j, block in enumerate(level.block):
            costs.append(_vae_block(f"up.{i}.block.{j}", block, area))
            if len(level.attn) > 0:
                costs.append(_vae_attn(f"up.{i}.attn.{j}", level.attn[j], area))
        if hasattr(level, "upsample"):
            c = level.upsample.conv.in_channels
            costs.append(LayerCost(f"up.{i}.upsample", area, c + 8 * c))
            area *= 4
    c = decoder.norm_out.num_channels
    costs.append(LayerCost("conv_out", area, 3 * c + 2 * decoder.conv_out.out_channels))
    return costs


def encoder_costs(encoder: nn.Module, downsample_factor: int) -> list[LayerCost]:
    """The SD encoder (``conv_in``, ``down[i]`` fine to coarse, ``mid``, ``conv_out``)."""
    area = float(downsample_factor**2)
    costs = [LayerCost("conv_in", area, encoder.conv_in.in_channels + encoder.conv_in.out_channels)]
    for i, level in enumerate(encoder.down):
        for j, block in enumerate(level.block):
            costs.append(_vae_block(f"down.{i}.block.{j}", block, area))
            if len(level.attn) > 0:
                costs.append(_vae_attn(f"down.{i}.attn.{j}", level.attn[j], area))
        if hasattr(level, "downsample"):
            c = level.downsample.conv.in_channels
            costs.append(LayerCost(f"down.{i}.downsample", area, 2 * c + c / 4))
            area /= 4
    costs += [_vae_block("mid.block_1", encoder.mid.block_1, area), _vae_attn("mid.attn_1", encoder.mid.attn_1, area),
              _vae_block("mid.block_2", encoder.mid.block_2, area)]
    costs.append(LayerCost("conv_out", area, 3 * encoder.norm_out.num_channels + encoder.conv_out.out_channels))
    return costs


def tower_elements(embedder: nn.Module) -> float:
    """Peak activations of an OpenCLIP tower per input sample: ``tokens * 14 width`` (MLP of ``4 width``
    and its GELU, residual, norm, q, k, v, out) plus ``2 heads * tokens**2`` (score matrices)."""
    model = getattr(embedder, "model", None)
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "grid_size"):
        tower, tokens = visual.transformer, int(visual.grid_size[0] * visual.grid_size[1]) + 1
    elif model is not None and hasattr(model, "context_length") and hasattr(model, "transformer"):
        tower, tokens = model.transformer, int(model.context_length)
    else:
        return float(TOWER_FALLBACK)
    heads = max((m.num_heads for m in tower.modules() if isinstance(m, nn.MultiheadAttention)), default=1)
    return tokens * 14.0 * tower.width + 2.0 * heads * tokens**2


def count(modules: Iterable[nn.Module], exclude: set[int] = frozenset()) -> int:
    """Elements of the parameters and buffers of ``modules``, each tensor once."""
    seen: set[int] = set(exclude)
    total = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
    return total


@dataclass
class ModelMemoryStats:
    """Weight element counts per component and activation-cost layers, for :func:`plan_memory`.

    ``params`` keys: ``unet`` (streamable blocks), ``unet_rest`` (embeddings and ``out``, always
    resident), ``unet_block_max`` (the largest streamed block), ``image_encoder`` (CLIP image or
    text tower), ``cond_frame_encoder`` (the VAE encoder of the conditioning frame; 0 if none),
    ``vae_decoder``, ``vae_rest`` (quant convs, always resident).
    """

    params: dict[str, int]
    unet_layers: list[LayerCost]
    decoder_layers: list[LayerCost]
    encoder_layers: list[LayerCost]
    latent_channels: int
    unet_in_channels: int
    downsample_factor: int
    temporal_radius: int
    image_encoder_elements: float = 0.0  # activations per conditioning sample, summed over the towers
    dtype: torch.dtype = torch.float32
    calibration: dict[str, float] = field(default_factory=lambda: {"unet": 1.0, "decode": 1.0, "encode": 1.0})

    @classmethod
    def from_module(cls, module: object) -> ModelMemoryStats:
        """From a :class:`~vldm.training.module.DiffusionModule` or a ``LatentDiffusionSampler``."""
        from vldm.sampling.components import components

        parts = components(module)
        unet, first_stage = parts.network, parts.first_stage
        blocks = parts.unet_blocks
        block_ids = {id(t) for b in blocks for t in [*b.parameters(), *b.buffers()]}
        cond_enc = parts.cond_frame_encoders[0] if parts.cond_frame_encoders else None
        params = {
            "unet": count(blocks),
            "unet_rest": count([unet], exclude=block_ids),
            "unet_block_max": max((count([b]) for b in blocks), default=0),
            "image_encoder": count(parts.image_encoders),
            "cond_frame_encoder": count(parts.cond_frame_encoders),
            "vae_decoder": count([first_stage.decoder]),
            "vae_rest": count(parts.small_resident),
        }
        f = int(first_stage.downsample_factor)
        return cls(params=params, unet_layers=unet_costs(unet), decoder_layers=decoder_costs(first_stage.decoder),
                   encoder_layers=encoder_costs(cond_enc, f) if cond_enc is not None else [],
                   latent_channels=int(unet.config.out_channels), unet_in_channels=int(unet.config.in_channels),
                   downsample_factor=f, temporal_radius=int(getattr(first_stage, "temporal_receptive_radius", 0)),
                   image_encoder_elements=sum(tower_elements(e) for e in parts.image_encoders),
                   dtype=next(unet.parameters()).dtype)

    def weight_bytes(self, dtype: torch.dtype) -> dict[str, int]:
        """``params`` in bytes for weights stored in ``dtype``."""
        size = torch.tensor([], dtype=dtype).element_size()
        return {name: n * size for name, n in self.params.items()}

    def unet_activation_elements(self, frames: int, latent_px: int, num_frames: int,
                                 attention_chunk: int | None = None, ff_chunk: int | None = None,
                                 efficient_attention: bool = True) -> float:
        """Peak live activations of one UNet forward on ``frames`` frames (elements)."""
        peak = max(c.elements(frames, latent_px, num_frames, attention_chunk, ff_chunk, efficient_attention)
                   for c in self.unet_layers)
        return peak * self.calibration["unet"]

    def decode_activation_elements(self, frames: int, latent_px: int, efficient_attention: bool = True) -> float:
        peak = max(c.elements(frames, latent_px, frames, efficient_attention=efficient_attention)
                   for c in self.decoder_layers)
        return peak * self.calibration["decode"]

    def encode_activation_elements(self, frames: int, latent_px: int, efficient_attention: bool = True) -> float:
        if not self.encoder_layers:
            return 0.0
        peak = max(c.elements(frames, latent_px, frames, efficient_attention=efficient_attention)
                   for c in self.encoder_layers)
        return peak * self.calibration["encode"]
