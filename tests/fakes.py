"""A task that needs no model file, for driving the real Worker in-process (as rq tests its
workers with burst mode): every path through the worker without TensorFlow or test assets."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from object_detection.boxes import Box
from object_detection.drawing import Labelled
from scai.config import CLASSIFICATION, DETECTION, ModelSpec
from scai.tasks import Item, detection_fields

#: An image of this colour makes the fake model raise (one bad session in a batch).
POISON = (255, 0, 0)


def tiny_png(color: tuple[int, int, int] = (0, 128, 255), size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@dataclass
class FakeEngine:
    spec: ModelSpec
    batches: bool = True
    input_size: tuple[int, int] | None = None
    calls: list[int] = field(default_factory=list)  # batch sizes, in order

    def shrink(self, image: Image.Image) -> Image.Image:
        return image


class FakeTask:
    """Labels an image by its top-left pixel; a POISON pixel raises, as a model that cannot take an
    image would. ``broken`` names models whose load fails, as a missing file would."""

    job = CLASSIFICATION

    def __init__(self, broken: Sequence[str] = ()) -> None:
        self.broken = set(broken)
        self.loaded: list[str] = []

    def load(self, spec: ModelSpec) -> FakeEngine:
        if spec.name in self.broken:
            raise FileNotFoundError(2, "No such file or directory", str(spec.path))
        self.loaded.append(spec.name)
        return FakeEngine(spec)

    def run(self, engine: FakeEngine, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        engine.calls.append(len(items))
        results = []
        for item in items:
            pixel = item.image.getpixel((0, 0))
            if pixel == POISON:
                raise RuntimeError("the fake model cannot take a red image")
            label = "#" + bytes(pixel).hex()
            results.append({"result": {label: "100.0%"}, "predictions": [{"label": label, "score": 1.0}]})
        return results


#: The fake detector finds the pixels of this colour ("marker", score 0.9) in the upright image.
MARKER = (0, 255, 0)


class FakeDetector(FakeTask):
    """Finds the ``MARKER``-coloured rectangle of the upright image (score 0.9) and "frame", the
    whole image (score 0.3), best first, keeping those at the request's ``min_score`` or above."""

    job = DETECTION

    def run(self, engine: FakeEngine, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        engine.calls.append(len(items))
        results = []
        for item in items:
            width, height = item.image.size
            found = [Labelled(Box(0, 0, 1, 1), 2, "frame", 0.3)]
            pixels = np.asarray(item.image).astype(int)
            ys, xs = np.nonzero((pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60))
            if len(xs):
                spans = max(width - 1, 1), max(height - 1, 1)
                corners = Box(xs.min() / spans[0], ys.min() / spans[1], xs.max() / spans[0], ys.max() / spans[1])
                found.insert(0, Labelled(corners, 1, "marker", 0.9))
            chosen = [d for d in found if d.score >= item.options.get("min_score", 0.5)]
            _, _, turn = item.geometry(10**9)
            results.append(detection_fields(chosen, width, height, orientation=turn))
        return results


def marked_jpeg(size: tuple[int, int], marker: tuple[int, int, int, int], orientation: int = 1) -> bytes:
    """A grey JPEG of ``size`` as stored, with a ``MARKER`` rectangle (left, top, right, bottom,
    inclusive) in its stored pixels and the EXIF ``orientation`` given."""
    image = Image.new("RGB", size, (90, 90, 90))
    left, top, right, bottom = marker
    image.paste(MARKER, (left, top, right + 1, bottom + 1))
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def upload(client: Any, data: bytes | None = None, route: str = "/api/v1/classify?wait=0") -> Any:
    """POST an image (a tiny PNG unless given) to the portal under Flask's test client."""
    image = data if data is not None else tiny_png()
    return client.post(route, data={"image": (io.BytesIO(image), "a.png")}, content_type="multipart/form-data")


def write_fake_usr(folder: Path, *names: str, detectors: Sequence[str] = ()) -> Path:
    """A usr folder whose classification sections (and ``detectors``) name empty model files: a
    fake task never reads them, and ``/healthz`` finds them there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in {*(names or ("default",)), *detectors}:
        (folder / f"{name}.tflite").touch()
    sections = "".join(f"[{name}]\nGRAPH = {name}.tflite\n\n" for name in names or ("default",))
    (folder / f"{CLASSIFICATION}.config").write_text(sections, encoding="utf-8")
    if detectors:
        (folder / "labels.txt").write_text("unused\nmarker\nframe\n", encoding="utf-8")
        detection = "".join(
            f"[{name}]\nPATH_TO_CKPT = {name}.tflite\nPATH_TO_LABELS = labels.txt\n\n" for name in detectors
        )
        (folder / f"{DETECTION}.config").write_text(detection, encoding="utf-8")
    return folder
