"""Reading conditioning images: any mode or size in, the model's resolution out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def list_images(source: str | Path) -> list[Path]:
    """One image file, or every image in a folder (sorted)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return [path]


def load_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """RGB ``(3, height, width)`` in [-1, 1]; resized to cover, then centre-cropped (noted in the log)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    if img.size != (width, height):
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        log.info("resizing %s from %dx%d to %dx%d and centre-cropping to %dx%d", path, img.width, img.height,
                 *size, width, height)
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        img = img.crop((left, top, left + width, top + height))
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
