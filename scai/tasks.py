"""What each job kind does with a loaded model: load it, run a batch, describe the result.

The worker knows sessions and claims but not models; engines know models but not sessions; a task
sits between them and turns an engine's output into the fields a session's ``process.json`` keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from scai import imaging
from scai.config import CLASSIFICATION, ModelSpec, Settings
from scai.engines import Prediction, load_classifier


class Task(Protocol):
    job: str

    def load(self, spec: ModelSpec) -> Any:
        """Load a model once; the result is passed back to ``run``."""

    def run(self, engine: Any, images: Sequence[Image.Image], folders: Sequence[Path]) -> list[dict[str, Any]]:
        """Result fields for each image of the batch (``folders`` is where to write files)."""


def format_percent(score: float) -> str:
    return f"{score * 100:.1f}%"


class ClassificationTask:
    job = CLASSIFICATION

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = top_k

    def load(self, spec: ModelSpec) -> Any:
        return load_classifier(spec)

    def run(self, engine: Any, images: Sequence[Image.Image], folders: Sequence[Path]) -> list[dict[str, Any]]:
        results = []
        for row in engine.predict(images):
            top = engine.top(row, self.top_k)
            results.append(
                {
                    # The original clients read {label: "97.3%"}; new ones read predictions.
                    "result": {p.label: format_percent(p.score) for p in top},
                    "predictions": [{"label": p.label, "score": round(p.score, 6)} for p in top],
                    "result_image": None,
                }
            )
        return results


def task_for(job: str, top_k: int = 5) -> Task:
    if job == CLASSIFICATION:
        return ClassificationTask(top_k)
    raise ValueError(f"no worker for job {job!r} yet")


def classify_file(spec: ModelSpec, path: Path, top_k: int) -> list[Prediction]:
    """One-shot classification of an image file, the successor of ``label_image.py``."""
    engine = load_classifier(spec)
    image = imaging.load_rgb(Path(path).read_bytes(), Settings().max_pixels)
    return engine.top(engine.predict([image])[0], top_k)
