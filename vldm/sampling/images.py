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


def to_rgb(img: Image.Image, path: str | Path = "image") -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited onto white (noted in the log)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits, not clip
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        log.info("%s has an alpha channel: compositing it onto white", path)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def fit_size(width: int, height: int, multiple: int = 64) -> tuple[int, int]:
    """The official SVD script's rule for ``resize=keep``: round each side down to ``multiple``."""
    w, h = max(multiple, width - width % multiple), max(multiple, height - height % multiple)
    return w, h


def open_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as RGB; an unreadable file raises ValueError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def load_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """RGB ``(3, height, width)`` in [-1, 1]; resized to cover, then centre-cropped (noted in the log)."""
    img = open_image(path)
    if img.size != (width, height):
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        log.info("resizing %s from %dx%d to %dx%d and centre-cropping to %dx%d (the model's resolution)", path,
                 img.width, img.height, *size, width, height)
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        img = img.crop((left, top, left + width, top + height))
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
