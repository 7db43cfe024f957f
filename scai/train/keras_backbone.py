"""A Keras application as the backbone: MobileNetV2 or EfficientNetB0, with weights from a local file.

SCAI never downloads weights. ``--weights FILE`` names the application's ImageNet ``_no_top``
weights (the file ``keras.applications`` would download, copied from a machine that has the
internet) or any file that ``save_weights`` wrote for the same application without its top.
The application is converted once to a TFLite backbone, cached beside the bottlenecks by the
weights' content, and from there a model trains like one on any TFLite backbone: bottlenecks, the
head, a composite model. ``--fine-tune N`` first trains the application's top N layers together with
a head on the training photos (Keras, the held-out photos untouched), then converts the tuned
backbone, and the head is trained again on its features.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scai import config, imaging
from scai.engines.features import file_digest
from scai.files import atomic_write
from scai.train import head
from scai.train.dataset import Dataset, split

APPLICATIONS = {"mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNetB0"}
SIZE = 224  # the applications' ImageNet input size


def weights_file(name: str, weights: Path | None) -> Path:
    """The weights file given with ``--weights``, or a clear error saying where one comes from."""
    if weights is None:
        raise config.ConfigError(
            f"--base {name} needs its ImageNet weights as --weights FILE: SCAI does not download them. "
            f"Copy keras.applications' {APPLICATIONS[name]} '_no_top' .h5 file from a machine with internet."
        )
    weights = Path(weights).expanduser().resolve()
    if not weights.is_file():
        raise config.ConfigError(f"weights file {weights} does not exist")
    return weights


def converted(name: str, weights: Path, cache: Path) -> Path:
    """The application with these weights as a TFLite backbone, converted on first use."""
    target = Path(cache) / "keras" / f"{name}-{file_digest(weights)[:16]}.tflite"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, _to_tflite(build(name, weights)[0]))
    return target


def build(name: str, weights: Path) -> tuple[Any, Any]:
    """(the backbone taking pixels scaled to [-1, 1] as SCAI feeds float models, the application)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    shape = (SIZE, SIZE, 3)
    try:
        with warnings.catch_warnings():  # a mismatched file warns once per layer before it fails
            warnings.simplefilter("ignore")
            application = getattr(keras.applications, APPLICATIONS[name])(
                include_top=False, weights=str(weights), input_shape=shape, pooling="avg"
            )
    except (ValueError, OSError) as error:
        reason = str(error).splitlines()[0]
        raise config.ConfigError(
            f"{weights.name} does not hold {APPLICATIONS[name]} weights without top: {reason}"
        ) from error
    inputs = keras.Input(shape, name="pixels")
    scaled = keras.layers.Rescaling(STD, offset=MEAN)(inputs) if name.startswith("efficientnet") else inputs
    return keras.Model(inputs, application(scaled), name=f"{name}_backbone"), application


def fine_tune(
    name: str, weights: Path, data: Dataset, fraction: float, seed: int, layers: int, epochs: int, target: Path
) -> float:
    """Tune the top ``layers`` of the application on the training photos and write the tuned backbone
    to ``target`` as TFLite; returns the held-out accuracy of the tuned network with its own head."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone, application = build(name, weights)
    pixels, labels = _photos(data)
    train_rows, held_rows = split(labels, fraction, seed)
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bars, away from the command's results
        start = head.fit(
            (backbone.predict(pixels[train_rows], verbose=1), labels[train_rows]),
            (backbone.predict(pixels[held_rows], verbose=0), labels[held_rows]),
            len(data.classes),
            epochs=150,
            seed=seed,
        )
        classifier = keras.Sequential(
            [backbone, keras.layers.UnitNormalization(), keras.layers.Dense(len(data.classes))]
        )
        classifier.layers[-1].set_weights([start.weights, start.bias])
        application.trainable = True
        for layer in application.layers[:-layers]:
            layer.trainable = False
        for layer in application.layers:  # batch statistics of 100-odd photos would undo ImageNet's
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        classifier.compile(
            keras.optimizers.Adam(1e-5),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        classifier.fit(pixels[train_rows], labels[train_rows], batch_size=16, epochs=epochs, verbose=1)
        scores = classifier.predict(pixels[held_rows], verbose=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, _to_tflite(backbone))
    return float(np.mean(scores.argmax(axis=1) == labels[held_rows]))


def install(backbone: Path, model_dir: Path) -> Path:
    """The backbone's copy inside the model's folder, which the config section then names."""
    target = model_dir / "backbone.tflite"
    if backbone.resolve() != target.resolve():
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(backbone, target)
    return target


MEAN, STD = config.DEFAULT_MEAN, config.DEFAULT_STD


def _photos(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The readable photos resized as the served model resizes them, scaled to [-1, 1]; their labels."""
    pixels, labels, limit = [], [], config.Settings.default("max_pixels")
    for path, label in zip(data.files, data.labels, strict=True):
        try:
            image = imaging.load_rgb(path, limit)
        except (imaging.InvalidImage, OSError):
            continue  # the bottleneck step lists it
        pixels.append(np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / STD - MEAN / STD)
        labels.append(label)
    return np.stack(pixels), np.array(labels)


def _to_tflite(model: Any) -> bytes:
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the whole signature
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()
