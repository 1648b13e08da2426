"""Robust image decoding for feature extraction: any file that is not a usable image
becomes a reason string, never an exception that stops a run.

Handled: EXIF orientation; grayscale, palette, CMYK, YCbCr; transparency (composited on
white); 16- and 32-bit integer and float images (scaled to 0-255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)


class ImageError(Exception):
    """Why a file cannot be used (unreadable, truncated, not an image, too small)."""


def load_rgb(path: str | Path) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 RGB array, upright (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes now: truncated files fail here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated, corrupt, unreadable
        raise ImageError(f"unreadable image: {err}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 16-bit range to 8-bit
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(im.convert("RGB"))  # a writable copy (torch refuses read-only arrays)


def resize_center_crop(pixels: np.ndarray, size: int) -> torch.Tensor:
    """Shorter side to `size` (antialiased bilinear), then the central size x size square,
    as a ``[3, size, size]`` uint8 tensor."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8)[0]
