"""Robust image decoding for feature extraction: any file that is not a usable image
becomes a reason string, never an exception that stops a run.

Handled: EXIF orientation; grayscale, palette, CMYK, YCbCr; transparency (composited on
white); 16- and 32-bit integer and float images (scaled to 0-255).

For decoding on the GPU (nvJPEG through a batched decoder): ``jpeg_header`` reads what a
JPEG's markers say (size, components, coding, orientation, whether it ends), and
``batch_decodable`` says whether the batched decoder can take it as it is; everything else
goes through ``load_rgb`` / ``decode_rgb``. ``resize_center_crop`` is the same arithmetic on
any device.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
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
    return _decode(path)


def decode_rgb(data: bytes) -> np.ndarray:
    """``load_rgb`` of a file's bytes (the same result, the same reasons)."""
    return _decode(io.BytesIO(data))


def _decode(source) -> np.ndarray:
    try:
        with Image.open(source) as im:
            im.load()  # decodes now: truncated files fail here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"unreadable image: {err}") from None


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say (everything before the first scan), read without decoding."""

    height: int
    width: int
    components: int
    precision: int
    baseline: bool  # SOF0 / SOF1: sequential Huffman (not progressive, arithmetic, lossless)
    orientation: int  # the first EXIF block's orientation, 1 (upright) when absent
    adobe_transform: int | None  # APP14: 0 CMYK / RGB, 1 YCbCr, 2 YCCK
    complete: bool  # the end-of-image marker closes the file
    component_ids: tuple[int, ...] = ()  # (82, 71, 66) = "RGB": no colour transform
    xmp_rotated: bool = False  # an XMP block gives an orientation other than 1


# Start-of-frame markers: 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb"tiff:Orientation(?:=[\"']|>)\s*([0-9]+)")


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG file's bytes, or None if they are not one (or its markers up to
    the first scan are malformed). Reads every marker before the scan, as libjpeg and
    Pillow do: metadata may follow the frame header."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff":
        return None
    pos, orientation, adobe, xmp_rotated, frame = 2, None, None, False, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00" and orientation is None:
            orientation = _exif_orientation(segment[6:])  # the first EXIF block counts
        elif marker == 0xE1 and segment.startswith(_XMP):
            found = _XMP_ORIENTATION.search(segment)
            xmp_rotated = xmp_rotated or (found is not None and found.group(1) != b"1")
        elif marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe = segment[11]
        elif marker in _SOF and frame is None:
            if len(segment) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            ids = tuple(segment[6 + 3 * c] for c in range(components) if 6 + 3 * c < len(segment))
            frame = (height, width, components, precision, marker in (0xC0, 0xC1), ids)
        elif marker == 0xDA:  # the first scan: the header ends here
            if frame is None:
                return None
            height, width, components, precision, baseline, ids = frame
            return JpegHeader(height, width, components, precision, baseline, orientation or 1,
                              adobe, data.rstrip(b"\x00").endswith(b"\xff\xd9"), ids,
                              xmp_rotated)  # fmt: skip
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD; 1 if absent or bad."""
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for e in range(count):
            entry = tiff[ifd + 2 + 12 * e : ifd + 14 + 12 * e]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                (value,) = struct.unpack(endian + "H", entry[8:10])
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error, IndexError):
        pass
    return 1


# The batched GPU decoder's limits we keep to: baseline 8-bit YCbCr / grayscale, upright,
# complete, of a sane size (Pillow's decompression-bomb threshold beyond).
MAX_BATCH_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def batch_decodable(h: JpegHeader | None) -> bool:
    """Whether the batched decoder (nvJPEG) is given this JPEG: everything else (PNG, CMYK /
    YCCK / RGB-coded, progressive or 12-bit JPEG, rotated by EXIF or XMP, truncated, huge)
    is decoded by Pillow, which knows all of those."""
    return (
        h is not None
        and h.baseline
        and h.precision == 8
        and h.components in (1, 3)
        and h.adobe_transform in (None, 1)
        and h.component_ids != (82, 71, 66)
        and h.orientation == 1
        and not h.xmp_rotated
        and h.complete
        and 0 < h.height * h.width <= MAX_BATCH_DECODE_PIXELS
    )


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


def resize_center_crop(pixels: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size` (antialiased bilinear), then the central size x size square,
    as a ``[3, size, size]`` uint8 tensor. Takes an ``[H, W, 3]`` uint8 array, or a
    ``[3, H, W]`` uint8 tensor on any device (the same arithmetic: the GPU path resizes
    there)."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    x = pixels[None].float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.round().clamp(0, 255).to(torch.uint8)[0]
