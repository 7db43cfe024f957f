"""Decoding and validating uploads with Pillow.

The portal only reads an upload's header (cheap, and enough to refuse what is not an image or is
a decompression bomb); the worker decodes it and turns every colour mode into the RGB the models
expect, with the camera's EXIF orientation applied.

A model sees a few hundred pixels a side, so a worker asks for little more: a JPEG at least four
times the model's input a side is decoded in draft mode, scaled down by 2, 4 or 8 inside the
decoder (the DCT) to the smallest size still at least twice the input, and then resized exactly as
a full decode would be. On a 12-megapixel photo that is about 20 ms instead of 120 ms. Twice, not
once: resized from just above the input size, two of the 29 shared photos change their top-1
label (the resize's anti-aliasing sees fewer source pixels); from twice, none does
(tests/test_imaging.py). Other formats have no such mode and decode whole.

A JPEG decoded whole goes through OpenCV's libjpeg-turbo rather than Pillow's: the same pixels
(tested on every shared JPEG), 25% sooner, because Pillow feeds its decoder in small chunks. A file
that does not end where a JPEG ends (truncated), or is rotated by EXIF, or is not plain 8-bit colour
takes Pillow's path, which reports a truncated file and handles every mode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
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


#: A drafted JPEG keeps at least this many times the model's input size a side (see above).
DRAFT_MARGIN = 2
#: EXIF orientations that swap width and height (rotated by 90 or 270 degrees).
TRANSPOSED = (5, 6, 7, 8)
ORIENTATION_TAG = 0x0112


JPEG_END = b"\xff\xd9"


def load_rgb(source: bytes | Path, max_pixels: int, fit: tuple[int, int] | None = None) -> Image.Image:
    """Decode into 8-bit RGB, upright as the camera meant it; raises ``InvalidImage``.

    With ``fit`` (the width and height a model takes), a large JPEG is decoded in draft mode at
    the smallest scale still covering ``DRAFT_MARGIN`` times ``fit``; without it, at full size.
    """
    data = source.read_bytes() if isinstance(source, Path) else source
    image = _open(data, max_pixels)
    try:
        if image.format == "JPEG":  # a JPEG's EXIF comes before its pixels
            orientation, size = image.getexif().get(ORIENTATION_TAG, 1), image.size
            if fit is not None:
                width, height = (DRAFT_MARGIN * side for side in (fit[::-1] if orientation in TRANSPOSED else fit))
                image.draft("RGB", (width, height))
            whole = image.size == size and orientation in (None, 1)
            fast = _whole_jpeg(data, image) if whole else None
            if fast is not None:
                return fast
        image.load()
        if image.getexif().get(ORIENTATION_TAG, 1) not in (None, 1):  # exif_transpose copies even an upright image
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the image cannot be decoded: {error}") from None


def _whole_jpeg(data: bytes, header: Image.Image) -> Image.Image | None:
    """A plain colour JPEG that ends as a JPEG ends, decoded whole by OpenCV; None where
    Pillow's path must take it."""
    if header.mode != "RGB" or not data.rstrip(b"\0\r\n ").endswith(JPEG_END):
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.shape != (header.height, header.width, 3):
        return None
    return Image.frombuffer("RGB", header.size, pixels, "raw", "RGB", 0, 1)


def upright_size(source: bytes | Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the image as ``load_rgb`` returns it at full size, from its header."""
    image = _open(source, max_pixels)
    transposed = image.getexif().get(ORIENTATION_TAG, 1) in TRANSPOSED
    return (image.height, image.width) if transposed else image.size


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
