"""Upload checks and decoding: what is refused, and how every accepted mode becomes RGB."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IMAGES, needs_assets
from images import encode, exif_rotated_jpeg, png_bomb, sixteen_bit_png
from PIL import Image

from scai import imaging

LIMIT = 50_000_000


def test_refuses_what_is_not_an_image() -> None:
    for data in (b"", b"hello, I am text named photo.jpg\n", b"\xff\xd8\xff" + b"\0" * 10):
        with pytest.raises(imaging.InvalidImage):
            imaging.inspect(data, LIMIT)


def test_refuses_a_decompression_bomb_from_its_header() -> None:
    bomb = png_bomb()
    assert len(bomb) < 200
    with pytest.raises(imaging.ImageTooLarge, match="40000x40000|more than"):
        imaging.inspect(bomb, LIMIT)
    with pytest.raises(imaging.ImageTooLarge):
        imaging.load_rgb(bomb, LIMIT)


def test_pixel_limit_is_configurable() -> None:
    small = encode(Image.new("RGB", (100, 100)), "PNG")
    assert imaging.inspect(small, 10_000).width == 100
    with pytest.raises(imaging.ImageTooLarge):
        imaging.inspect(small, 9_999)


@needs_assets
def test_truncated_jpeg_passes_the_header_check_but_fails_to_decode() -> None:
    data = (IMAGES / "grace_hopper.jpg").read_bytes()
    truncated = data[: len(data) // 2]
    assert imaging.inspect(truncated, LIMIT).format == "JPEG"
    with pytest.raises(imaging.InvalidImage, match="cannot be decoded"):
        imaging.load_rgb(truncated, LIMIT)


@needs_assets
def test_exif_orientation_is_applied() -> None:
    original = Image.open(IMAGES / "grace_hopper.jpg").convert("RGB")
    upright = imaging.load_rgb(exif_rotated_jpeg(IMAGES / "grace_hopper.jpg"), LIMIT)
    assert upright.size == original.size
    difference = np.abs(np.asarray(upright, dtype=int) - np.asarray(original, dtype=int)).mean()
    assert difference < 8, f"not upright: mean difference {difference}"


@needs_assets
def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    rgb = imaging.load_rgb(sixteen_bit_png(IMAGES / "grace_hopper.jpg"), LIMIT)
    grey = np.asarray(Image.open(IMAGES / "grace_hopper.jpg").convert("L"), dtype=int)
    assert rgb.mode == "RGB"
    assert np.abs(np.asarray(rgb, dtype=int)[..., 0] - grey).max() <= 1


@needs_assets
def test_cmyk_jpeg_becomes_the_same_colours() -> None:
    original = Image.open(IMAGES / "grace_hopper.jpg").convert("RGB")
    rgb = imaging.load_rgb(encode(original.convert("CMYK"), "JPEG", quality=95), LIMIT)
    assert np.abs(np.asarray(rgb, dtype=int) - np.asarray(original, dtype=int)).mean() < 8


def test_modes_become_rgb() -> None:
    for mode in ("L", "LA", "RGBA", "P", "1", "I", "F", "CMYK", "YCbCr"):
        image = Image.new(mode, (8, 8))
        assert imaging.to_rgb(image).mode == "RGB", mode
