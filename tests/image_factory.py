"""Generates a folder of small test images of every kind extraction must handle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# name -> expected status when extracted at --size 32 (default --min-size 32)
EXPECTED = {
    "rgb.jpg": "ok",
    "gray.png": "ok",
    "rgba.png": "ok",
    "cmyk.jpg": "ok",
    "png16.png": "ok",
    "rotated.jpg": "ok",
    "palette.gif": "ok",
    "nested/deeper/big.png": "ok",
    "truncated.jpg": "skipped",
    "not_an_image.jpg": "skipped",
    "empty.png": "skipped",
    "tiny.png": "skipped",
}


def make_images(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(40, 48)).save(root / "rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (45, 37), dtype=np.uint8)).save(root / "gray.png")
    rgba = np.concatenate([rgb(36, 50), rng.integers(0, 256, (36, 50, 1), dtype=np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(rgb(40, 40)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (38, 41), dtype=np.uint16)).save(root / "png16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb(40, 64)).save(root / "rotated.jpg", exif=exif)
    Image.fromarray(rgb(33, 35)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "palette.gif"
    )
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(70, 90)).save(root / "nested" / "deeper" / "big.png")
    good = (root / "rgb.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "not_an_image.jpg").write_text("this is text, not a JPEG\n")
    (root / "empty.png").write_bytes(b"")
    Image.fromarray(rgb(8, 8)).save(root / "tiny.png")
    (root / "README.txt").write_text("not an image extension: not picked up from folders\n")
    return root
