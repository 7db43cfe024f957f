"""Upload checks and decoding: what is refused, and how every accepted mode becomes RGB."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSIFY_MODELS, IMAGES, needs_assets
from images import encode, exif_rotated_jpeg, png_bomb, sixteen_bit_png
from PIL import Image

from scai import imaging
from scai.config import CLASSIFICATION, ModelSpec
from scai.engines import load_classifier

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


def test_damaged_exif_still_turns_the_photo_or_counts_as_none() -> None:
    """An orientation next to a tag of the wrong type (Pillow's exif_transpose raised rewriting
    it), and EXIF that is not TIFF data at all: decoded, never an exception."""
    ifd = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x011A, 2, 3, b"ab\x00\x00")]
    exif = b"II*\x00" + struct.pack("<IH", 8, len(ifd))
    exif += b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in ifd) + struct.pack("<I", 0)
    turned = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(turned, "JPEG", exif=b"Exif\x00\x00" + exif)
    assert imaging.load_rgb(turned.getvalue(), LIMIT).size == (48, 64)
    assert imaging.geometry(turned.getvalue(), LIMIT) == (48, 64, 6)
    for fmt in ("PNG", "WEBP"):
        garbled = io.BytesIO()
        Image.new("RGB", (64, 48)).save(garbled, fmt, exif=b"Exif\x00\x00garbage, not TIFF")
        assert imaging.load_rgb(garbled.getvalue(), LIMIT).size == (64, 48)
        assert imaging.geometry(garbled.getvalue(), LIMIT) == (64, 48, 1)


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


def twelve_megapixels(path: Path) -> bytes:
    """A 4032x3024 camera-sized JPEG made from a shared photo."""
    return encode(Image.open(path).convert("RGB").resize((4032, 3024), Image.BICUBIC), "JPEG", quality=90)


def test_a_large_jpeg_is_drafted_to_twice_the_model_input_and_others_are_not() -> None:
    photo = encode(Image.new("RGB", (4032, 3024), "teal"), "JPEG")
    drafted = imaging.load_rgb(photo, LIMIT, fit=(224, 224))
    assert drafted.size == (1008, 756), "the smallest DCT scale (1/4) still at least 448 a side"
    assert imaging.load_rgb(photo, LIMIT).size == (4032, 3024)
    small = encode(Image.new("RGB", (517, 606), "teal"), "JPEG")
    assert imaging.load_rgb(small, LIMIT, fit=(224, 224)).size == (517, 606), "under 4x the input: whole"
    png = encode(Image.new("RGB", (2000, 2000), "teal"), "PNG")
    assert imaging.load_rgb(png, LIMIT, fit=(224, 224)).size == (2000, 2000), "no draft mode outside JPEG"


def test_a_letterboxed_model_drafts_to_cover_the_photo_as_it_fits_inside() -> None:
    """A 1080p frame for a 416x416 letterbox fills it at 416x234: twice that (832x468) is covered
    at half size, while covering 832x832 would need every row."""
    frame = encode(Image.new("RGB", (1920, 1080), "teal"), "JPEG")
    assert imaging.load_rgb(frame, LIMIT, fit=(416, 416)).size == (1920, 1080)
    assert imaging.load_rgb(frame, LIMIT, fit=(416, 416), contain=True).size == (960, 540)
    upright = encode(Image.new("RGB", (1080, 1920), "teal"), "JPEG")  # a portrait frame
    assert imaging.load_rgb(upright, LIMIT, fit=(416, 416), contain=True).size == (540, 960)


@needs_assets
def test_a_drafted_photo_keeps_its_exif_orientation() -> None:
    rotated = exif_rotated_jpeg(IMAGES / "kite_and_cold.jpg")
    full = imaging.load_rgb(rotated, LIMIT)
    drafted = imaging.load_rgb(rotated, LIMIT, fit=(224, 224))
    assert drafted.size == (full.width // 2, full.height // 2)
    assert imaging.geometry(rotated, LIMIT)[:2] == full.size
    reduced = np.asarray(full.resize(drafted.size, Image.BILINEAR), dtype=int)
    assert np.abs(np.asarray(drafted, dtype=int) - reduced).mean() < 8, "drafted upright, like the full decode"


@needs_assets
def test_draft_decoding_keeps_every_reference_top1() -> None:
    """All 29 shared photos and two 12-megapixel ones: the same top-1 as the full decode that made
    the shared reference table, on the quantised and the float reference models."""
    for model, labels in (
        ("mobilenet_v2_1.0_224_quant", "mobilenet_v2"),
        ("mobilenet_v1_0.25_224_float", "mobilenet_v1"),
    ):
        engine = load_classifier(
            ModelSpec(
                "m", CLASSIFICATION, CLASSIFY_MODELS / f"{model}.tflite", CLASSIFY_MODELS / f"{labels}_labels.txt"
            )
        )
        photos = [path.read_bytes() for path in sorted(IMAGES.iterdir()) if path.name != "COPYRIGHT"]
        photos += [twelve_megapixels(IMAGES / name) for name in ("kite_and_cold.jpg", "grace_hopper.jpg")]
        drafted = 0
        for data in photos:
            full = imaging.load_rgb(data, LIMIT)
            reduced = imaging.load_rgb(data, LIMIT, fit=engine.input_size)
            drafted += reduced.size != full.size
            top = [engine.top(row, 1)[0].label for row in engine.predict([full, reduced])]
            assert top[0] == top[1], f"{model}: {top}"
        assert len(photos) == 31 and drafted >= 3, drafted  # the JPEGs of at least 4x the input


def scan_bomb(scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: decoders run every one of them."""
    data = encode(Image.new("RGB", (64, 64), "teal"), "JPEG", progressive=True)
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    normal = encode(Image.new("RGB", (64, 64), "teal"), "JPEG", progressive=True)
    assert imaging.load_rgb(normal, LIMIT).size == (64, 64), "an ordinary progressive JPEG (about 10 scans)"
    assert imaging.load_rgb(scan_bomb(imaging.MAX_JPEG_SCANS), LIMIT).size == (64, 64)
    bomb = scan_bomb(100_000)
    assert len(bomb) < 10_000_000
    for check in (imaging.inspect, imaging.load_rgb):  # the portal refuses it; a worker never decodes it
        for scans in (100_000, imaging.MAX_JPEG_SCANS + 1):
            with pytest.raises(imaging.InvalidImage, match=f"has {scans} scans"):
                check(bomb if scans == 100_000 else scan_bomb(scans), LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "PNG"])
def test_the_upright_size_is_the_decoded_size_whatever_the_format(fmt: str) -> None:
    """Pillow turns a TIFF upright itself while other formats are turned by us: never twice."""
    exif = Image.Exif()
    exif[imaging.ORIENTATION_TAG] = 6
    out = io.BytesIO()
    Image.new("RGB", (300, 200)).save(out, fmt, exif=exif.tobytes())
    data = out.getvalue()
    assert imaging.geometry(data, LIMIT)[:2] == imaging.load_rgb(data, LIMIT).size == (200, 300)


@pytest.mark.parametrize("before", [0, 1, imaging.SCAN_WINDOW - 1, imaging.SCAN_WINDOW, 3 * imaging.SCAN_WINDOW - 2])
def test_scans_are_counted_across_the_windows(before: int) -> None:
    """A marker split by a window's edge, or at either end, counts once."""
    data = b"\x00" * before + b"\xff\xda" + b"\xff\x00\xda" + b"\xff\xda"
    assert imaging.jpeg_scans(data) == 2
    assert imaging.jpeg_scans(data[:-1]) == 1
