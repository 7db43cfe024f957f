"""Decoding and validating uploads with Pillow.

The portal only reads an upload's header (cheap, and enough to refuse what is not an image or is
a decompression bomb); the worker decodes it fully and turns every colour mode into the RGB the
models expect, with the camera's EXIF orientation applied.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Every image is opened here, and _open checks the size against the configured limit with the
# image's dimensions in the message; Pillow's own global guard would refuse first, less clearly.
Image.MAX_IMAGE_PIXELS = None

#: Pillow format name -> the extension we store the upload under.
FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp", "TIFF": "tiff"}


class InvalidImage(ValueError):
    """The bytes are not an image we can use; the message is fit to show to the user."""


class ImageTooLarge(InvalidImage):
    """The image has more pixels than the configured limit (a decompression bomb, or just huge)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    ext: str
    width: int
    height: int


def _open(source: bytes | Path, max_pixels: int) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, bytes) and not source:
        raise InvalidImage("the file is empty")
    try:
        image = Image.open(stream)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(
            f"not a readable image: use a JPEG, PNG, BMP, GIF, WEBP or TIFF file ({error.__class__.__name__})"
        ) from None
    if image.format not in FORMATS:
        raise InvalidImage(f"unsupported image format {image.format}; use JPEG, PNG, BMP, GIF, WEBP or TIFF")
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"the image is {image.width}x{image.height} pixels, more than the limit of {max_pixels}")
    return image


def inspect(data: bytes, max_pixels: int) -> ImageInfo:
    """Check an upload from its header alone: is it an image, of a known format, not too large?"""
    image = _open(data, max_pixels)
    return ImageInfo(image.format, FORMATS[image.format], image.width, image.height)


def load_rgb(source: bytes | Path, max_pixels: int) -> Image.Image:
    """Decode fully into 8-bit RGB, upright as the camera meant it; raises ``InvalidImage``."""
    image = _open(source, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the image cannot be decoded: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; 16-bit and float greyscale scaled to 8 bits, not clipped."""
    if image.mode == "F" or image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I"):
            values = values / 257  # 16-bit range to 8-bit
        elif values.max(initial=0) <= 1.0:
            values = values * 255  # float images in 0..1
        grey = np.clip(values, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    # Transparency is dropped (the colour stored under it is kept), as the reference
    # predictions for the shipped test photos were made.
    return image.convert("RGB") if image.mode != "RGB" else image
