"""Faces with dlib: where they are (its HOG detector), and who (its ResNet embedding, aligned by the
5-point landmarks). All three are CC0; dlib's 68-point landmark model is never used (its training
data forbids commercial use).

The detector's cost grows with the pixels it scans (about 100 ms a megapixel on one core), and it
finds faces from about 80 pixels across, 40 when it first doubles the image. So it sees a photo at
most ``DETECTOR_PIXELS`` large, and doubles only photos of at most ``UPSAMPLE_BELOW`` pixels, where
faces are small: a 1080p frame is scanned at 1333x750 (faces from about 115 pixels of the frame),
a 500x375 group photo at twice its size. The embedding is computed on the photo as decoded, not on
the detector's copy.

Detection scores are the HOG detector's margins (above 0 a face by its own rule; on the test photos
real faces scored 0.22 to 2.6, the best non-face -0.24); a confidence is the logistic of twice the
margin, 0.5 at the detector's own boundary, so DeepStack's default 0.55 keeps every real face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec, Threads

DETECTOR_PIXELS = 1_000_000
UPSAMPLE_BELOW = 400_000
#: Confidence = 1 / (1 + exp(-MARGIN_SLOPE x margin)).
MARGIN_SLOPE = 2.0


@dataclass
class Face:
    box: tuple[float, float, float, float]  # normalised (ymin, xmin, ymax, xmax) of the upright photo
    confidence: float
    embedding: np.ndarray | None = None  # 128 floats where asked for


def margin_for(confidence: float) -> float:
    """The detector margin that gives ``confidence`` (the inverse of the logistic)."""
    confidence = min(max(confidence, 1e-6), 1 - 1e-6)
    return math.log(confidence / (1 - confidence)) / MARGIN_SLOPE


class FaceModel:
    """A section of ``face_recognition.config``: GRAPH the embedding network, LANDMARKS the 5-point
    shape predictor."""

    #: The worker decodes large JPEGs at reduced scale, still covering twice this as the photo
    #: fits inside it (``imaging.load_rgb``'s ``contain``).
    input_size = (1000, 1000)
    letterboxed = True

    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        try:
            import dlib
        except ImportError:
            raise ConfigError("face recognition needs dlib: pip install dlib-bin") from None
        landmarks = spec.options.get("landmarks")
        if not landmarks:
            raise ConfigError(f"face model {spec.name!r} names no LANDMARKS (the 5-point shape predictor)")
        landmarks_path = Path(landmarks)  # resolved as GRAPH is, when the section was read
        self.spec = spec
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.shapes = dlib.shape_predictor(str(landmarks_path))
            self.embedder = dlib.face_recognition_model_v1(str(spec.path))
        except RuntimeError as error:
            raise ConfigError(f"face model {spec.name!r} cannot be loaded: {str(error)[:200]}") from None
        parts = self.shapes(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
        if parts != 5:
            raise ConfigError(f"{landmarks_path.name} has {parts} landmarks: the 5-point model is needed")
        self._dlib = dlib

    def use_all_cores(self, lone: bool) -> None:
        """dlib's detector and embedding run on one core each."""

    def shrink(self, image: Image.Image) -> Image.Image:
        return image

    def find(self, image: Image.Image, min_confidence: float, embed: bool) -> list[Face]:
        """The faces of at least ``min_confidence``, the most confident first, with their
        embeddings if ``embed``."""
        pixels = np.asarray(image)
        small, upsample, scale = _for_detector(image)
        rects, margins, _ = self.detector.run(np.asarray(small), upsample, margin_for(min_confidence))
        found = []
        for rect, margin in sorted(zip(rects, margins, strict=True), key=lambda pair: -pair[1]):
            box = (rect.top() / scale, rect.left() / scale, rect.bottom() / scale, rect.right() / scale)
            found.append((box, 1 / (1 + math.exp(-MARGIN_SLOPE * margin))))
        embeddings: list[Any] = [None] * len(found)
        if embed and found:
            shapes = self._dlib.full_object_detections()
            for (top, left, bottom, right), _ in found:
                rect = self._dlib.rectangle(round(left), round(top), round(right), round(bottom))
                shapes.append(self.shapes(pixels, rect))
            embeddings = [np.array(e, dtype=np.float32) for e in self.embedder.compute_face_descriptor(pixels, shapes)]
        height, width = pixels.shape[:2]
        return [
            Face(_normalised(box, width, height), float(confidence), embedding)
            for (box, confidence), embedding in zip(found, embeddings, strict=True)
        ]


def _for_detector(image: Image.Image) -> tuple[Image.Image, int, float]:
    """The photo as the detector scans it, how often it is doubled first, and its scale."""
    area = image.width * image.height
    if area <= UPSAMPLE_BELOW:
        return image, 1, 1.0
    scale = min(1.0, math.sqrt(DETECTOR_PIXELS / area))
    if scale == 1.0:
        return image, 0, 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), 0, scale


def _normalised(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    top, left, bottom, right = box
    return (
        min(max(top / height, 0.0), 1.0),
        min(max(left / width, 0.0), 1.0),
        min(max(bottom / height, 0.0), 1.0),
        min(max(right / width, 0.0), 1.0),
    )


def load_face_model(spec: ModelSpec, threads: Threads | None = None) -> FaceModel:
    spec.check()
    if not spec.path.is_file():
        raise ConfigError(f"face model file {spec.path} does not exist (scai models pull face installs it)")
    return FaceModel(spec, threads)
