"""``scai train``: from a folder of photos to a served model, offline.

Bottleneck features from a TFLite backbone (cached), a softmax head trained on them with a seeded,
stratified held-out split (``scai.train.head``), the head written as TFLite (float, and int8 or
float16 when asked; ``scai.train.export``), a report, and a section in
``usr/image_classification.config`` that serves backbone and head as one model
(``scai.engines.composite``). TensorFlow is never imported, so a run on cached bottlenecks takes
about a second.
"""

from __future__ import annotations

import json
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
from scai.train import augment, bottlenecks, export, head, keras_backbone, report
from scai.train.dataset import Dataset, scan, split

QUANTIZE_MODES = export.MODES


#: A training photo may have as many pixels as an upload may.
PHOTO_PIXEL_LIMIT: int = config.Settings.default("max_pixels")


@dataclass
class TrainOptions:
    dataset: Path
    name: str
    usr_dir: Path
    base: str | None = None  # a classification section, a .tflite file or a Keras application; default: [default]
    weights: Path | None = None  # a Keras application's weights file
    fine_tune: int = 0  # top layers of a Keras application to tune
    fine_tune_epochs: int = 5
    epochs: int = 150
    validation_fraction: float = 0.25
    seed: int = 0
    bottleneck_dir: Path | None = None
    augment: bool = False
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
    train_count: int  # photos; with --augment, each also gives augment.VARIANTS more samples
    validation_count: int
    reused: int
    computed: int
    unreadable: list[tuple[str, str]]
    sizes: dict[str, int]
    quantized_accuracy: float | None
    fine_tuned_accuracy: float | None = None  # the tuned Keras network with its own head, before the retrain
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


def prepare_backbone(
    options: TrainOptions, data: Dataset, cache: Path, model_dir: Path
) -> tuple[str, Path, float | None]:
    """(what the config section will say, the .tflite backbone, the fine-tuned accuracy if tuned)."""
    if options.base not in keras_backbone.APPLICATIONS:
        if options.weights or options.fine_tune:
            names = ", ".join(keras_backbone.APPLICATIONS)
            raise config.ConfigError(f"--weights and --fine-tune go with a Keras application as --base ({names})")
        return (*backbone_reference(options.base, options.usr_dir), None)
    weights = keras_backbone.weights_file(options.base, options.weights)
    reference = f"models/{options.name}/backbone.tflite"
    if not options.fine_tune:  # the untuned conversion is cached; a tuned one is this model's own
        return (
            reference,
            keras_backbone.install(keras_backbone.converted(options.base, weights, cache), model_dir),
            None,
        )
    target = model_dir / "backbone.tflite"
    tuned = keras_backbone.fine_tune(
        options.base, weights, data, options.validation_fraction,
        options.seed, options.fine_tune, options.fine_tune_epochs, target,
    )  # fmt: skip
    return reference, target, tuned


def tflite_accuracy(model_bytes: bytes, features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of an exported head, run as the worker runs it."""
    from scai.engines.composite import TFLiteHead

    return float(np.mean(np.argmax(TFLiteHead(model_bytes)(features), axis=1) == labels))


def split_features(
    data: Dataset, extractor: TFLiteFeatures, cache: Path, fraction: float, seed: int, augmented: bool = False
) -> tuple[bottlenecks.Bottlenecks, head.Labelled, head.Labelled]:
    """The dataset's bottlenecks (from the cache where it has them), split into the training part and
    the held-out part; the same split for the same photos, fraction and seed. ``augmented`` adds the
    variants of the training photos (never of the held-out ones) to the training part."""
    found = bottlenecks.compute(data.files, extractor, cache, PHOTO_PIXEL_LIMIT)
    labels = data.labels[found.readable]
    train_rows, held_rows = split(labels, fraction, seed)
    features, classes = [found.features[train_rows]], [labels[train_rows]]
    photos = [data.files[found.readable[row]] for row in train_rows]
    for number in range(1, augment.VARIANTS + 1) if augmented else ():
        extra = bottlenecks.compute(photos, extractor, cache, PHOTO_PIXEL_LIMIT, variant=number)
        features.append(extra.features)
        classes.append(labels[train_rows][extra.readable])
        found.reused, found.computed = found.reused + extra.reused, found.computed + extra.computed
    training = np.concatenate(features), np.concatenate(classes)
    return found, training, (found.features[held_rows], labels[held_rows])


def train(options: TrainOptions) -> TrainResult:
    """Train, export, report and configure; every step's time is in the result."""
    started = time.perf_counter()
    if options.quantize not in QUANTIZE_MODES:
        raise config.ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}")
    if options.epochs < 1 or options.fine_tune_epochs < 1 or options.fine_tune < 0:
        raise config.ConfigError("--epochs and --fine-tune-epochs must be at least 1, --fine-tune at least 0")
    data = scan(options.dataset)
    cache = options.bottleneck_dir or options.usr_dir / "models" / ".bottlenecks"
    model_dir = options.usr_dir / "models" / options.name
    reference, backbone, fine_tuned_accuracy = prepare_backbone(options, data, cache, model_dir)
    extractor = TFLiteFeatures(backbone)
    found, training, held = split_features(
        data, extractor, cache, options.validation_fraction, options.seed, options.augment
    )
    extracted = time.perf_counter()

    with tqdm(total=options.epochs, desc="training", unit="epoch", leave=False) as bar:

        def progress(scores: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(val_accuracy=f"{scores['val_accuracy']:.3f}", refresh=False)

        model = head.fit(training, held, len(data.classes), options.epochs, options.seed, on_epoch=progress)
    trained = time.perf_counter()

    predicted = np.argmax(model.scores(held[0]), axis=1)
    confusion = np.zeros((len(data.classes), len(data.classes)), int)
    for truth, guess in zip(held[1], predicted, strict=True):
        confusion[truth, guess] += 1
    per_class = {name: float(confusion[i, i] / max(1, confusion[i].sum())) for i, name in enumerate(data.classes)}

    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / "head.npz")  # kept for `scai quantize`
    head_bytes = export.head_model(model.weights, model.bias)
    (model_dir / "head.tflite").write_bytes(head_bytes)
    served, quantized_accuracy = "head.tflite", None
    sizes = {"backbone": backbone.stat().st_size, "head": len(head_bytes)}
    if options.quantize != "none":
        small = export.head_model(model.weights, model.bias, options.quantize, training[0])
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
        train_count=len(found.readable) - len(held[1]),
        validation_count=len(held[1]),
        reused=found.reused,
        computed=found.computed,
        unreadable=[(str(path), reason) for path, reason in found.unreadable],
        sizes=sizes,
        quantized_accuracy=quantized_accuracy,
        fine_tuned_accuracy=fine_tuned_accuracy,
        seconds={
            "bottlenecks": round(extracted - started, 2),
            "training": round(trained - extracted, 2),
            "export": round(exported - trained, 2),
        },
    )
    report.write(model_dir, result, model.history, options)
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
