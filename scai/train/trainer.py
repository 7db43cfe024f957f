"""``scai train``: from a folder of photos to a served model, offline.

Bottleneck features from a TFLite backbone (cached), a Keras softmax head trained on them with a
seeded, stratified held-out split, the head exported to TFLite (float, and int8 or float16 when
asked), a report, and a section in ``usr/image_classification.config`` that serves backbone and
head as one model (``scai.engines.composite``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scai import config
from scai.engines.features import TFLiteFeatures
from scai.train import bottlenecks, report
from scai.train.dataset import Dataset, scan, split

QUANTIZE_MODES = ("none", "int8", "float16")


@dataclass
class TrainOptions:
    dataset: Path
    name: str
    usr_dir: Path
    base: str | None = None  # a classification section, or a .tflite file; default: [default]
    epochs: int = 150
    validation_fraction: float = 0.25
    seed: int = 0
    bottleneck_dir: Path | None = None
    quantize: str = "none"
    command: str = ""


@dataclass
class TrainResult:
    name: str
    model_dir: Path
    classes: list[str]
    accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    train_count: int
    validation_count: int
    reused: int
    computed: int
    unreadable: list[tuple[str, str]]
    sizes: dict[str, int]
    quantized_accuracy: float | None
    seconds: dict[str, float] = field(default_factory=dict)


def backbone_reference(base: str | None, usr_dir: Path) -> tuple[str, Path]:
    """(what the config section will say, the .tflite file) of the backbone to train on."""
    if base and base.endswith(".tflite"):
        path = Path(base).expanduser().resolve()
        if not path.is_file():
            raise config.ConfigError(f"backbone {path} does not exist")
        return str(path), path
    spec = config.pick_model(config.load_models(usr_dir, config.CLASSIFICATION), base)
    if spec.path.suffix != ".tflite" or spec.head is not None:
        raise config.ConfigError(f"model {spec.name!r} is not a plain TFLite classifier; give a .tflite as --base")
    section = config.load_models(usr_dir, config.CLASSIFICATION)[spec.name].options
    raw = section.get("graph") or section.get("path_to_ckpt") or str(spec.path)
    return (raw if raw.startswith("package:") else str(spec.path)), spec.path


class _EpochBar:
    """Keras' fit reports through this: one progress bar over the epochs, not a line per epoch."""

    def __new__(cls, epochs: int) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                self.bar = tqdm(total=epochs, desc="training", unit="epoch", leave=False)

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.bar.update(1)
                self.bar.set_postfix(val_accuracy=f"{(logs or {}).get('val_accuracy', 0):.3f}")

            def on_train_end(self, logs: Any = None) -> None:
                self.bar.close()

        return Callback()


