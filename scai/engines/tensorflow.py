"""Models that need full TensorFlow: SavedModel, Keras (.keras/.h5) and frozen TF1 GraphDefs.

TensorFlow is imported inside the loaders, so the cost of importing it (seconds, hundreds of MB)
is paid only by a process that serves one of these formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scai.config import ConfigError, ModelSpec
from scai.engines.base import Classifier, normalise


def import_tensorflow() -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def tensor_name(name: str) -> str:
    """``final_result`` and ``final_result:0`` both name the first output of that op."""
    return name if ":" in name else f"{name}:0"


def only_or_named(names: list[str], wanted: str | None, what: str, model: str) -> str:
    if wanted:
        if wanted not in names:
            raise ConfigError(f"model {model!r} has no {what} {wanted!r} (it has {', '.join(names)})")
        return wanted
    return sorted(names)[0]


class SavedModelClassifier(Classifier):
    """A SavedModel directory, run through its ``serving_default`` signature."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        tf = import_tensorflow()
        self.tf = tf
        self.model = tf.saved_model.load(str(spec.path))
        self.signature = self.model.signatures["serving_default"]
        inputs = self.signature.structured_input_signature[1]
        self.input_name = only_or_named(list(inputs), spec.input_layer, "input", spec.name)
        outputs = list(self.signature.structured_outputs)
        self.output_name = only_or_named(outputs, spec.output_layer, "output", spec.name)
        self.input_spec = inputs[self.input_name]
        self.input_size = self.resolve_input_size(self.input_spec.shape.as_list()[1:3])

    def run(self, pixels: np.ndarray) -> np.ndarray:
        values = pixels if self.input_spec.dtype == self.tf.uint8 else normalise(pixels, self.mean, self.std)
        tensor = self.tf.constant(values, dtype=self.input_spec.dtype)
        return self.signature(**{self.input_name: tensor})[self.output_name].numpy()


class KerasClassifier(Classifier):
    """A Keras model saved as ``.keras`` or legacy ``.h5``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        import_tensorflow()
        import keras

        self.model = keras.models.load_model(str(spec.path), compile=False)
        self.input_size = self.resolve_input_size(self.model.input_shape[1:3])

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(normalise(pixels, self.mean, self.std), training=False))


class GraphDefClassifier(Classifier):
    """A frozen TF1 graph with named input and output tensors, as ``retrain.py`` made them.

    One graph and one session for the life of the engine: the original opened a session per
    image and never closed it.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if not spec.input_layer or not spec.output_layer:
            raise ConfigError(f"model {spec.name!r} is a frozen graph: set INPUT_LAYER and OUTPUT_LAYER")
        tf = import_tensorflow()
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(spec.path).read_bytes())
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.input = self._tensor(spec.input_layer)
        self.output = self._tensor(spec.output_layer)
        shape = self.input.shape.as_list() if self.input.shape.rank else None
        self.input_size = self.resolve_input_size(shape[1:3] if shape else None)

    def _tensor(self, name: str) -> Any:
        try:
            return self.graph.get_tensor_by_name(tensor_name(name))
        except KeyError:
            raise ConfigError(f"model {self.spec.name!r} has no tensor {tensor_name(name)!r}") from None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        uint8 = self.input.dtype.as_numpy_dtype == np.uint8
        values = pixels if uint8 else normalise(pixels, self.mean, self.std)
        return self.session.run(self.output, {self.input: values})
