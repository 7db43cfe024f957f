"""``scai evaluate --coco``: COCO mAP of a detector as served, equal within 0.005 to a plain
interpreter's (the reference in ``test_yolo``, written without SCAI, its classes mapped to COCO's
categories by index) scored by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import pytest
from conftest import ASSETS, DETECT_MODELS, needs_assets
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_yolo import reference_yolox

from scai.cli import main

pytestmark = needs_assets
SUBSET = ASSETS / "datasets" / "coco_subset"
SECTION = f"""[yolox]
GRAPH = {DETECT_MODELS / "yolox_nano.onnx"}
LABELS = {DETECT_MODELS / "coco80_labels.txt"}
min_score_thresh = 0.01
max_boxes_to_draw = 100
nms_iou = 0.6
"""


def reference_map() -> float:
    """mAP@[.5:.95] of YOLOX-Nano run by the reference: score >= 0.01, NMS at 0.6, 100 a photo."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(SUBSET / "instances.json"))
    ids = sorted(truth.getCatIds())  # COCO's 80 categories, in the order the 80 classes count them
    found = []
    for image_id, info in truth.imgs.items():
        photo = SUBSET / "images" / info["file_name"]
        height, width = cv2.imread(str(photo)).shape[:2]
        for klass, score, (ymin, xmin, ymax, xmax) in reference_yolox(photo, floor=0.01, iou=0.6, limit=100):
            box = [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]
            found.append({"image_id": image_id, "category_id": ids[klass], "bbox": box, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        scoring = COCOeval(truth, truth.loadRes(found), "bbox")
        scoring.evaluate()
        scoring.accumulate()
        scoring.summarize()
    return float(scoring.stats[0])


def test_the_served_map_equals_the_references(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "object_detection.config").write_text(SECTION, encoding="utf-8")
    report = tmp_path / "report"
    status = main(
        ["evaluate", str(SUBSET / "images"), "--coco", str(SUBSET / "instances.json"), "--model", "yolox",
         "--usr", str(tmp_path), "--report", str(report)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("33 photos, ")
    metrics = json.loads((report / "metrics.json").read_text())
    served, reference = metrics["summary"]["mAP@[.5:.95]"], reference_map()
    assert abs(served - reference) <= 0.005, (served, reference)
    assert 0.2 < served < 0.6 and metrics["per_class"]["person"] > 0.3
    assert (report / "precision_recall.png").read_bytes()[:4] == b"\x89PNG"
    assert "mAP@[.5:.95]" in (report / "report.md").read_text()
