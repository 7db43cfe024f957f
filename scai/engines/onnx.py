"""ONNX models on ONNX Runtime, imported only when an ``.onnx`` section is loaded (never
TensorFlow). Today's detectors are published as ONNX: the YOLO family, YOLOX and the DETR family
(decoded by ``layouts``); classifiers work too.

Each model gets two sessions where the thread plan differs, as TFLite models get two
interpreters: ``busy`` threads while other sessions wait (sibling workers use the other cores),
``lone`` threads for a request that has the machine to itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scai.config import ConfigError, ModelSpec, Threads
from scai.engines.base import Classifier, normalise
from scai.engines.layouts import RawDetector, is_nchw
from scai.engines.tflite import threads_for


def session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime session on the CPU with ``threads`` threads (None: its own choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    # Pool threads spin while a run lasts (between its operators) but not after it, when they
    # would take the cores a sibling worker process needs
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a corrupt or unsupported file
        raise ConfigError(f"{Path(path).name} cannot be loaded by ONNX Runtime: {str(error)[:200]}") from None


class Sessions:
    """One model's sessions for the thread plan (see the module)."""

    def __init__(self, spec: ModelSpec, threads: Threads | None) -> None:
        plan = threads_for(spec, threads)
        self.busy = session(spec.path, plan.busy if plan else None)
        self.lone = self.busy if plan is None or plan.lone == plan.busy else session(spec.path, plan.lone)
        self.current = self.busy
        self.input = self.busy.get_inputs()[0]
        self.outputs = self.busy.get_outputs()
        self.names = [output.name for output in self.outputs]

    def use_all_cores(self, lone: bool) -> None:
        self.current = self.lone if lone else self.busy

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Every output, in the model's order."""
        return self.current.run(self.names, {self.input.name: tensor})

    def shape(self, value: Any, name: str) -> tuple[int, ...]:
        """A tensor's shape, with a dynamic batch read as 1; other dynamic sizes need INPUT_SIZE."""
        dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(value.shape)]
        if not all(isinstance(d, int) for d in dims):
            raise ConfigError(f"model {name!r}: its input {value.name} has dynamic sizes {value.shape}")
        return tuple(dims)


class OnnxDetector(RawDetector):
    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        self.sessions = Sessions(spec, threads)
        shape_in = self.sessions.shape(self.sessions.input, spec.name)
        shapes_out = [self.sessions.shape(output, spec.name) for output in self.sessions.outputs]
        super().__init__(spec, shape_in, shapes_out)

    def use_all_cores(self, lone: bool) -> None:
        self.sessions.use_all_cores(lone)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.sessions.run(tensor)


class OnnxClassifier(Classifier):
    """A float classifier: pixels normalised by INPUT_MEAN/INPUT_STD, NCHW where the model is."""

    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        super().__init__(spec)
        self.sessions = Sessions(spec, threads)
        self.input_shape = self.sessions.shape(self.sessions.input, spec.name)
        self.nchw = is_nchw(self.input_shape)
        size = self.input_shape[2:4] if self.nchw else self.input_shape[1:3]
        self.input_size = self.resolve_input_size(size)

    def use_all_cores(self, lone: bool) -> None:
        self.sessions.use_all_cores(lone)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        rows = []
        for one in pixels:
            values = normalise(one[None], self.mean, self.std)
            rows.append(self.sessions.run(values.transpose(0, 3, 1, 2) if self.nchw else values)[0].reshape(1, -1))
        return np.concatenate(rows)
