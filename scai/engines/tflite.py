"""TFLite models, float or quantised, through the LiteRT interpreter.

LiteRT (``ai-edge-litert``) is small and starts fast, so a worker serving only TFLite models never
imports full TensorFlow; ``tf.lite`` is the fallback where LiteRT is not installed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from scai.config import ModelSpec
from scai.engines.base import Classifier, normalise


def make_interpreter(path: Path, threads: int | None = None) -> Any:
    """A ready interpreter for ``path`` (tensors allocated)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on what is installed
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def threads_for(spec: ModelSpec) -> int | None:
    value = spec.options.get("num_threads") or os.environ.get("SCAI_THREADS")
    return int(value) if value else None


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


def input_values(pixels: np.ndarray, detail: dict[str, Any], spec: ModelSpec, mean: float, std: float) -> np.ndarray:
    """uint8 pixels in the input tensor's own type.

    Quantised image models take raw pixels (uint8) or pixels - 128 (int8) by convention, which is
    what their quantisation parameters encode; an explicit INPUT_MEAN/INPUT_STD in the config
    instead normalises first and quantises the result.
    """
    dtype = detail["dtype"]
    if dtype == np.float32:
        return normalise(pixels, mean, std)
    explicit = spec.input_mean is not None or spec.input_std is not None
    scale, zero_point = detail["quantization"]
    if explicit and scale:
        return quantize(normalise(pixels, mean, std), scale, zero_point, dtype)
    if dtype == np.uint8:
        return pixels
    if dtype == np.int8:
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unsupported TFLite input type {np.dtype(dtype).name}")


class TFLiteClassifier(Classifier):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.interpreter = make_interpreter(spec.path, threads_for(spec))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_size = self.resolve_input_size(tuple(self.input["shape"][1:3]))

    def embedded_labels(self) -> list[str] | None:
        files = embedded_text_files(self.spec.path)
        return next(iter(files.values()), None)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        rows = []
        for image in pixels:  # the models we ship have batch size 1
            values = input_values(image[None], self.input, self.spec, self.mean, self.std)
            self.interpreter.set_tensor(self.input["index"], values)
            self.interpreter.invoke()
            rows.append(dequantize(self.interpreter.get_tensor(self.output["index"]), self.output))
        return np.concatenate(rows)
