"""What every classification engine answers, whatever file format its model came in.

An engine loads its model once; ``predict`` takes a batch of RGB images and returns one row of
class probabilities per image. Formats differ only in how they run a batch of pixels
(``run``); resizing, normalisation, softmax and label alignment are the same for all and live here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scai.config import RESIZE_CHOICES, ConfigError, ModelSpec


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


def read_labels(path: Path) -> list[str]:
    """One label per line; trailing blank lines dropped, inner ones kept so indexes stay right."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def to_probabilities(raw: np.ndarray, activation: str = "auto") -> np.ndarray:
    """Scores as probabilities: ``softmax`` always, ``none`` never, ``auto`` when they are logits.

    Logits show themselves by leaving [0, 1] or by rows summing to well over one. A sum below
    one is left alone: quantised softmax outputs lose mass to rounding.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if activation == "softmax":
        return softmax(raw)
    if activation == "none":
        return raw
    if raw.min() < 0 or raw.max() > 1 or np.any(raw.sum(axis=-1) > 1.1):
        return softmax(raw)
    return raw


def resized(image: Image.Image, input_size: tuple[int, int]) -> Image.Image:
    """The whole image resized bilinearly to a model's (height, width), no crop: the one resize
    every engine and the reference predictions use."""
    height, width = input_size
    return image.resize((width, height), Image.BILINEAR)


def tensorflow_resized(image: Image.Image, input_size: tuple[int, int]) -> Image.Image:
    """The image resized as TensorFlow 1's ``ResizeBilinear`` does (no antialiasing, no half-pixel
    centres), which Object Detection API graphs run inside themselves: a model converted from one
    (``scai models convert``) finds what the graph found only when fed this. Pillow's bilinear
    filter, which smooths as it shrinks, moved detection scores by up to 0.79 on the test photos.
    Only the pixels sampled are read, whatever the image's size."""
    height, width = input_size
    if (image.height, image.width) == (height, width):
        return image
    pixels = np.asarray(image)
    rows, row_weight = _samples(image.height, height)
    columns, column_weight = _samples(image.width, width)
    top, bottom = pixels[rows[0]].astype(np.float32), pixels[rows[1]].astype(np.float32)
    vertical = top + (bottom - top) * row_weight[:, None, None]
    left, right = vertical[:, columns[0]], vertical[:, columns[1]]
    blended = left + (right - left) * column_weight[None, :, None]
    return Image.fromarray(np.round(blended).clip(0, 255).astype(np.uint8))


