"""Models that need full TensorFlow: SavedModel, Keras (.keras/.h5) and frozen TF1 GraphDefs.

TensorFlow is imported inside the loaders, so the cost of importing it (seconds, hundreds of MB)
is paid only by a process that serves one of these formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec
from scai.engines.base import Classifier, Detections, Detector, normalise
from scai.imaging import DRAFT_MARGIN


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


class FrozenGraph:
    """A frozen TF1 GraphDef imported once into its own graph, with one session for its life.

    The original opened a session per image and never closed it.
    """

    def __init__(self, spec: ModelSpec) -> None:
        tf = import_tensorflow()
        self.name = spec.name
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(spec.path).read_bytes())
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)

    def tensor(self, name: str) -> Any:
        """A tensor by name, or a ``ConfigError`` that names the missing tensor."""
        try:
            return self.graph.get_tensor_by_name(tensor_name(name))
        except KeyError:
            raise ConfigError(f"model {self.name!r} has no tensor {tensor_name(name)!r}") from None


def load_saved_model(spec: ModelSpec) -> Any:
    """A SavedModel folder, checked for the ``serving_default`` signature the engines call."""
    loaded = import_tensorflow().saved_model.load(str(spec.path))
    if "serving_default" not in loaded.signatures:
        raise ConfigError(f"model {spec.name!r} has no serving_default signature")
    return loaded


class SavedModelClassifier(Classifier):
    """A SavedModel directory, run through its ``serving_default`` signature."""

    batches = True  # a whole batch goes through TensorFlow in one call

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.tf = import_tensorflow()
        self.model = load_saved_model(spec)  # the signature needs the loaded object alive
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

    batches = True  # a whole batch goes through TensorFlow in one call

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        import_tensorflow()
        import keras

        self.model = keras.models.load_model(str(spec.path), compile=False)
        self.input_size = self.resolve_input_size(self.model.input_shape[1:3])

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(normalise(pixels, self.mean, self.std), training=False))


class GraphDefClassifier(Classifier):
    """A frozen TF1 graph with named input and output tensors, as ``retrain.py`` made them."""

    batches = True  # a whole batch goes through TensorFlow in one call

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if not spec.input_layer or not spec.output_layer:
            raise ConfigError(f"model {spec.name!r} is a frozen graph: set INPUT_LAYER and OUTPUT_LAYER")
        self.graph = FrozenGraph(spec)
        self.input = self.graph.tensor(spec.input_layer)
        self.output = self.graph.tensor(spec.output_layer)
        shape = self.input.shape.as_list() if self.input.shape.rank else None
        self.input_size = self.resolve_input_size(shape[1:3] if shape else None)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        uint8 = self.input.dtype.as_numpy_dtype == np.uint8
        values = pixels if uint8 else normalise(pixels, self.mean, self.std)
        return self.graph.session.run(self.output, {self.input: values})


#: The Object Detection API's output names, in TF1 frozen graphs and TF2 SavedModels alike.
DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def odapi_detections(outputs: dict[str, np.ndarray]) -> Detections:
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    return Detections(
        boxes=np.asarray(outputs["detection_boxes"])[0][:count],
        classes=np.asarray(outputs["detection_classes"])[0][:count].round().astype(int),
        scores=np.asarray(outputs["detection_scores"])[0][:count],
    )


#: Object Detection API graphs resize an image themselves (to 300x300 for SSDs, a few hundred
#: pixels a side for the others), so they get at most this many pixels a side: fed a 7000x7000
#: upload whole, the graph's own float copies took gigabytes.
ODAPI_LARGEST_SIDE = 2048


class ODAPIDetector(Detector):
    """What both Object Detection API formats share: ids from 1, and images bounded in size."""

    first_class_id = 1
    #: The worker drafts a JPEG to cover DRAFT_MARGIN times this, i.e. ODAPI_LARGEST_SIDE a side.
    input_size = (ODAPI_LARGEST_SIDE // DRAFT_MARGIN,) * 2

    def shrink(self, image: Image.Image) -> Image.Image:
        scale = ODAPI_LARGEST_SIDE / max(image.size)
        if scale >= 1:
            return image
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)


class ODAPIGraphDetector(ODAPIDetector):
    """A TF1 Object Detection API frozen graph: ``image_tensor:0`` uint8 [1, H, W, 3] in, the
    four ``detection_*`` tensors out."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.graph = FrozenGraph(spec)
        self.input = self.graph.tensor(spec.input_layer or "image_tensor")
        self.outputs = {name: self.graph.tensor(name) for name in DETECTION_OUTPUTS}

    def detect_one(self, image: Image.Image) -> Detections:
        feed = {self.input: np.asarray(image)[None]}
        return odapi_detections(self.graph.session.run(self.outputs, feed))


class ODAPISavedModelDetector(ODAPIDetector):
    """A TF2 Object Detection API SavedModel: ``serving_default`` takes ``input_tensor`` uint8
    [1, H, W, 3] and answers the four ``detection_*`` outputs."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.tf = import_tensorflow()
        self.model = load_saved_model(spec)
        self.signature = self.model.signatures["serving_default"]
        inputs = self.signature.structured_input_signature[1]
        self.input_name = spec.input_layer or "input_tensor"
        if self.input_name not in inputs:
            raise ConfigError(f"model {spec.name!r} has no input {self.input_name!r} (it has {', '.join(inputs)})")
        missing = [name for name in DETECTION_OUTPUTS if name not in self.signature.structured_outputs]
        if missing:
            raise ConfigError(f"model {spec.name!r} has no output {missing[0]!r}: not an Object Detection API model")

    def detect_one(self, image: Image.Image) -> Detections:
        tensor = self.tf.constant(np.asarray(image)[None], dtype=self.tf.uint8)
        outputs = self.signature(**{self.input_name: tensor})
        return odapi_detections({name: outputs[name].numpy() for name in DETECTION_OUTPUTS})
