"""Detectors of today's kind, the YOLO family and YOLOX, whatever runs them (ONNX Runtime, TFLite).

They all give one raw tensor of candidate boxes that the server must decode and thin out itself,
and each family expects its own input preparation. Here (resizing with OpenCV's bilinear filter, which
these models were trained with, not Pillow's, which smooths as it shrinks):

* ``Preparation``: letterbox (into the top-left corner, as YOLOX trains, or centred, as
  Ultralytics exports) or stretch, the pad value, RGB or BGR, NCHW or NHWC, and the pixel scale
  (0-255 or 0-1), with defaults per layout and a config key for each;
* ``recognise``: the layout from the output's shape where that is unambiguous, else a
  ``ConfigError`` naming the shapes found and the layouts that could fit (``LAYOUT`` settles it);
* the decoders: ``yolox`` (raw grid cells decoded by stride: centre = (cell + d) * stride,
  size = exp(log size) * stride, score = objectness x class score) and ``yolo`` (boxes already
  decoded, centre and size in pixels or normalised: v5/v7 ``[N, 5+C]`` with objectness, v8/v9/v11
  ``[4+C, N]`` without it, either orientation);
* class-wise non-maximum suppression, each round vectorised over the remaining boxes;
* boxes mapped back through the letterbox exactly, to the normalised (ymin, xmin, ymax, xmax) of
  the upright image that every SCAI detector answers in.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec
from scai.engines.base import Detections, Detector

LAYOUTS = ("yolox", "yolo")
#: The strides of the three detection heads both families use.
STRIDES = (8, 16, 32)
#: Candidates scoring below this are dropped before suppression (mAP is measured from 0.01 up).
SCORE_FLOOR = 0.01
LETTERBOXES = ("topleft", "center", "stretch")


@dataclass(frozen=True)
class Preparation:
    """How a photo becomes the model's input tensor."""

    size: tuple[int, int]  # (height, width)
    letterbox: str  # one of LETTERBOXES
    pad: float
    bgr: bool
    nchw: bool
    scale: float  # each 0-255 pixel value is multiplied by this

    def apply(self, image: Image.Image) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The input tensor [1, ...] and the geometry that maps its pixels back to the image:
        (x offset, y offset, x scale, y scale), input pixel = image pixel * scale + offset."""
        import cv2  # here, not at the top: a classification worker imports this module too (17 MB)

        height, width = self.size
        photo = np.asarray(image)
        if self.letterbox == "stretch":
            pixels = cv2.resize(photo, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            geometry = (0.0, 0.0, width / image.width, height / image.height)
        else:
            ratio = min(width / image.width, height / image.height)
            inner = (max(1, int(image.width * ratio)), max(1, int(image.height * ratio)))
            left, top = (0, 0) if self.letterbox == "topleft" else ((width - inner[0]) // 2, (height - inner[1]) // 2)
            pixels = np.full((height, width, 3), self.pad, dtype=np.float32)
            pixels[top : top + inner[1], left : left + inner[0]] = cv2.resize(
                photo, inner, interpolation=cv2.INTER_LINEAR
            )
            geometry = (float(left), float(top), inner[0] / image.width, inner[1] / image.height)
        if self.bgr:
            pixels = pixels[..., ::-1]
        if self.scale != 1.0:
            pixels = pixels * np.float32(self.scale)
        if self.nchw:
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None]), geometry


#: Each layout's preparation where the config says nothing: how its family trains and exports.
DEFAULTS = {
    "yolox": {"letterbox": "topleft", "pad": 114.0, "bgr": True, "scale": 1.0},
    "yolo": {"letterbox": "center", "pad": 114.0, "bgr": False, "scale": 1 / 255},
}


def is_nchw(input_shape: tuple[int, ...]) -> bool:
    return input_shape[1] == 3 and input_shape[-1] != 3


def input_size(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of an image input [1, 3, H, W] or [1, H, W, 3]."""
    if len(input_shape) != 4 or 3 not in (input_shape[1], input_shape[3]):
        raise ConfigError(f"an input of shape {list(input_shape)} is no image ([1, 3, H, W] or [1, H, W, 3])")
    return (
        (int(input_shape[2]), int(input_shape[3]))
        if is_nchw(input_shape)
        else (int(input_shape[1]), int(input_shape[2]))
    )


