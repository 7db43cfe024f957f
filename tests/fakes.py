"""A task that needs no model file, for driving the real Worker in-process (as rq tests its
workers with burst mode): every path through the worker without TensorFlow or test assets."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from scai.config import CLASSIFICATION, ModelSpec
from scai.tasks import Item

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


def upload(client: Any, data: bytes | None = None, route: str = "/api/v1/classify?wait=0") -> Any:
    """POST an image (a tiny PNG unless given) to the portal under Flask's test client."""
    image = data if data is not None else tiny_png()
    return client.post(route, data={"image": (io.BytesIO(image), "a.png")}, content_type="multipart/form-data")


def write_fake_usr(folder: Path, *names: str) -> Path:
    """A usr folder whose classification sections name model files that need not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    sections = "".join(f"[{name}]\nGRAPH = {name}.tflite\n\n" for name in names or ("default",))
    (folder / f"{CLASSIFICATION}.config").write_text(sections, encoding="utf-8")
    return folder
