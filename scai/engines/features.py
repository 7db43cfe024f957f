"""Image features from a TFLite classifier, for training a new head on top of it.

The classifier's own last layers are cut off: the feature vector is the pooled activation that
fed its classifier, joined by the spatial mean of the block before its final 1x1 convolution
(a little more detail from one level down), each averaged over four views of the photo (whole,
mirrored, the central 80% and its mirror). On the small flowers set this lifts a linear head from
about 85% to about 89% held-out accuracy over five seeded splits.

The tensors are found by walking the model's graph back from its output, so any TFLite image
classifier of the usual shape (conv feature map -> average pool -> classifier) works, quantised
or float. Training and serving use this one module, so their features are the same by
construction.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scai.config import DEFAULT_MEAN, DEFAULT_STD, ConfigError
from scai.engines.base import resized
from scai.engines.tflite import dequantize, input_values

#: Changes whenever the recipe above changes, so cached features of an older recipe are not reused.
RECIPE = "pooled+preblock-mean/4views/v1"
POOLING_OPS = ("AVERAGE_POOL_2D", "MEAN")


def centre(image: Image.Image, fraction: float = 0.8) -> Image.Image:
    width, height = image.size
    w, h = round(width * fraction), round(height * fraction)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


VIEWS: tuple[Callable[[Image.Image], Image.Image], ...] = (
    lambda image: image,
    ImageOps.mirror,
    centre,
    lambda image: ImageOps.mirror(centre(image)),
)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TFLiteFeatures:
    """The feature extractor of one TFLite backbone."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with warnings.catch_warnings():  # preserving intermediate tensors is what we want here
            warnings.simplefilter("ignore")
            self.interpreter = Interpreter(
                model_path=str(path), experimental_preserve_all_tensors=True, num_threads=threads
            )
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.input_size = tuple(int(v) for v in self.input["shape"][1:3])
        self.details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        self.pooled, self.preblock = self._feature_tensors()
        self.key = f"{file_digest(self.path)[:16]}-{hashlib.sha256(RECIPE.encode()).hexdigest()[:8]}"

    def _feature_tensors(self) -> tuple[int, int]:
        """(pooled tensor, the block before the final feature map), found from the output back."""
        ops = [op for op in self.interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
        producer = {int(t): op for op in ops for t in op["outputs"]}
        tensor = int(self.interpreter.get_output_details()[0]["index"])
        while tensor in producer and producer[tensor]["op_name"] not in POOLING_OPS:
            tensor = int(producer[tensor]["inputs"][0])
        if tensor not in producer:
            raise ConfigError(f"{self.path.name}: no average pooling before its output; not a backbone SCAI can use")
        feature_map = int(producer[tensor]["inputs"][0])
        preblock = int(producer[feature_map]["inputs"][0]) if feature_map in producer else feature_map
        return tensor, preblock

    @property
    def size(self) -> int:
        return int(np.prod(self.details[self.pooled]["shape"][1:]) + self.details[self.preblock]["shape"][-1])

    def _one_view(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(resized(image, self.input_size))[None]
        values = input_values(pixels, self.input, DEFAULT_MEAN, DEFAULT_STD, explicit=False)
        self.interpreter.set_tensor(self.input["index"], values)
        self.interpreter.invoke()
        pooled = self._tensor(self.pooled).reshape(-1)
        preblock = self._tensor(self.preblock)
        return np.concatenate([pooled, preblock.reshape(-1, preblock.shape[-1]).mean(axis=0)])

    def _tensor(self, index: int) -> np.ndarray:
        return dequantize(self.interpreter.get_tensor(index), self.details[index])

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The feature vector of one RGB image (float32)."""
        return np.mean([self._one_view(view(image)) for view in VIEWS], axis=0).astype(np.float32)
