"""TFLite models, float or quantised, through the LiteRT interpreter.

LiteRT (``ai-edge-litert``) is small and starts fast, so a worker serving only TFLite models never
imports full TensorFlow; ``tf.lite`` is the fallback where LiteRT is not installed.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec, Threads
from scai.engines.base import RESIZES, Classifier, Detections, Detector, normalise
from scai.engines.layouts import RawDetector


def make_interpreter(path: Path | bytes, threads: int | None = None, batch: int | None = None) -> Any:
    """A ready interpreter for a model file, or a model's bytes (tensors allocated); with
    ``batch``, its first input takes that many images (raises RuntimeError where it cannot)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on what is installed
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    source = {"model_content": path} if isinstance(path, bytes) else {"model_path": str(path)}
    interpreter = Interpreter(**source, num_threads=threads)
    if batch is not None:
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
    interpreter.allocate_tensors()
    return interpreter


#: Images per call when a model runs batches; where that is not faster, one at a time.
BATCH = 4


def batch_interpreter(path: Path, threads: int | None, single: Any) -> Any | None:
    """An interpreter running ``BATCH`` images in one call, if the model accepts a batch and that
    is faster per image than ``single`` (measured once, at load); else None. Of the models we
    know, the quantised ones refuse (XNNPACK cannot resize them) and the float MobileNetV1 runs a
    batch no faster than one image at a time."""
    try:
        batch = make_interpreter(path, threads, BATCH)
        return batch if _seconds(batch) < 0.9 * BATCH * _seconds(single) else None
    except (RuntimeError, ValueError):
        return None


def _seconds(interpreter: Any, rounds: int = 3) -> float:
    """The fastest of a few invokes on zeros (the first, which sets up the kernels, not counted)."""
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return min(times)


def threads_for(spec: ModelSpec, threads: Threads | None = None) -> Threads | None:
    """NUM_THREADS in the model's section wins over the worker's plan (None: LiteRT's default)."""
    value = spec.options.get("num_threads")
    return Threads(int(value), int(value)) if value else threads


class Interpreters:
    """One model's interpreter, twice where the thread plan differs: ``busy`` threads while other
    sessions wait (sibling workers use the other cores), ``lone`` threads for a request alone.
    Oversubscribing the cores instead costs about 10% of throughput under load (measured with
    two processes of two threads each on two cores); one thread each leaves a lone request slow.
    """

    def __init__(self, path: Path, threads: Threads | None) -> None:
        self.busy = make_interpreter(path, threads.busy if threads else None)
        same = threads is None or threads.lone == threads.busy
        self.lone = self.busy if same else make_interpreter(path, threads.lone)
        self.current = self.busy

    def use_all_cores(self, lone: bool) -> None:
        self.current = self.lone if lone else self.busy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)


def embedded_text_files(path: Path) -> dict[str, list[str]]:
    """Files packed into a .tflite by TFLite metadata (the file is also a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                name: archive.read(name).decode("utf-8").splitlines()
                for name in archive.namelist()
                if name.endswith(".txt")
            }
    except zipfile.BadZipFile:
        return {}


def quantize(real: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(real / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale:
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def input_values(pixels: np.ndarray, detail: dict[str, Any], mean: float, std: float, explicit: bool) -> np.ndarray:
    """uint8 pixels in the input tensor's own type.

    Quantised image models take raw pixels (uint8) or pixels - 128 (int8) by convention, which is
    what their quantisation parameters encode; an explicit INPUT_MEAN/INPUT_STD in the config
    (``explicit``) instead normalises first and quantises the result.
    """
    dtype = detail["dtype"]
    if dtype == np.float32:
        return normalise(pixels, mean, std)
    scale, zero_point = detail["quantization"]
    if explicit and scale:
        return quantize(normalise(pixels, mean, std), scale, zero_point, dtype)
    if dtype == np.uint8:
        return pixels
    if dtype == np.int8:
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unsupported TFLite input type {np.dtype(dtype).name}")


class TFLiteClassifier(Classifier):
    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        super().__init__(spec)
        plan = threads_for(spec, threads)
        self.interpreter = Interpreters(spec.path, plan)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_size = self.resolve_input_size(tuple(self.input["shape"][1:3]))
        self.batch = batch_interpreter(spec.path, plan.busy if plan else None, self.interpreter.busy)
        self.batches = self.batch is not None

    def use_all_cores(self, lone: bool) -> None:
        self.interpreter.use_all_cores(lone)

    def embedded_labels(self) -> list[str] | None:
        files = embedded_text_files(self.spec.path)
        return next(iter(files.values()), None)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Full batches through the batch interpreter where there is one, the rest one by one."""
        rows = []
        start = 0
        while start < len(pixels):
            size = BATCH if self.batch is not None and len(pixels) - start >= BATCH else 1
            interpreter = self.batch if size > 1 else self.interpreter
            chunk = pixels[start : start + size]
            values = input_values(chunk, self.input, self.mean, self.std, self.spec.explicit_normalisation)
            interpreter.set_tensor(self.input["index"], values)
            interpreter.invoke()
            rows.append(dequantize(interpreter.get_tensor(self.output["index"]), self.output).reshape(size, -1))
            start += size
        return np.concatenate(rows)


