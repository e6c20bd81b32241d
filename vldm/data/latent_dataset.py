"""Reads latent shards written by :mod:`vldm.jobs.latent_cache` (stages 2 and 3 without the encoders).

A latent sample is ``<key>.safetensors`` + ``<key>.json`` in a tar shard. The safetensors member
holds ``latents`` (the autoencoder posterior mean of every frame, unscaled, ``(T, c, h, w)``),
``latents_logvar`` (its log-variance; absent when the cache stored the mode only), ``cond_frame``
(the clip's first frame, uint8 ``(3, H, W)``, exactly the pixels the video pipeline gives) and
``cached.<i>`` (the output of the conditioner's embedder ``i`` on clean inputs, e.g. the CLIP image
embedding of the first frame). The json is the source clip's metadata plus ``fps_id``,
``motion_bucket_id`` and ``caption``, so metadata filters work as on video shards.

Batches carry ``latents`` [+ ``latents_logvar``], ``cond_frame`` (float in [-1, 1]), ``cached.<i>``,
``fps_id``, ``motion_bucket_id``, ``txt``; :class:`~vldm.training.module.DiffusionModule` trains on
them without decoding or encoding video. Shard splitting over ranks and workers, epochs, shuffling
and the counting of corrupt samples and truncated shards are :class:`~vldm.data.shards.ShardDataset`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vldm.data.shards import ShardDataset, SkipSample, caption_text
from vldm.video.pixels import from_uint8

logger = logging.getLogger(__name__)

MANIFEST = "latent_cache.json"
LATENT_MEMBER = "safetensors"
CACHED_PREFIX = "cached."
#: Conditioning inputs that are fixed per clip, so their embedders' outputs can be cached.
STATIC_INPUTS = ("cond_frames_without_noise", "txt")


def cached_embedders(conditioner: nn.Module) -> list[int]:
    """Indices of the conditioner's embedders whose input is fixed per clip (see ``STATIC_INPUTS``)."""
    return [i for i, key in enumerate(conditioner.input_keys) if key in STATIC_INPUTS]


def fingerprint(module: nn.Module) -> str:
    """A hash of the weights that produce cached values: the first stage and the cached embedders.

    Latents encoded by one autoencoder are meaningless to a UNet trained in another's latent space;
    :class:`~vldm.training.module.DiffusionModule` compares this against the cache's manifest.
    """
    h = hashlib.blake2b(digest_size=16)
    parts: list[tuple[str, nn.Module]] = [("first_stage_model", module.first_stage_model)]
    parts += [(f"embedder.{i}.{module.conditioner.input_keys[i]}", module.conditioner.embedders[i])
              for i in cached_embedders(module.conditioner)]
    for prefix, part in parts:
        for name, tensor in sorted(part.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def decode_latent_sample(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` member (safe: no pickle); ``ValueError`` if corrupt."""
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError (and others)
        raise ValueError(f"bad safetensors member ({type(err).__name__}: {err})") from None


class LatentClipDataset(ShardDataset):
    """Yields the cached latents of a clip (first ``num_frames`` frames) and its conditioning.

    ``num_frames=None`` keeps all stored frames; a clip with fewer is skipped and counted, as is a
    sample whose safetensors member is missing or corrupt (a truncated shard is counted by the base).
    """

    def __init__(
        self,
        shards: str | list[str],
        num_frames: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        repeat: bool = True,
        filter: dict[str, Any] | None = None,  # noqa: A002 - the public name of the option
        max_samples: int | None = None,
        shuffle_shards: bool = True,
    ) -> None:
        super().__init__(shards, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat, filter=filter,
                         max_samples=max_samples, shuffle_shards=shuffle_shards)
        self.num_frames = None if num_frames is None else int(num_frames)

    def decode(self, sample: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        if LATENT_MEMBER not in sample:
            raise SkipSample(f"no latent member (has {sorted(k for k in sample if not k.startswith('__'))})")
        try:
            tensors = decode_latent_sample(sample[LATENT_MEMBER])
        except ValueError as err:
            raise SkipSample(str(err)) from None
        for name in ("latents", "cond_frame"):
            if name not in tensors:
                raise SkipSample(f"latent member lacks {name!r} (has {sorted(tensors)})")
        latents = tensors["latents"]
        t = latents.shape[0] if self.num_frames is None else self.num_frames
        if latents.shape[0] < t:
            raise SkipSample(f"only {latents.shape[0]} cached frames, need {t}")
        out: dict[str, Any] = {"latents": latents[:t].float()}
        if "latents_logvar" in tensors:
            out["latents_logvar"] = tensors["latents_logvar"][:t].float()
        out["cond_frame"] = from_uint8(tensors["cond_frame"])
        out.update({k: v.float() for k, v in tensors.items() if k.startswith(CACHED_PREFIX)})
        out.update(txt=caption_text(meta), fps_id=int(meta["fps_id"]),
                   motion_bucket_id=int(meta["motion_bucket_id"]))
        return out


def read_manifest(shards: list[str]) -> dict[str, Any] | None:
    """The cache's ``latent_cache.json`` beside the first local shard (None for URLs or when absent)."""
    if not shards or "://" in shards[0] or shards[0].startswith("pipe:"):
        return None
    path = Path(shards[0]).parent / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
