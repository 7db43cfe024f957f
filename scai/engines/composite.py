"""A backbone and a trained head, served as one classifier: what ``scai train`` produces.

The backbone is an installed TFLite classifier whose own classifier layer is not used; its
features (``scai.engines.features``) go through a small TFLite head trained on them. The config
section names both: ``GRAPH`` the backbone, ``HEAD`` the head, ``LABELS`` the head's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec, Threads
from scai.engines.base import Classifier
from scai.engines.features import TFLiteFeatures
from scai.engines.tflite import dequantize, make_interpreter, quantize, threads_for


class TFLiteHead:
    """A classification head on feature vectors, float or quantised; the worker and the trainer's
    accuracy figures both run heads through this."""

    def __init__(self, model: Path | bytes, threads: int | None = None) -> None:
        self.interpreter = make_interpreter(model, threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][-1])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Scores [N, classes] for features [N, size]."""
        rows = []
        for row in features:
            values = row[None].astype(np.float32)
            if self.input["dtype"] != np.float32:
                values = quantize(values, *self.input["quantization"], self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], values)
            self.interpreter.invoke()
            rows.append(dequantize(self.interpreter.get_tensor(self.output["index"]), self.output))
        return np.concatenate(rows)


class CompositeClassifier(Classifier):
    def __init__(self, spec: ModelSpec, threads: Threads | None = None) -> None:
        """Both interpreters with the worker's share of the cores (a lone request included)."""
        super().__init__(spec)
        if spec.path.suffix != ".tflite" or spec.head is None or spec.head.suffix != ".tflite":
            raise ConfigError(f"model {spec.name!r}: GRAPH and HEAD must both be .tflite files")
        plan = threads_for(spec, threads)
        self.features = TFLiteFeatures(spec.path, plan.busy if plan else None)
        self.head = TFLiteHead(spec.head, plan.busy if plan else None)
        if self.head.size != self.features.size:
            raise ConfigError(
                f"model {spec.name!r}: the head takes {self.head.size} features, "
                f"the backbone gives {self.features.size}; was it trained on another backbone?"
            )
        self.input_size = self.features.input_size

    def shrink(self, image: Image.Image) -> Image.Image:
        """Unchanged: the features look at several views (crops) of the whole photo."""
        return image

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Feature vectors [N, D] instead of pixels."""
        return np.stack([self.features(image) for image in images])

    def run(self, features: np.ndarray) -> np.ndarray:
        return self.head(features)
