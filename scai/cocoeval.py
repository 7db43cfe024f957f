"""``scai evaluate --coco``: a detection model's COCO mAP on annotated photos, as Ultralytics'
``val`` and Roboflow report it.

Each photo goes through what a worker does with an upload (decoded and turned upright by
``imaging``, detected by the section's engine, chosen by ``tasks.select`` with the section's
threshold and box limit), so the figures describe what is served. The scoring is pycocotools'
(``COCOeval``, the reference every published mAP comes from). The model's labels are matched to
the annotation's categories by name, case and spaces aside, and with the Darknet/VOC spellings
that many COCO label files carry (``motorbike`` for ``motorcycle``, ``tvmonitor`` for ``tv``...).

Written to the report folder: ``report.md`` (the summary and a per-class AP table),
``metrics.json``, and ``precision_recall.png`` (precision against recall at IoU 0.5 and 0.5:0.95).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scai import imaging
from scai.config import ConfigError, ModelSpec
from scai.engines import load_detector
from scai.tasks import select

#: COCOeval's summary, in its order.
SUMMARY = ("mAP@[.5:.95]", "AP50", "AP75", "AP small", "AP medium", "AP large")


@dataclass
class DetectionEvaluation:
    summary: dict[str, float]
    per_class: dict[str, float]  # AP@[.5:.95] of each category with annotations
    photos: int
    detections: int
    unmatched_labels: list[str]  # the model's labels no category is named like

    def table(self) -> str:
        lines = [f"{self.photos} photos, {self.detections} detections"]
        lines += [f"{name:<14}{value:.3f}" for name, value in self.summary.items()]
        lines += ["", "per class AP@[.5:.95]"]
        lines += [f"{name:<16}{value:.3f}" for name, value in sorted(self.per_class.items())]
        return "\n".join(lines)


#: Darknet/VOC names of COCO categories, as YOLO label files often spell them.
ALIASES = {
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "pottedplant",
    "diningtable": "diningtable", "tvmonitor": "tv",
}  # fmt: skip


def _key(name: str) -> str:
    key = name.lower().replace(" ", "").replace("_", "")
    return ALIASES.get(key, key)


def evaluate(
    spec: ModelSpec, annotations: Path, images: Path, max_pixels: int, report: Path | None = None
) -> DetectionEvaluation:
    """Detect every annotated photo of ``images`` with ``spec`` and score it with COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it loads
        truth = COCO(str(annotations))
    categories = {_key(c["name"]): c["id"] for c in truth.loadCats(truth.getCatIds())}
    detector = load_detector(spec)
    found, unmatched = [], set()
    for image_id, info in truth.imgs.items():
        photo = imaging.load_rgb(Path(images) / info["file_name"], max_pixels)
        for chosen in select(detector, detector.detect_one(photo), detector.min_score):
            category = categories.get(_key(chosen.label))
            if category is None:
                unmatched.add(chosen.label)
                continue
            box = chosen.box
            x, y = box.xmin * photo.width, box.ymin * photo.height
            width, height = (box.xmax - box.xmin) * photo.width, (box.ymax - box.ymin) * photo.height
            found.append({"image_id": image_id, "category_id": category, "bbox": [x, y, width, height],
                          "score": chosen.score})  # fmt: skip
    if not found:
        raise ConfigError(f"model {spec.name!r} found nothing on these photos that the annotations name")
    with contextlib.redirect_stdout(io.StringIO()):
        scoring = COCOeval(truth, truth.loadRes(found), "bbox")
        scoring.evaluate()
        scoring.accumulate()
        scoring.summarize()
    result = DetectionEvaluation(
        summary={name: float(value) for name, value in zip(SUMMARY, scoring.stats[:6], strict=True)},
        per_class=_per_class(scoring, truth),
        photos=len(truth.imgs),
        detections=len(found),
        unmatched_labels=sorted(unmatched),
    )
    if report is not None:
        _write(report, spec, result, scoring)
    return result


def _per_class(scoring: Any, truth: Any) -> dict[str, float]:
    """AP@[.5:.95] per category that has annotations (precision [T, R, K, A, M]: all areas, 100 boxes)."""
    precision = scoring.eval["precision"][:, :, :, 0, -1]
    table = {}
    for index, category in enumerate(int(c) for c in scoring.params.catIds):
        values = precision[:, :, index]
        if truth.getAnnIds(catIds=[category]) and (values > -1).any():
            table[truth.loadCats(category)[0]["name"]] = float(values[values > -1].mean())
    return table


def _write(folder: Path, spec: ModelSpec, result: DetectionEvaluation, scoring: Any) -> None:
    from scai.train.plots import chart  # Pillow, as the training report draws

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(vars(result), indent=1) + "\n", encoding="utf-8")
    precision = scoring.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    recall = scoring.params.recThrs
    series = {}
    for label, rows in (("IoU 0.5", precision[:1]), ("IoU 0.5:0.95", precision)):
        with warnings.catch_warnings():  # a recall no class reaches: a gap in the line, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = np.nanmean(np.where(rows > -1, rows, np.nan), axis=(0, 2))
        series[label] = [(float(r), float(p)) for r, p in zip(recall, curve, strict=True) if np.isfinite(p)]
    ticks = [(step / 5, f"{step / 5:.1f}") for step in range(6)]
    chart(f"{spec.name}: precision against recall", series, "recall", (1.0, 1.0), ticks, key_at_top=False).save(
        folder / "precision_recall.png"
    )
    lines = [f"# Detection report: {spec.name}", "", f"Model: `{spec.path.name}`", "", "```", result.table(), "```"]
    if result.unmatched_labels:
        lines += ["", "Labels no annotated category is named like: " + ", ".join(result.unmatched_labels)]
    lines += ["", "![precision and recall](precision_recall.png)", ""]
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
