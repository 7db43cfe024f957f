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
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scai.errors import ImageTooLarge, InvalidImage

# Every image is opened here, and _open checks the size against the configured limit with the
# image's dimensions in the message; Pillow's own global guard would refuse first, less clearly.
Image.MAX_IMAGE_PIXELS = None

#: Pillow format name -> the extension we store the upload under.
FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp", "TIFF": "tiff"}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    ext: str
    width: int
    height: int


#: A progressive JPEG is decoded once per scan: encoders write about 10, and a file of 100,000
#: tiny scans once kept a worker busy for minutes. Inside a JPEG's compressed data a 0xFF byte is
#: always followed by 0x00 or a marker, so counting the start-of-scan markers counts the scans.
MAX_JPEG_SCANS = 32
START_OF_SCAN = b"\xff\xda"


def _open(source: bytes | Path, max_pixels: int) -> Image.Image:
    if isinstance(source, Path):
        source = source.read_bytes()
    stream = io.BytesIO(source)
    if not source:
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
    if image.format == "JPEG" and (scans := jpeg_scans(source)) > MAX_JPEG_SCANS:
        raise InvalidImage(
            f"the JPEG has {scans} scans, more than the limit of {MAX_JPEG_SCANS} (photos have about 10): "
            "save it again as a plain JPEG"
        )
    return image


#: How much of an upload ``jpeg_scans`` compares at once (its temporaries stay this small).
SCAN_WINDOW = 1 << 18


def jpeg_scans(data: bytes) -> int:
    """How many start-of-scan markers ``data`` holds. numpy finds the 0xFF bytes and looks at
    the byte after each: 23 us on a 73 KB photo and 0.3 ms on a 12 MP one, where
    ``bytes.count`` of the two bytes took 65 us and 1 ms (every upload is counted twice: by the
    portal and by the worker)."""
    values = np.frombuffer(data, np.uint8)
    count = 0
    for start in range(0, max(0, len(values) - 1), SCAN_WINDOW):  # windows overlap by the byte after
        window = values[start : start + SCAN_WINDOW + 1]
        after = np.flatnonzero(window[:-1] == START_OF_SCAN[0]) + 1
        count += int(np.count_nonzero(window[after] == START_OF_SCAN[1]))
    return count


def inspect(data: bytes, max_pixels: int) -> ImageInfo:
    """Check an upload from its header alone: is it an image, of a known format, not too large?"""
    image = _open(data, max_pixels)
    return ImageInfo(image.format, FORMATS[image.format], image.width, image.height)


#: A drafted JPEG keeps at least this many times the model's input size a side (see above).
DRAFT_MARGIN = 2
#: EXIF orientations that swap width and height (rotated by 90 or 270 degrees).
TRANSPOSED = (5, 6, 7, 8)
#: EXIF orientation -> the transpose that turns the stored pixels upright (as exif_transpose does).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ORIENTATION_TAG = 0x0112


def load_rgb(
    source: bytes | Path, max_pixels: int, fit: tuple[int, int] | None = None, contain: bool = False
) -> Image.Image:
    """Decode into 8-bit RGB, upright as the camera meant it; raises ``InvalidImage``.

    With ``fit`` (the width and height a model takes), a large JPEG is decoded in draft mode at
    the smallest scale still covering ``DRAFT_MARGIN`` times ``fit``; without it, at full size.
    ``contain``: the model shrinks the whole image to fit inside ``fit`` (a letterbox), so only
    the image at that size needs covering: a 1080p frame for a 416x416 YOLOX is decoded at half
    size, where covering 416x416 a side twice over would need all 1080 rows.
    """
    image = _open(source, max_pixels)
    try:
        if fit is not None and image.format == "JPEG":  # a JPEG's EXIF comes before its pixels
            transposed = orientation(image) in TRANSPOSED
            if contain:
                upright = image.size[::-1] if transposed else image.size
                ratio = min(fit[0] / upright[0], fit[1] / upright[1])
                fit = (math.ceil(upright[0] * ratio), math.ceil(upright[1] * ratio))
            width, height = (DRAFT_MARGIN * side for side in (fit[::-1] if transposed else fit))
            image.draft("RGB", (width, height))
        image.load()
        if (turn := orientation(image)) != 1:
            # the transpose itself: ImageOps.exif_transpose also rewrites the EXIF, which raises
            # on damaged EXIF that still names an orientation
            image = image.transpose(UPRIGHT[turn])
        if fit is not None and image.mode in WIDE_MODES:
            image = _reduced(image, fit)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the image cannot be decoded: {error}") from None


#: Modes of 16 or 32 bits a pixel, which become 8-bit RGB through a float copy of the whole image.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _reduced(image: Image.Image, fit: tuple[int, int]) -> Image.Image:
    """A wide-mode image scaled down to cover ``DRAFT_MARGIN`` times ``fit`` before it is
    converted (as a JPEG is drafted): a 7000x7000 16-bit PNG of 100 KB otherwise costs 500 MB."""
    scale = max(DRAFT_MARGIN * fit[0] / image.width, DRAFT_MARGIN * fit[1] / image.height)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)


def geometry(source: bytes | Path, max_pixels: int) -> tuple[int, int, int]:
    """(width, height) of the image as ``load_rgb`` returns it at full size, and the EXIF
    orientation that turned it so (1: none). For the worker, after a decode: a PNG's EXIF may
    follow its pixels, so reading it can decode the whole image."""
    image = _open(source, max_pixels)
    turn = orientation(image)
    width, height = (image.height, image.width) if turn in TRANSPOSED else image.size
    return width, height, turn


def orientation(image: Image.Image) -> int:
    """The EXIF orientation still to apply to ``image``'s pixels as Pillow reads them (1: none,
    also for EXIF that cannot be read). Pillow's TIFF reader applies a TIFF's orientation itself:
    its pixels are upright already."""
    if image.format == "TIFF":
        return 1
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # damaged EXIF (struct.error, SyntaxError, OSError...): as if there were none
        return 1
    return value if value in range(1, 9) else 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; 16-bit and float greyscale scaled to 8 bits, not clipped."""
    if image.mode == "F" or image.mode.startswith("I"):
        # One float32 copy, changed in place: not float64, and no temporaries (4 bytes a pixel
        # of a 50 MP image is 200 MB already).
        values = np.array(image, dtype=np.float32)
        if image.mode.startswith("I"):
            values /= 257  # 16-bit range to 8-bit
        elif values.max(initial=0) <= 1.0:
            values *= 255  # float images in 0..1
        np.clip(values, 0, 255, out=values)
        grey = np.rint(values, out=values).astype(np.uint8)
        del values
        return Image.fromarray(grey, "L").convert("RGB")
    # Transparency is dropped (the colour stored under it is kept), as the reference
    # predictions for the shipped test photos were made.
    return image.convert("RGB") if image.mode != "RGB" else image