class TFLiteSSDDetector(Detector):
    """An SSD with the ``TFLite_Detection_PostProcess`` op: boxes, classes, scores, count. RESIZE
    (``engines.base.RESIZES``) says how the image is brought to its input size."""

    first_class_id = 0
    ROLES = ("boxes", "classes", "scores", "count")

    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        super().__init__(spec)
        self.interpreter = Interpreters(spec.path, threads_for(spec, threads))
        self.input = self.interpreter.get_input_details()[0]
        self.input_size = tuple(int(v) for v in self.input["shape"][1:3])
        self.outputs = self._outputs_by_role(self.interpreter.get_output_details())
        self.resize = RESIZES[spec.options.get("resize", "bilinear").lower()]

    def _outputs_by_role(self, details: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The post-processing op's outputs are ``NAME``, ``NAME:1``, ``NAME:2``, ``NAME:3`` in
        the order of ROLES; a model without them is refused at load, naming what is missing."""
        by_name = {d["name"]: d for d in details}
        base = next((d["name"] for d in details if len(d["shape"]) == 3 and d["shape"][-1] == 4), None)
        if base is None:
            raise ConfigError(f"model {self.spec.name!r} has no boxes output [1, N, 4]: not a TFLite SSD")
        base = base.split(":")[0]
        roles = {}
        for index, role in enumerate(self.ROLES):
            name = base if index == 0 else f"{base}:{index}"
            if name not in by_name:
                raise ConfigError(f"model {self.spec.name!r} has no {role} output {name!r}")
            roles[role] = by_name[name]
        return roles

    def use_all_cores(self, lone: bool) -> None:
        self.interpreter.use_all_cores(lone)

    def shrink(self, image: Image.Image) -> Image.Image:
        return self.resize(image, self.input_size)

    def detect_one(self, image: Image.Image) -> Detections:
        pixels = np.asarray(self.resize(image, self.input_size))[None]
        values = input_values(pixels, self.input, self.spec.mean, self.spec.std, self.spec.explicit_normalisation)
        self.interpreter.set_tensor(self.input["index"], values)
        self.interpreter.invoke()
        out = {role: dequantize(self.interpreter.get_tensor(d["index"]), d) for role, d in self.outputs.items()}
        count = int(out["count"].reshape(-1)[0])
        return Detections(
            boxes=out["boxes"][0][:count],
            classes=out["classes"][0][:count].round().astype(int),
            scores=out["scores"][0][:count],
        )


class TFLiteRawDetector(RawDetector):
    """A YOLO-family or DETR export to TFLite (raw outputs), decoded as its ONNX twin."""

    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        self.interpreter = Interpreters(spec.path, threads_for(spec, threads))
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        shapes = [tuple(int(v) for v in output["shape"]) for output in self.outputs]
        super().__init__(spec, tuple(int(v) for v in self.input["shape"]), shapes)

    def use_all_cores(self, lone: bool) -> None:
        self.interpreter.use_all_cores(lone)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], tensor.astype(self.input["dtype"]))
        self.interpreter.invoke()
        return [dequantize(self.interpreter.get_tensor(output["index"]), output) for output in self.outputs]


def load_detector(spec: ModelSpec, threads: Threads | None = None) -> Detector:
    """An SSD with its post-processing op (four outputs), or raw outputs: a YOLO-family export
    (one), a DETR's (two)."""
    outputs = len(make_interpreter(spec.path).get_output_details())
    return TFLiteSSDDetector(spec, threads) if outputs == 4 else TFLiteRawDetector(spec, threads)