def fit_head(features: np.ndarray, labels: np.ndarray, held: tuple[np.ndarray, np.ndarray], classes: int,
             epochs: int, seed: int) -> tuple[Any, dict[str, list[float]]]:  # fmt: skip
    """A softmax layer (with dropout) on the features; returns the model and its history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((features.shape[1],), name="features"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(classes, activation="softmax", name="classes"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        features, labels, epochs=epochs, batch_size=32, validation_data=held, verbose=0, callbacks=[_EpochBar(epochs)]
    )
    return model, history.history


def export_tflite(model: Any, mode: str, representative: np.ndarray | None = None) -> bytes:
    """The head as TFLite: float32, float16 weights, or int8 calibrated on ``representative``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        samples = representative if representative is not None else np.zeros((1, model.input_shape[1]), np.float32)

        def calibration() -> Any:
            for row in samples[:200]:
                yield [row[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its own notes
        return converter.convert()


def tflite_accuracy(model_bytes: bytes, features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of an exported head, run as the worker runs it."""
    from scai.engines.composite import TFLiteHead

    return float(np.mean(np.argmax(TFLiteHead(model_bytes)(features), axis=1) == labels))


Labelled = tuple[np.ndarray, np.ndarray]  # (features, class indexes)


def split_features(
    data: Dataset, extractor: TFLiteFeatures, cache: Path, fraction: float, seed: int
) -> tuple[bottlenecks.Bottlenecks, Labelled, Labelled]:
    """The dataset's bottlenecks (from the cache where it has them), split into the training part and
    the held-out part; the same split for the same photos, fraction and seed."""
    found = bottlenecks.compute(data.files, extractor, cache, config.Settings().max_pixels)
    labels = data.labels[found.readable]
    train_rows, held_rows = split(labels, fraction, seed)
    return found, (found.features[train_rows], labels[train_rows]), (found.features[held_rows], labels[held_rows])


def train(options: TrainOptions) -> TrainResult:
    """Train, export, report and configure; every step's time is in the result."""
    started = time.perf_counter()
    if options.quantize not in QUANTIZE_MODES:
        raise config.ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}")
    data = scan(options.dataset)
    reference, backbone = backbone_reference(options.base, options.usr_dir)
    extractor = TFLiteFeatures(backbone)
    cache = options.bottleneck_dir or options.usr_dir / "models" / ".bottlenecks"
    found, training, held = split_features(data, extractor, cache, options.validation_fraction, options.seed)
    extracted = time.perf_counter()

    model, history = fit_head(*training, held, len(data.classes), options.epochs, options.seed)
    trained = time.perf_counter()

    predicted = np.argmax(model.predict(held[0], verbose=0), axis=1)
    confusion = np.zeros((len(data.classes), len(data.classes)), int)
    for truth, guess in zip(held[1], predicted, strict=True):
        confusion[truth, guess] += 1
    per_class = {name: float(confusion[i, i] / max(1, confusion[i].sum())) for i, name in enumerate(data.classes)}

    model_dir = options.usr_dir / "models" / options.name
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "head.keras")  # kept for `scai quantize`
    head_bytes = export_tflite(model, "none")
    (model_dir / "head.tflite").write_bytes(head_bytes)
    served, quantized_accuracy = "head.tflite", None
    sizes = {"backbone": backbone.stat().st_size, "head": len(head_bytes)}
    if options.quantize != "none":
        small = export_tflite(model, options.quantize, training[0])
        served = f"head.{options.quantize}.tflite"
        (model_dir / served).write_bytes(small)
        sizes[f"head_{options.quantize}"] = len(small)
        quantized_accuracy = tflite_accuracy(small, *held)
    (model_dir / "labels.txt").write_text("\n".join(data.classes) + "\n", encoding="utf-8")
    exported = time.perf_counter()

    result = TrainResult(
        name=options.name,
        model_dir=model_dir,
        classes=data.classes,
        accuracy=float(np.mean(predicted == held[1])),
        per_class=per_class,
        confusion=confusion.tolist(),
        train_count=len(training[1]),
        validation_count=len(held[1]),
        reused=found.reused,
        computed=found.computed,
        unreadable=[(str(path), reason) for path, reason in found.unreadable],
        sizes=sizes,
        quantized_accuracy=quantized_accuracy,
        seconds={
            "bottlenecks": round(extracted - started, 2),
            "training": round(trained - extracted, 2),
            "export": round(exported - trained, 2),
        },
    )
    report.write(model_dir, result, history, options)
    result.seconds["total"] = round(time.perf_counter() - started, 2)
    (model_dir / "report.json").write_text(json.dumps(_jsonable(result, options), indent=1), encoding="utf-8")
    config.write_section(
        options.usr_dir / f"{config.CLASSIFICATION}.config",
        options.name,
        {
            "GRAPH": reference,
            "HEAD": f"models/{options.name}/{served}",
            "LABELS": f"models/{options.name}/labels.txt",
            "TRAINED": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return result


def _jsonable(result: TrainResult, options: TrainOptions) -> dict[str, Any]:
    body = asdict(result)
    body["model_dir"] = str(result.model_dir)
    body["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    body["python"] = sys.version.split()[0]
    return body
