"""The training report's two PNG plots, drawn with Pillow.

Pillow rather than matplotlib because a retrain on cached bottlenecks takes about a second, and
importing and drawing with matplotlib took most of another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from object_detection.drawing import font, text_colour

INK, GRID, PAPER = (40, 40, 40), (225, 225, 225), (255, 255, 255)
SERIES = {"training": (31, 119, 180), "held out": (255, 127, 14)}
LIGHT, DARK = (239, 246, 255), (8, 48, 107)  # the ends of the confusion matrix's colour scale


def confusion(path: Path, classes: Sequence[str], counts: Sequence[Sequence[int]], cell: int = 56) -> None:
    """Rows: true class; columns: predicted class; each cell shaded by its count."""
    small = font(13)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = max(pen.textlength(name, font=small) for name in classes)
    left, top = int(names) + 44, 36
    side = cell * len(classes)
    image = Image.new("RGB", (left + side + 16, top + side + int(names * 0.75) + 44), PAPER)
    pen = ImageDraw.Draw(image)
    pen.text((left + side / 2, 18), "confusion matrix (held-out photos)", INK, font(15), "mm")
    peak = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            shade = _blend(LIGHT, DARK, count / peak)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            pen.rectangle(box, fill=shade)
            pen.text((box[0] + cell / 2, box[1] + cell / 2), str(count), text_colour(shade), small, "mm")
        pen.text((left - 6, top + i * cell + cell / 2), classes[i], INK, small, "rm")
    for j, name in enumerate(classes):
        label = _rotated(name, small, 40)
        image.paste(label, (left + j * cell + cell // 2 - label.width + 6, top + side + 4), label)
    pen.text((left + side / 2, image.height - 12), "predicted", INK, small, "mm")
    label = _rotated("true", small, 90)
    image.paste(label, (6, top + side // 2 - label.height // 2), label)
    image.save(path)


def curves(path: Path, history: dict[str, list[float]]) -> None:
    """Loss and accuracy per epoch, on the training photos and on the held-out ones."""
    panels = [_panel(metric, history[metric], history[f"val_{metric}"]) for metric in ("loss", "accuracy")]
    image = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), PAPER)
    for index, panel in enumerate(panels):
        image.paste(panel, (index * panels[0].width, 0))
    image.save(path)


def _panel(title: str, training: list[float], held: list[float]) -> Image.Image:
    high = 1.0 if title == "accuracy" else max(max(training, default=1), max(held, default=1)) * 1.05
    epochs = max(len(training) - 1, 1)
    every = next(n for n in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, epochs) if n * 6 >= epochs)
    series = {name: list(enumerate(values)) for name, values in zip(SERIES, (training, held), strict=True)}
    ticks = [(epoch, str(epoch)) for epoch in range(0, epochs + 1, every)]
    return chart(title, series, "epoch", (epochs, high), ticks, key_at_top=title == "loss")


def chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    limits: tuple[float, float],
    x_ticks: list[tuple[float, str]],
    key_at_top: bool = True,
    size: tuple[int, int] = (460, 320),
) -> Image.Image:
    """Lines of (x, y) points from (0, 0) to ``limits``, one colour a series (``SERIES`` names the
    first two), with a key away from where the lines usually run."""
    image = Image.new("RGB", size, PAPER)
    pen = ImageDraw.Draw(image)
    small = font(12)
    left, top, right, bottom = 52, 30, size[0] - 14, size[1] - 40
    x_max, y_max = limits

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * min(y, y_max) / y_max

    for step in range(6):
        y = bottom - (bottom - top) * step / 5
        pen.line((left, y, right, y), GRID)
        pen.text((left - 6, y), f"{y_max * step / 5:.2f}", INK, small, "rm")
    for x, text in x_ticks:
        pen.text((at(x, 0)[0], bottom + 6), text, INK, small, "mt")
    pen.rectangle((left, top, right, bottom), outline=INK)
    pen.text(((left + right) / 2, 14), title, INK, font(15), "mm")
    pen.text(((left + right) / 2, size[1] - 10), x_label, INK, small, "mm")
    colours = [*SERIES.values(), (44, 160, 44), (214, 39, 40)]
    for row, (name, points) in enumerate(series.items()):
        colour = colours[row % len(colours)]
        if len(points) > 1:
            pen.line([at(x, y) for x, y in points], colour, 2)
        key = (right - 110, (top + 10 if key_at_top else bottom - 40) + row * 18)
        pen.line((key[0], key[1], key[0] + 20, key[1]), colour, 3)
        pen.text((key[0] + 26, key[1]), name, INK, small, "lm")
    return image


def _rotated(text: str, text_font: object, angle: float) -> Image.Image:
    """``text`` as a transparent image turned by ``angle`` degrees, counter-clockwise."""
    pen = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = pen.textbbox((0, 0), text, font=text_font)
    label = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(label).text((-left + 1, -top + 1), text, INK, text_font)
    return label.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def _blend(low: tuple[int, int, int], high: tuple[int, int, int], share: float) -> tuple[int, int, int]:
    return tuple(round(a + (b - a) * share) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]
