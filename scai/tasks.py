"""What each job kind does with a loaded model: load it, run a batch, describe the result.

The worker knows sessions and claims but not models; engines know models but not sessions; a task
sits between them and turns an engine's output into the fields a session's ``process.json`` keeps.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from object_detection.boxes import Box
from object_detection.drawing import Labelled, draw
from scai import imaging
from scai.config import CLASSIFICATION, DETECTION, FACES, ModelSpec, Settings, Threads
from scai.engines import Detector, Prediction, load_classifier, load_detector
from scai.errors import InvalidImage

RESULT_IMAGE = "output.png"


@dataclass
class Item:
    """One session's share of a batch: its image decoded for the model (a large JPEG at a reduced
    scale), request options, and the upload itself for work at full size."""

    image: Image.Image
    options: dict[str, Any] = field(default_factory=dict)
    source: bytes | Path | None = None

    def geometry(self, max_pixels: int) -> tuple[int, int, int]:
        """(width, height) of the upload itself, however much ``image`` was reduced, and the EXIF
        orientation that turned it upright."""
        return (*self.image.size, 1) if self.source is None else imaging.geometry(self.source, max_pixels)


class Task(Protocol):
    job: str

    def load(self, spec: ModelSpec) -> Any:
        """Load a model once; the result is passed back to ``run``."""

    def run(self, engine: Any, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        """The result fields of each item of the batch (files go into the item's folder); ``lone``:
        nothing else waits, the model may use every core."""


def format_percent(score: float) -> str:
    return f"{score * 100:.1f}%"


class ModelTask:
    """What both job kinds share: the settings, and the thread plan their models load with."""

    job: str
    loader: Callable[[ModelSpec, Threads | None], Any]

    def __init__(self, settings: Settings, threads: Threads | None = None) -> None:
        self.settings = settings
        self.threads = threads

    def load(self, spec: ModelSpec) -> Any:
        return type(self).loader(spec, self.threads)


class ClassificationTask(ModelTask):
    job = CLASSIFICATION
    loader = load_classifier

    def run(self, engine: Any, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        engine.use_all_cores(lone)
        results = []
        for row in engine.predict([item.image for item in items]):
            top = engine.top(row, self.settings.top_k)
            results.append(
                {
                    # The original clients read {label: "97.3%"}; new ones read predictions.
                    "result": {p.label: format_percent(p.score) for p in top},
                    "predictions": [{"label": p.label, "score": round(p.score, 6)} for p in top],
                    "result_image": None,
                }
            )
        return results


def select(engine: Detector, raw: Any, min_score: float) -> list[Labelled]:
    """Detections worth reporting: score >= ``min_score``, best first, inside the image, at most
    ``max_boxes_to_draw`` of them."""
    chosen = []
    for index in sorted(range(len(raw.scores)), key=lambda i: -float(raw.scores[i])):
        score = float(raw.scores[index])
        if score < min_score or len(chosen) >= engine.max_boxes:
            break
        box = Box.from_yxyx(raw.boxes[index]).clipped()
        if not box.empty:
            class_id = int(raw.classes[index])
            chosen.append(Labelled(box, class_id, engine.label(class_id), score))
    return chosen


def detection_fields(
    chosen: Sequence[Labelled], width: int, height: int, line_thickness: int = 4, orientation: int = 1
) -> dict[str, Any]:
    best: dict[str, float] = {}
    for item in chosen:
        best.setdefault(item.label, item.score)
    return {
        "result": {label: format_percent(score) for label, score in best.items()},
        "detections": [
            {
                "label": item.label,
                "class_id": item.class_id,
                "score": round(item.score, 6),
                "box": item.box.pixels(width, height),
                "box_normalized": item.box.normalized(),
            }
            for item in chosen
        ],
        "image_size": {"width": width, "height": height},
        "result_image": RESULT_IMAGE,
        "line_thickness": line_thickness,  # kept for drawing the image when it is asked for
        "orientation": orientation,  # the EXIF orientation applied: DeepStack boxes undo it
    }


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # fast; the PNG is served once or twice
    return buffer.getvalue()


class DetectionTask(ModelTask):
    job = DETECTION
    loader = load_detector

    def run(self, engine: Detector, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        """Boxes only: they are normalised, so the model may see a reduced image. The annotated
        image is drawn on the upload at its own size when a client first asks for it
        (``annotated_png``): encoding a PNG costs 20 ms for a small photo and half a second for a
        12-megapixel one, and most API clients never fetch it."""
        engine.use_all_cores(lone)
        results = []
        for item, raw in zip(items, engine.detect([item.image for item in items]), strict=True):
            chosen = select(engine, raw, float(item.options.get("min_score", engine.min_score)))
            width, height, turn = item.geometry(self.settings.max_pixels)
            results.append(detection_fields(chosen, width, height, engine.line_thickness, turn))
        return results


def annotate(engine: Detector, image: Image.Image, raw: Any, min_score: float) -> tuple[dict[str, Any], bytes]:
    """The result fields of one image's raw detections, and its annotated PNG."""
    chosen = select(engine, raw, min_score)
    return detection_fields(chosen, *image.size, engine.line_thickness), png_bytes(
        draw(image, chosen, engine.line_thickness)
    )


#: The annotated image's longest side: uploads up to this size (a 12 MP camera photo is 4032
#: wide) are drawn on at their own size, larger ones scaled down to it. A tiny file declaring
#: 7000x7000 pixels would otherwise cost the portal a 49 MP PNG to encode.
MAX_ANNOTATED_SIDE = 4096


def annotated_png(state: dict[str, Any], source: bytes | Path, max_pixels: int) -> bytes:
    """A complete detection session's annotated image: its boxes drawn on the upload."""
    size = state.get("image_size") or {}
    draft_for = (MAX_ANNOTATED_SIDE // imaging.DRAFT_MARGIN,) * 2  # a JPEG drafted no smaller than the cap
    image = imaging.load_rgb(source, max_pixels, draft_for)
    image.thumbnail((MAX_ANNOTATED_SIDE, MAX_ANNOTATED_SIDE), Image.BILINEAR)
    width, height = (max(2, side) - 1 for side in (size.get("width", 0), size.get("height", 0)))

    def box(pixels: dict[str, int]) -> Box:  # exactly the pixel box the JSON reports
        return Box(pixels["xmin"] / width, pixels["ymin"] / height, pixels["xmax"] / width, pixels["ymax"] / height)

    chosen = [Labelled(box(d["box"]), d["class_id"], d["label"], d["score"]) for d in state["detections"]]
    return png_bytes(draw(image, chosen, int(state.get("line_thickness", 4))))


def _load_face_model(spec: ModelSpec, threads: Threads | None = None) -> Any:
    from scai.engines.faces import load_face_model  # dlib, only in a face worker

    return load_face_model(spec, threads)


class FaceTask(ModelTask):
    """The faces of each photo: normalised boxes and confidences, and with ``embed`` (recognize,
    register, match) each face's embedding. Who they are is the portal's to say (``facedb``):
    a worker never reads or writes the face database."""

    job = FACES
    loader = _load_face_model

    def run(self, engine: Any, items: Sequence[Item], lone: bool = False) -> list[dict[str, Any]]:
        results = []
        for item in items:
            faces = engine.find(
                item.image, float(item.options.get("min_confidence", 0.5)), bool(item.options.get("embed"))
            )
            width, height, turn = item.geometry(self.settings.max_pixels)
            results.append(
                {
                    "faces": [
                        {
                            "confidence": round(face.confidence, 6),
                            "box_normalized": Box.from_yxyx(face.box).normalized(),
                            **(
                                {"embedding": [round(float(v), 7) for v in face.embedding]}
                                if face.embedding is not None
                                else {}
                            ),
                        }
                        for face in faces
                    ],
                    "image_size": {"width": width, "height": height},
                    "orientation": turn,
                    "result_image": None,
                }
            )
        return results


TASKS = {CLASSIFICATION: ClassificationTask, DETECTION: DetectionTask, FACES: FaceTask}


def task_for(job: str, settings: Settings, threads: Threads | None = None) -> Task:
    return TASKS[job](settings, threads)


def _image_file(path: Path, max_pixels: int) -> Image.Image:
    """An image named on the command line; an error names the file."""
    try:
        return imaging.load_rgb(Path(path).read_bytes(), max_pixels)
    except InvalidImage as error:
        raise type(error)(f"{path}: {error.message}") from None


def classify_file(spec: ModelSpec, path: Path, top_k: int, max_pixels: int) -> list[Prediction]:
    """One-shot classification of an image file, the successor of ``label_image.py``."""
    engine = load_classifier(spec)
    image = _image_file(path, max_pixels)
    return engine.top(engine.predict([image])[0], top_k)


def detect_file(spec: ModelSpec, path: Path, output: Path | None, max_pixels: int) -> dict[str, Any]:
    """One-shot detection: the result fields, and the annotated PNG written to ``output``."""
    engine = load_detector(spec)
    image = _image_file(path, max_pixels)
    fields, png = annotate(engine, image, engine.detect_one(image), engine.min_score)
    if output:
        Path(output).write_bytes(png)
    return fields
