"""The raw output layouts of today's detectors, whatever runs them (ONNX Runtime, TFLite): the YOLO
family, YOLOX and the DETR family (RT-DETR, RF-DETR, D-FINE's boxes and logits).

They give raw tensors of candidate boxes that the server must decode (and, but for DETR, thin
out) itself, and each family expects its own input preparation. Here (resizing with OpenCV's
bilinear filter, which these models were trained with, not Pillow's, which smooths as it shrinks):

* ``Preparation``: letterbox (into the top-left corner, as YOLOX trains, or centred, as
  Ultralytics exports) or stretch, the pad value, RGB or BGR, NCHW or NHWC, and the pixel values:
  (pixel x INPUT_SCALE - INPUT_MEAN) / INPUT_STD, so 0-255, 0-1 or a mean and deviation a
  channel; with defaults per layout and a config key for each;
* ``recognise``: the layout from the outputs' shapes where that is unambiguous, else a
  ``ConfigError`` naming the shapes found and the layouts that could fit (``LAYOUT`` settles it);
* the decoders: ``yolox`` (raw grid cells decoded by stride: centre = (cell + d) * stride,
  size = exp(log size) * stride, score = objectness x class score), ``yolo`` (boxes already
  decoded, centre and size in pixels or normalised: v5/v7 ``[N, 5+C]`` with objectness, v8/v9/v11
  ``[4+C, N]`` without it, either orientation) and ``detr`` (two outputs: a box a query, centre
  and size or corners (BOX_FORMAT), and its class logits or scores; DETR's own "no object" last
  class dropped; the best (query, class) pairs kept, with no suppression: the model has done it);
* class-wise non-maximum suppression, each round vectorised over the remaining boxes;
* boxes mapped back through the letterbox exactly, to the normalised (ymin, xmin, ymax, xmax) of
  the upright image that every SCAI detector answers in.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec
from scai.engines.base import Detections, Detector

LAYOUTS = ("yolox", "yolo", "detr")
#: The strides of the three detection heads both families use.
STRIDES = (8, 16, 32)
#: Candidates scoring below this are dropped before suppression (mAP is measured from 0.01 up).
SCORE_FLOOR = 0.01
LETTERBOXES = ("topleft", "center", "stretch")
BOX_FORMATS = ("cxcywh", "xyxy")


@dataclass(frozen=True)
class Preparation:
    """How a photo becomes the model's input tensor."""

    size: tuple[int, int]  # (height, width)
    letterbox: str  # one of LETTERBOXES
    pad: float
    bgr: bool
    nchw: bool
    scale: float  # each 0-255 pixel value is multiplied by this,
    mean: float | tuple[float, ...] = 0.0  # then this is taken off (a number, or one a channel, RGB)
    std: float | tuple[float, ...] = 1.0  # and the rest divided by this

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
        if self.scale != 1.0:
            pixels = pixels * np.float32(self.scale)
        if self.mean != 0.0 or self.std != 1.0:
            pixels = (pixels - np.float32(self.mean)) / np.float32(self.std)
        if self.bgr:
            pixels = pixels[..., ::-1]
        if self.nchw:
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None]), geometry


#: Each layout's preparation where the config says nothing: how its family trains and exports.
DEFAULTS = {
    "yolox": {"letterbox": "topleft", "pad": 114.0, "bgr": True, "scale": 1.0},
    "yolo": {"letterbox": "center", "pad": 114.0, "bgr": False, "scale": 1 / 255},
    "detr": {"letterbox": "stretch", "pad": 0.0, "bgr": False, "scale": 1 / 255},
}


DATA_FORMATS = ("nchw", "nhwc")


def is_nchw(input_shape: tuple[int, ...], data_format: str = "") -> bool:
    """Channels first: as DATA_FORMAT says, else as the shape shows ([1, 3, H, W], H and W not 3)."""
    if data_format:
        if data_format.lower() not in DATA_FORMATS:
            raise ConfigError(f"DATA_FORMAT must be nchw or nhwc, not {data_format!r}")
        return data_format.lower() == "nchw"
    return input_shape[1] == 3 and input_shape[-1] != 3


def input_size(input_shape: tuple[int, ...], data_format: str = "") -> tuple[int, int]:
    """(height, width) of an image input [1, 3, H, W] or [1, H, W, 3]."""
    if len(input_shape) != 4 or 3 not in (input_shape[1], input_shape[3]):
        raise ConfigError(f"an input of shape {list(input_shape)} is no image ([1, 3, H, W] or [1, H, W, 3])")
    return (
        (int(input_shape[2]), int(input_shape[3]))
        if is_nchw(input_shape, data_format)
        else (int(input_shape[1]), int(input_shape[2]))
    )