def preparation(spec: ModelSpec, layout: str, input_shape: tuple[int, ...]) -> Preparation:
    """The layout's defaults, overridden by LETTERBOX, PAD_VALUE, CHANNELS and INPUT_SCALE."""
    nchw, size = is_nchw(input_shape), input_size(input_shape)
    options, default = spec.options, DEFAULTS[layout]
    letterbox = options.get("letterbox", default["letterbox"]).lower()
    channels = options.get("channels", "bgr" if default["bgr"] else "rgb").lower()
    if letterbox not in LETTERBOXES or channels not in ("rgb", "bgr"):
        raise ConfigError(
            f"model {spec.name!r}: LETTERBOX must be one of {', '.join(LETTERBOXES)} and CHANNELS rgb or bgr"
        )
    pad = _number(spec, "pad_value", default["pad"])
    scale = _number(spec, "input_scale", default["scale"])
    return Preparation(size, letterbox, pad, channels == "bgr", nchw, scale)


def _number(spec: ModelSpec, key: str, default: float) -> float:
    value = spec.options.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"model {spec.name!r}: {key.upper()} must be a number, not {value!r}") from None


def grid_cells(size: tuple[int, int]) -> int:
    """Candidates one anchor-free grid gives at this input size (3,549 at 416x416)."""
    return sum((size[0] // stride) * (size[1] // stride) for stride in STRIDES)


def recognise(shape: tuple[int, ...], size: tuple[int, int], classes: int | None, name: str) -> str:
    """The layout of one output of ``shape`` (batch first), from its dimensions and, where the
    labels are known, their number."""
    rows, columns = _rows_and_columns(shape, name)
    cells = grid_cells(size)
    fits = []
    # three anchors a cell (a v5/v7 export, decoded already), or one a cell channels first (v8 on)
    if rows == 3 * cells or (rows == cells and shape[-2] < shape[-1]):
        fits.append("yolo")
    elif rows == cells:  # one a cell, row by row: YOLOX's raw cells, or a transposed v8
        fits += [name for name, extra in (("yolox", 5), ("yolo", 4)) if classes is None or columns == extra + classes]
    if len(fits) == 1:
        return fits[0]
    found = f"an output of shape {list(shape)} for an input of {size[0]}x{size[1]}"
    if classes is not None:
        found += f" and {classes} labels"
    could = ", ".join(fits) if fits else "none of " + ", ".join(LAYOUTS)
    raise ConfigError(f"model {name!r}: cannot tell its layout from {found} (could be: {could}); set LAYOUT")


def _rows_and_columns(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    """(candidates, values per candidate): the longer of the last two dimensions is the candidates."""
    if len(shape) != 3 or shape[0] != 1:
        raise ConfigError(
            f"model {name!r}: its output of shape {list(shape)} is no detection layout SCAI knows (an SSD's "
            "boxes, classes, scores and count, or the YOLO family's [1, N, 5+C] or [1, 4+C, N])"
        )
    return (shape[1], shape[2]) if shape[1] >= shape[2] else (shape[2], shape[1])


def decode_yolox(rows: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw grid cells [N, 5+C] -> boxes [N, 4] (x1, y1, x2, y2 in input pixels), scores [N, C]."""
    grids, strides = [], []
    for stride in STRIDES:
        ys, xs = np.meshgrid(np.arange(size[0] // stride), np.arange(size[1] // stride), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full(xs.size, stride))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]
    centre = (rows[:, :2] + grid) * stride
    extent = np.exp(np.minimum(rows[:, 2:4], 20.0)) * stride  # a wild logit must not overflow
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
    return boxes, rows[:, 4:5] * rows[:, 5:]


def decode_yolo(rows: np.ndarray, size: tuple[int, int], objectness: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decoded candidates [N, 4+C] or [N, 5+C] (with objectness) -> boxes, scores [N, C]."""
    centre, extent = rows[:, :2], rows[:, 2:4]
    boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
    if boxes.size and np.abs(boxes).max() <= 2.0:  # normalised: to input pixels
        boxes = boxes * np.array([size[1], size[0], size[1], size[0]], dtype=np.float32)
    scores = rows[:, 5:] * rows[:, 4:5] if objectness else rows[:, 4:]
    return boxes, scores


def suppress(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indexes kept by class-wise non-maximum suppression, best first: boxes of different classes
    never suppress each other (each class is shifted to a region of its own)."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    shifted = boxes + (classes.astype(np.float32) * (float(np.abs(boxes).max()) + 1.0))[:, None]
    areas = (shifted[:, 2] - shifted[:, 0]).clip(0) * (shifted[:, 3] - shifted[:, 1]).clip(0)
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(best)
        low = np.maximum(shifted[best, :2], shifted[rest, :2])
        high = np.minimum(shifted[best, 2:], shifted[rest, 2:])
        overlap = (high - low).clip(0).prod(axis=1)
        order = rest[overlap <= iou * (areas[best] + areas[rest] - overlap)]
    return np.array(keep, dtype=np.int64)


class GridDetector(Detector):
    """A YOLO-family detector: prepare, ``infer`` (the engine's part), decode, suppress, map back."""

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
        super().__init__(spec)
        self.classes = len(self._labels) if self._labels else None
        layout = spec.options.get("layout", "").lower()
        if layout and layout not in LAYOUTS:
            raise ConfigError(f"model {spec.name!r}: LAYOUT must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.layout = layout or recognise(output_shape, input_size(input_shape), self.classes, spec.name)
        rows, columns = _rows_and_columns(output_shape, spec.name)
        self.objectness = self.layout == "yolox" or rows == 3 * grid_cells(input_size(input_shape))
        if self.layout == "yolo" and self.classes is not None:
            self.objectness = self.objectness or columns == 5 + self.classes
        model_classes = columns - (5 if self.objectness else 4)
        if self.classes is not None and self.classes != model_classes:
            raise ConfigError(f"model {spec.name!r} has {model_classes} classes but {self.classes} labels")
        self.preparation = preparation(spec, self.layout, input_shape)
        self.input_size = self.preparation.size
        self.iou = _number(spec, "nms_iou", 0.45)
        self.limit = int(_number(spec, "max_detections", 100))

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """The raw output for one prepared input tensor, batch first."""

    def detect_one(self, image: Image.Image) -> Detections:
        tensor, (left, top, x_scale, y_scale) = self.preparation.apply(image)
        output = np.asarray(self.infer(tensor), dtype=np.float32)[0]
        rows = output.T if output.shape[0] < output.shape[1] else output
        if self.layout == "yolox":
            boxes, scores = decode_yolox(rows, self.input_size)
        else:
            boxes, scores = decode_yolo(rows, self.input_size, self.objectness)
        best = scores.argmax(axis=1)
        score = scores[np.arange(len(best)), best]
        sound = np.isfinite(score) & np.isfinite(boxes).all(axis=1)  # a model may emit NaN: never reported
        wanted = np.flatnonzero(sound & (score >= SCORE_FLOOR))
        kept = wanted[suppress(boxes[wanted], score[wanted], best[wanted], self.iou, self.limit)]
        x1, y1, x2, y2 = ((boxes[kept] - [left, top, left, top]) / [x_scale, y_scale, x_scale, y_scale]).T
        normalised = np.stack([y1 / image.height, x1 / image.width, y2 / image.height, x2 / image.width], axis=1)
        return Detections(normalised.clip(0.0, 1.0).astype(np.float32), best[kept], score[kept].astype(np.float32))