def _samples(source: int, target: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """For each target pixel: the two source pixels it lies between, and its weight on the second."""
    position = np.arange(target, dtype=np.float32) * np.float32(source / target)
    first = np.floor(position).astype(np.int64)
    return (first, np.minimum(first + 1, source - 1)), position - first


#: How a detector's input is resized (the RESIZE key): Pillow's bilinear filter, or TensorFlow 1's.
RESIZES = dict(zip(RESIZE_CHOICES, (resized, tensorflow_resized), strict=True))


def normalise(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (pixels.astype(np.float32) - mean) / std


class Classifier(ABC):
    """A loaded classification model."""

    #: (height, width) the model takes; set by each engine from the model or the config.
    input_size: tuple[int, int]
    #: Whether a batch of images runs faster in one call than one by one (then a worker claims
    #: up to ``batch_size`` sessions at once); engines that know set it.
    batches = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.mean, self.std = spec.mean, spec.std
        self.activation = spec.options.get("output_activation", "auto").lower()
        self._labels = read_labels(spec.labels) if spec.labels else None
        self._aligned: list[str] | None = None

    @abstractmethod
    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Raw model outputs [N, classes] for uint8 pixels [N, H, W, 3]."""

    def use_all_cores(self, lone: bool) -> None:  # noqa: B027 - formats without threads ignore it
        """Run the next batch on every core (nothing else waits) or on this worker's share."""

    def shrink(self, image: Image.Image) -> Image.Image:
        """The image as ``prepare`` will resize it, right after decoding: a worker then holds at
        most one full-size image at a time, however large the batch. (``prepare`` resizing an
        image already at the input size copies it unchanged.)"""
        return resized(image, self.input_size)

    def embedded_labels(self) -> list[str] | None:
        """Labels the model file carries itself, for formats that can."""
        return None

    def labels(self, classes: int) -> list[str]:
        """Labels lined up with the output: a list with a leading background entry is shifted.
        Worked out once per model (a .tflite's own labels are read from its zip archive)."""
        if self._aligned is None or len(self._aligned) != classes:
            self._aligned = self._align(classes)
        return self._aligned

    def _align(self, classes: int) -> list[str]:
        labels = self._labels or self.embedded_labels()
        if not labels:
            return [f"class {i}" for i in range(classes)]
        if len(labels) == classes + 1:
            labels = labels[1:]
        if len(labels) != classes:
            raise ConfigError(f"model {self.spec.name!r} has {classes} outputs but {len(labels)} labels")
        return labels

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resize each whole image bilinearly to the input size (no crop), as uint8 [N, H, W, 3]."""
        size = self.input_size[::-1]  # a worker's images come shrunk already: no copy to make
        pixels = [np.asarray(image if image.size == size else resized(image, self.input_size)) for image in images]
        return pixels[0][None] if len(pixels) == 1 else np.stack(pixels)

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities [N, classes] for a batch of RGB images."""
        raw = self.run(self.prepare(images))
        return to_probabilities(raw.reshape(len(images), -1), self.activation)

    def top(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        """The ``k`` most likely labels of one row, most likely first.

        Classes scored zero are left out: with quantised outputs many tie at zero, and listing the
        first of them ("tench 0.0%") says nothing.
        """
        names = self.labels(probabilities.shape[-1])
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [Prediction(names[i], float(probabilities[i])) for i in order if probabilities[i] > 0]

    def resolve_input_size(self, size: Sequence[int | None] | None) -> tuple[int, int]:
        """The model's own input size, else INPUT_SIZE from the config, else a clear error."""
        if size and size[0] and size[1]:
            return int(size[0]), int(size[1])
        if self.spec.input_size:
            return self.spec.input_size
        raise ConfigError(f"model {self.spec.name!r} does not declare its input size: set INPUT_SIZE in its section")


@dataclass
class Detections:
    """One image's raw detections, as the model gives them, best first or not."""

    boxes: np.ndarray  # [N, 4] normalised (ymin, xmin, ymax, xmax)
    classes: np.ndarray  # [N] int, in the model's own convention (see Detector.first_class_id)
    scores: np.ndarray  # [N] float


class Detector(ABC):
    """A loaded detection model.

    Class ids stay in the model's own convention: TFLite SSD models count from 0 (the line index in
    their label file), Object Detection API models from 1 (the label map id). ``first_class_id``
    says which, per layout, and FIRST_CLASS_ID in the config overrides it; it tells which id the
    first line of a plain-text label file gets (a ``.pbtxt`` names its ids itself).
    """

    first_class_id = 0

    def __init__(self, spec: ModelSpec) -> None:
        from object_detection import label_map

        self.spec = spec
        options = spec.options
        if options.get("first_class_id"):
            self.first_class_id = int(options["first_class_id"])
        self.min_score = float(options.get("min_score_thresh", 0.5))
        self.max_boxes = int(options.get("max_boxes_to_draw", 20))
        self.line_thickness = int(options.get("line_thickness", 4))
        self._labels = label_map.load(spec.labels, self.first_class_id) if spec.labels else {}

    def use_all_cores(self, lone: bool) -> None:  # noqa: B027 - formats without threads ignore it
        """Run the next batch on every core (nothing else waits) or on this worker's share."""

    def shrink(self, image: Image.Image) -> Image.Image:
        """The image at the size the model will see it, where the model says (see Classifier)."""
        return image

    @abstractmethod
    def detect_one(self, image: Image.Image) -> Detections:
        """Raw detections for one RGB image."""

    def detect(self, images: Sequence[Image.Image]) -> list[Detections]:
        return [self.detect_one(image) for image in images]

    def label(self, class_id: int) -> str:
        return self._labels.get(class_id, f"class {class_id}")
