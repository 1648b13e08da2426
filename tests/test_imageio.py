"""Robust decoding: every image kind converts to upright RGB; bad files give reasons."""

from __future__ import annotations

import numpy as np
import pytest
from image_factory import make_images
from PIL import Image

from overfeat_kernels import imageio


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("imgs"))


@pytest.mark.parametrize("name", ["rgb.jpg", "gray.png", "rgba.png", "cmyk.jpg", "png16.png",
                                  "palette.gif", "tiny.png"])  # fmt: skip
def test_converts_to_rgb(folder, name):
    a = imageio.load_rgb(folder / name)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.flags.writeable
    assert 40 < a.mean() < 215 and a.std() > 20  # random content survived, not saturated


def test_sixteen_bit_scaled_not_clipped(folder):
    raw = np.asarray(Image.open(folder / "png16.png")).astype(np.float64)
    a = imageio.load_rgb(folder / "png16.png")[:, :, 0].astype(np.float64)
    assert np.abs(a - raw / 257).max() <= 0.5 + 1e-9


def test_exif_orientation_applied(folder):
    assert imageio.load_rgb(folder / "rotated.jpg").shape == (64, 40, 3)  # stored as 40x64


def test_transparency_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    assert (imageio.load_rgb(tmp_path / "clear.png") == 255).all()


@pytest.mark.parametrize("name,words", [("truncated.jpg", "truncated"),
                                        ("not_an_image.jpg", "not an image"),
                                        ("empty.png", "not an image")])  # fmt: skip
def test_bad_files_raise_image_error(folder, name, words):
    with pytest.raises(imageio.ImageError, match=words):
        imageio.load_rgb(folder / name)


def test_resize_center_crop():
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 30:50] = 255  # a bright band in the middle
    out = imageio.resize_center_crop(pixels, 20)
    assert out.shape == (3, 20, 20) and out.dtype.is_floating_point is False
    assert out[:, :, 8:12].float().mean() > 200 and out[:, :, :3].float().mean() < 30
