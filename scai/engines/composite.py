"""A backbone and a trained head, served as one classifier: what ``scai train`` produces.

The backbone is an installed TFLite classifier whose own classifier layer is not used; its
features (``scai.engines.features``) go through a small TFLite head trained on them. The config
section names both: ``GRAPH`` the backbone, ``HEAD`` the head, ``LABELS`` the head's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from scai.config import ConfigError, ModelSpec
from scai.engines.base import Classifier
from scai.engines.features import TFLiteFeatures
from scai.engines.tflite import dequantize, make_interpreter, quantize, threads_for


class CompositeClassifier(Classifier):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if spec.path.suffix != ".tflite" or spec.head is None or spec.head.suffix != ".tflite":
            raise ConfigError(f"model {spec.name!r}: GRAPH and HEAD must both be .tflite files")
        self.features = TFLiteFeatures(spec.path)
        self.head = make_interpreter(spec.head, threads_for(spec))
        self.head_input = self.head.get_input_details()[0]
        self.head_output = self.head.get_output_details()[0]
        if int(self.head_input["shape"][-1]) != self.features.size:
            raise ConfigError(
                f"model {spec.name!r}: the head takes {self.head_input['shape'][-1]} features, "
                f"the backbone gives {self.features.size}; was it trained on another backbone?"
            )
        self.input_size = self.features.input_size

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Feature vectors [N, D] instead of pixels."""
        return np.stack([self.features(image) for image in images])

    def run(self, features: np.ndarray) -> np.ndarray:
        rows = []
        for row in features:
            values = row[None].astype(np.float32)
            scale, zero_point = self.head_input["quantization"]
            if self.head_input["dtype"] != np.float32:
                values = quantize(values, scale, zero_point, self.head_input["dtype"])
            self.head.set_tensor(self.head_input["index"], values)
            self.head.invoke()
            rows.append(dequantize(self.head.get_tensor(self.head_output["index"]), self.head_output))
        return np.concatenate(rows)
