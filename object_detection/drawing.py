"""The annotated image: a box per detection, a colour per class, a label with its score.

Drawn with Pillow on a copy of the photo at its own size; no matplotlib figure (the original
created one per image and never closed it).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from object_detection.boxes import Box


@dataclass(frozen=True)
class Labelled:
    box: Box
    class_id: int
    label: str
    score: float


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, saturated colour per class: hues spread by the golden ratio."""
    hue = (class_id * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw(image: Image.Image, detections: Sequence[Labelled], line_thickness: int = 4) -> Image.Image:
    """A copy of ``image`` with the detections drawn on it."""
    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    width, height = canvas.size
    text_font = font(max(12, round(min(width, height) / 32)))
    for item in detections:
        colour = class_colour(item.class_id)
        corners = item.box.pixels(width, height)
        left, top, right, bottom = corners["xmin"], corners["ymin"], corners["xmax"], corners["ymax"]
        pen.rectangle((left, top, right, bottom), outline=colour, width=line_thickness)
        caption = f"{item.label} {item.score * 100:.0f}%"
        text_left, text_top, text_right, text_bottom = pen.textbbox((0, 0), caption, font=text_font)
        text_width, text_height = text_right - text_left, text_bottom - text_top
        pad = max(2, line_thickness // 2)
        label_top = top - text_height - 2 * pad if top - text_height - 2 * pad >= 0 else top
        label_left = min(left, max(0, width - text_width - 2 * pad))
        pen.rectangle(
            (label_left, label_top, label_left + text_width + 2 * pad, label_top + text_height + 2 * pad), fill=colour
        )
        pen.text(
            (label_left + pad - text_left, label_top + pad - text_top),
            caption,
            fill=text_colour(colour),
            font=text_font,
        )
    return canvas