def preparation(spec: ModelSpec, layout: str, input_shape: tuple[int, ...]) -> Preparation:
    """The layout's defaults, overridden by LETTERBOX, PAD_VALUE, CHANNELS, INPUT_SCALE, INPUT_MEAN
    and INPUT_STD (the last two a number or one a channel, R, G, B), and DATA_FORMAT."""
    data_format = spec.options.get("data_format", "")
    nchw, size = is_nchw(input_shape, data_format), input_size(input_shape, data_format)
    options, default = spec.options, DEFAULTS[layout]
    letterbox = options.get("letterbox", default["letterbox"]).lower()
    channels = options.get("channels", "bgr" if default["bgr"] else "rgb").lower()
    if letterbox not in LETTERBOXES or channels not in ("rgb", "bgr"):
        raise ConfigError(
            f"model {spec.name!r}: LETTERBOX must be one of {', '.join(LETTERBOXES)} and CHANNELS rgb or bgr"
        )
    pad = _number(spec, "pad_value", default["pad"])
    scale = _number(spec, "input_scale", default["scale"])
    mean = 0.0 if spec.input_mean is None else spec.input_mean
    std = 1.0 if spec.input_std is None else spec.input_std
    return Preparation(size, letterbox, pad, channels == "bgr", nchw, scale, mean, std)


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


def recognise(shapes: list[tuple[int, ...]], size: tuple[int, int], classes: int | None, name: str) -> str:
    """The layout of outputs of ``shapes`` (batch first), from their number and dimensions and,
    where the labels are known, their number."""
    if len(shapes) == 2:
        if detr_outputs(shapes) is None:
            raise ConfigError(
                f"model {name!r}: its two outputs of shapes {[list(s) for s in shapes]} are not a DETR's "
                "boxes [1, N, 4] and class scores [1, N, C]"
            )
        return "detr"
    if len(shapes) != 1:
        raise ConfigError(
            f"model {name!r}: {len(shapes)} outputs of shapes {[list(s) for s in shapes]} fit no layout SCAI knows "
            "(an SSD's boxes, classes, scores and count; a YOLO's one output; a DETR's boxes and scores)"
        )
    shape = shapes[0]
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


def detr_outputs(shapes: list[tuple[int, ...]]) -> tuple[int, int] | None:
    """(the boxes' index, the scores' index) of two outputs [1, N, 4] and [1, N, C]; None if they are not."""
    if len(shapes) != 2 or any(len(shape) != 3 or shape[0] != 1 for shape in shapes) or shapes[0][1] != shapes[1][1]:
        return None
    fours = [i for i, shape in enumerate(shapes) if shape[2] == 4]
    if not fours:
        return None
    boxes = fours[0] if len(fours) == 1 else 0
    return boxes, 1 - boxes


