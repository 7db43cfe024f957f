"""Awkward images built on the fly from the shared photos: every colour mode, bombs, broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` pixels, in under a hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(photo: Path) -> bytes:
    """The photo stored on its side, with EXIF orientation 6 saying "turn 90 degrees clockwise to view"."""
    image = Image.open(photo).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.rotate(90, expand=True), "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_png(photo: Path) -> bytes:
    """A 16-bit greyscale PNG of the photo (values up to 65535)."""
    grey = np.asarray(Image.open(photo).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def variants(photo: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (filename, bytes): the valid formats and modes the service must accept."""
    rgb = Image.open(photo).convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(255)
    return {
        "png_alpha": ("photo.png", encode(rgba, "PNG")),
        "greyscale": ("photo.png", encode(rgb.convert("L"), "PNG")),
        "png_16bit": ("photo.png", sixteen_bit_png(photo)),
        "cmyk_jpeg": ("photo.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=95)),
        "bmp": ("photo.bmp", encode(rgb, "BMP")),
        "exif_rotated": ("photo.jpg", exif_rotated_jpeg(photo)),
    }
