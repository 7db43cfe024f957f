"""``scai evaluate`` and ``scai quantize``: how good a model is on labelled photos, and a smaller
head for a trained one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scai import config, imaging
from scai.engines import load_classifier
from scai.engines.features import TFLiteFeatures
from scai.train.dataset import scan
from scai.train.export import head_model
from scai.train.head import Head
from scai.train.trainer import PHOTO_PIXEL_LIMIT, split_features, tflite_accuracy


@dataclass
class Evaluation:
    classes: list[str]
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class; columns: predicted class, then "other"
    skipped: list[tuple[str, str]]

    def table(self) -> str:
        width = max(len(c) for c in [*self.classes, "other"]) + 2
        lines = [f"accuracy {self.accuracy:.1%} on {sum(map(sum, self.confusion))} photos", ""]
        lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>8}")
        lines += [f"{c:<{width}}{self.precision[c]:>10.1%}{self.recall[c]:>8.1%}" for c in self.classes]
        lines += [
            "",
            "confusion (rows: true, columns: predicted)",
            " " * width + "".join(f"{c[:7]:>8}" for c in self.classes) + f"{'other':>8}",
        ]
        lines += [
            f"{c:<{width}}" + "".join(f"{n:>8}" for n in row)
            for c, row in zip(self.classes, self.confusion, strict=True)
        ]
        return "\n".join(lines)


def evaluate(spec: config.ModelSpec, dataset: Path) -> Evaluation:
    """Run the model as the worker serves it on every photo of a class-per-folder dataset."""
    data = scan(dataset)
    engine = load_classifier(spec)
    index = {name: i for i, name in enumerate(data.classes)}
    confusion = np.zeros((len(data.classes), len(data.classes) + 1), int)
    skipped, limit = [], PHOTO_PIXEL_LIMIT
    for path, truth in tqdm(
        list(zip(data.files, data.labels, strict=True)), desc="evaluating", unit="photo", leave=False
    ):
        try:
            image = imaging.load_rgb(path, limit)
        except imaging.InvalidImage as error:
            skipped.append((str(path), str(error)))
            continue
        label = engine.top(engine.predict([image])[0], 1)[0].label
        confusion[truth, index.get(label, len(data.classes))] += 1
    hits = np.diag(confusion[:, : len(data.classes)])
    predicted, actual = confusion[:, : len(data.classes)].sum(axis=0), confusion.sum(axis=1)
    return Evaluation(
        classes=data.classes,
        accuracy=float(hits.sum() / max(1, confusion.sum())),
        precision={c: float(hits[i] / max(1, predicted[i])) for i, c in enumerate(data.classes)},
        recall={c: float(hits[i] / max(1, actual[i])) for i, c in enumerate(data.classes)},
        confusion=confusion.tolist(),
        skipped=skipped,
    )


def quantize(usr_dir: Path, name: str, mode: str) -> dict[str, float | int | str]:
    """Export a trained head again as ``mode``, calibrated on its training photos' features, and
    serve it; returns sizes and held-out accuracy before and after."""
    model_dir = usr_dir / "models" / name
    if not (model_dir / "head.npz").exists():
        raise config.ConfigError(f"{model_dir} holds no head.npz: quantize works on models made by `scai train`")

    report = json.loads((model_dir / "report.json").read_text(encoding="utf-8"))
    options = report["options"]
    spec = config.pick_model(config.load_models(usr_dir, config.CLASSIFICATION), name)
    data = scan(Path(options["dataset"]))
    cache = (
        Path(options["bottleneck_dir"])
        if options.get("bottleneck_dir") not in (None, "None")
        else model_dir.parent / ".bottlenecks"
    )
    fraction, seed = float(options["validation_fraction"]), int(options["seed"])
    _, training, held = split_features(
        data, TFLiteFeatures(spec.path), cache, fraction, seed, options.get("augment", False)
    )
    model = Head.load(model_dir / "head.npz")
    before = (model_dir / "head.tflite").read_bytes()
    after = head_model(model.weights, model.bias, mode, training[0])
    target = model_dir / f"head.{mode}.tflite"
    target.write_bytes(after)
    keys = {k.upper(): v for k, v in config.load_models(usr_dir, config.CLASSIFICATION)[name].options.items()}
    keys["HEAD"] = f"models/{name}/{target.name}"
    config.write_section(usr_dir / f"{config.CLASSIFICATION}.config", name, keys)
    return {
        "float_size": len(before),
        f"{mode}_size": len(after),
        "float_accuracy": tflite_accuracy(before, *held),
        f"{mode}_accuracy": tflite_accuracy(after, *held),
        "head": str(target),
    }