def _rows_and_columns(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    """(candidates, values per candidate): the longer of the last two dimensions is the candidates."""
    if len(shape) != 3 or shape[0] != 1:
        raise ConfigError(
            f"model {name!r}: its output of shape {list(shape)} is no detection layout SCAI knows (an SSD's "
            "boxes, classes, scores and count, or the YOLO family's [1, N, 5+C] or [1, 4+C, N])"
        )
    return (shape[1], shape[2]) if shape[1] >= shape[2] else (shape[2], shape[1])


@functools.cache
def grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's (x, y) [N, 2] and stride [N, 1] at this input size, made once."""
    cells, strides = [], []
    for stride in STRIDES:
        ys, xs = np.meshgrid(np.arange(size[0] // stride), np.arange(size[1] // stride), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full(xs.size, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]


def decode_yolox(rows: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw grid cells [N, 5+C] -> boxes [M, 4] (x1, y1, x2, y2 in input pixels), scores [M, C] of
    the M cells whose objectness reaches SCORE_FLOOR: a score is objectness x a class score of at
    most 1, so the others cannot (most of a photo's cells; decoding them cost a third of the time)."""
    cell, stride = grid(size)
    candidates = np.flatnonzero(rows[:, 4] >= SCORE_FLOOR)
    rows, cell, stride = rows[candidates], cell[candidates], stride[candidates]
    centre = (rows[:, :2] + cell) * stride
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


def decode_detr(
    boxes: np.ndarray, logits: np.ndarray, size: tuple[int, int], box_format: str, classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A box a query [N, 4] and its class logits or scores [N, K] -> boxes (x1, y1, x2, y2 in input
    pixels), scores [N, C]. Logits become scores by softmax where there is one more class than
    labels (DETR's last, "no object", then dropped), else by sigmoid (RT-DETR, RF-DETR, D-FINE)."""
    if box_format == "cxcywh":
        boxes = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    finite = boxes[np.isfinite(boxes)]
    if finite.size and np.abs(finite).max() <= 2.0:  # normalised: to input pixels
        boxes = boxes * np.array([size[1], size[0], size[1], size[0]], dtype=np.float32)
    if classes is not None and logits.shape[1] == classes + 1:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return boxes, (shifted / shifted.sum(axis=1, keepdims=True))[:, :-1]
    if logits.size and (logits.min() < 0.0 or logits.max() > 1.0):
        return boxes, 1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0)))
    return boxes, logits


def best_pairs(scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, class) of the ``limit`` best scores at SCORE_FLOOR or more, best first: a query may
    name two classes, as DETR models are scored."""
    flat = np.where(np.isfinite(scores), scores, -1.0).ravel()
    wanted = np.flatnonzero(flat >= SCORE_FLOOR)
    order = wanted[np.argsort(-flat[wanted], kind="stable")[:limit]]
    return order // scores.shape[1], order % scores.shape[1]


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


class RawDetector(Detector):
    """A detector of raw outputs: prepare, ``infer`` (the engine's part), decode, thin out (by
    suppression, but for DETR), map back."""

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_shapes: list[tuple[int, ...]]) -> None:
        super().__init__(spec)
        self.classes = len(self._labels) if self._labels else None
        layout = spec.options.get("layout", "").lower()
        if layout and layout not in LAYOUTS:
            raise ConfigError(f"model {spec.name!r}: LAYOUT must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        size = input_size(input_shape, spec.options.get("data_format", ""))
        self.layout = layout or recognise(output_shapes, size, self.classes, spec.name)
        if self.layout == "detr":
            self._check_detr(output_shapes)
        else:
            self._check_grid(output_shapes, size)
        self.preparation = preparation(spec, self.layout, input_shape)
        self.input_size = self.preparation.size
        #: The whole photo is shrunk to fit inside the input (the worker drafts JPEGs to match).
        self.letterboxed = self.preparation.letterbox != "stretch"
        self.iou = _number(spec, "nms_iou", 0.45)
        self.limit = int(_number(spec, "max_detections", 100))

    def _check_grid(self, shapes: list[tuple[int, ...]], size: tuple[int, int]) -> None:
        if len(shapes) != 1:
            raise ConfigError(f"model {self.spec.name!r}: LAYOUT {self.layout} needs one output, not {len(shapes)}")
        rows, columns = _rows_and_columns(shapes[0], self.spec.name)
        self.objectness = self.layout == "yolox" or rows == 3 * grid_cells(size)
        if self.layout == "yolo" and self.classes is not None:
            self.objectness = self.objectness or columns == 5 + self.classes
        model_classes = columns - (5 if self.objectness else 4)
        if self.classes is not None and self.classes != model_classes:
            raise ConfigError(f"model {self.spec.name!r} has {model_classes} classes but {self.classes} labels")

    def _check_detr(self, shapes: list[tuple[int, ...]]) -> None:
        pair = detr_outputs(shapes)
        if pair is None:
            raise ConfigError(
                f"model {self.spec.name!r}: LAYOUT detr needs boxes [1, N, 4] and scores [1, N, C], not "
                f"{[list(s) for s in shapes]}"
            )
        self.box_index, self.score_index = pair
        self.box_format = self.spec.options.get("box_format", "cxcywh").lower()
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"model {self.spec.name!r}: BOX_FORMAT must be one of {', '.join(BOX_FORMATS)}")
        model_classes = shapes[self.score_index][2]
        if self.classes is not None and model_classes not in (self.classes, self.classes + 1):
            raise ConfigError(f"model {self.spec.name!r} has {model_classes} classes but {self.classes} labels")

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """The raw outputs for one prepared input tensor, batch first, in the model's order."""

    def detect_one(self, image: Image.Image) -> Detections:
        tensor, (left, top, x_scale, y_scale) = self.preparation.apply(image)
        outputs = [np.asarray(output, dtype=np.float32)[0] for output in self.infer(tensor)]
        if self.layout == "detr":
            boxes, scores = decode_detr(
                outputs[self.box_index], outputs[self.score_index], self.input_size, self.box_format, self.classes
            )
            sound = np.isfinite(boxes).all(axis=1)  # a model may emit NaN: never reported
            queries, best = best_pairs(np.where(sound[:, None], scores, np.nan), self.limit)
            boxes, score = boxes[queries], scores[queries, best]
        else:
            boxes, best, score = self._suppressed(outputs[0])
        x1, y1, x2, y2 = ((boxes - [left, top, left, top]) / [x_scale, y_scale, x_scale, y_scale]).T
        normalised = np.stack([y1 / image.height, x1 / image.width, y2 / image.height, x2 / image.width], axis=1)
        return Detections(normalised.clip(0.0, 1.0).astype(np.float32), best, score.astype(np.float32))

    def _suppressed(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A YOLO's or YOLOX's candidates decoded, their best class each, thinned class by class."""
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
        return boxes[kept], best[kept], score[kept]
