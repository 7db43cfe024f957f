"""COCO mAP of detectors as served, from ``scai evaluate --coco`` and through the HTTP API
(``/api/v1/detect`` with a low ``min_score``), each equal within 0.005 to a plain interpreter's:
references written here without SCAI (onnxruntime or the LiteRT interpreter, the preparation and
decoding the assets' README states, OpenCV's NMS), their classes mapped to COCO's categories by
index, all scored by pycocotools. For YOLOX-Nano (ONNX and TFLite fp16), a YOLOv8n export added as
a user's model (its layout recognised), and the COCO SSD MobileNet."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from conftest import ASSETS, DETECT_MODELS, Server, needs_assets
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_yolo import kept_classwise, reference_yolox, run_plainly

from scai.cli import main

pytestmark = needs_assets
SUBSET = ASSETS / "datasets" / "coco_subset"
FLOOR, IOU, LIMIT = 0.01, 0.6, 100
LOW = f"min_score_thresh = {FLOOR}\nmax_boxes_to_draw = {LIMIT}\nnms_iou = {IOU}\n"
SECTIONS = f"""[yolox]
GRAPH = {DETECT_MODELS / "yolox_nano.onnx"}
LABELS = {DETECT_MODELS / "coco80_labels.txt"}
{LOW}
[yolox16]
GRAPH = {DETECT_MODELS / "yolox_nano_float16.tflite"}
LABELS = {DETECT_MODELS / "coco80_labels.txt"}
{LOW}
[ssd]
GRAPH = {DETECT_MODELS / "ssd_mobilenet_v1_coco_quant.tflite"}
LABELS = {DETECT_MODELS / "coco_labels.txt"}
{LOW}"""
Found = list[tuple[int, float, list[float]]]  # (class index, score, [ymin, xmin, ymax, xmax] normalised)


def reference_yolov8(photo: Path) -> Found:
    """YOLOv8n int8 as the README states it: RGB stretched to 640x640, 0-1, NHWC; [1, 84, 8400] of
    normalised centre and size then 80 class scores; class-wise NMS."""
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    tensor = cv2.resize(image, (640, 640), interpolation=cv2.INTER_LINEAR)[None].astype(np.float32) / 255
    rows = run_plainly(DETECT_MODELS / "yolov8n_int8.tflite", tensor)[0].T
    found = []
    for cx, cy, w, h, *scores in rows:
        best = int(np.argmax(scores))
        if scores[best] >= FLOOR:
            found.append((best, float(scores[best]), [cx - w / 2, cy - h / 2, w, h]))
    kept = [(k, s, [y, x, y + h, x + w]) for k, s, (x, y, w, h) in kept_classwise(found, FLOOR, IOU)]
    return sorted(kept, key=lambda f: -f[1])[:LIMIT]


def reference_ssd(photo: Path) -> Found:
    """The COCO SSD as the README states it: RGB resized whole with PIL's bilinear filter to 300x300,
    uint8; its post-processing op gives boxes, classes, scores and count."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(DETECT_MODELS / "ssd_mobilenet_v1_coco_quant.tflite"))
    interpreter.allocate_tensors()
    image = Image.open(photo).convert("RGB").resize((300, 300), Image.BILINEAR)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(image)[None])
    interpreter.invoke()
    boxes, classes, scores, count = (interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details())
    return [
        (int(classes[0][i]), float(scores[0][i]), [min(1.0, max(0.0, float(v))) for v in boxes[0][i]])
        for i in range(int(count[0]))
        if scores[0][i] >= FLOOR
    ]


def yolox_reference(model: str) -> Callable[[Path], Found]:
    return lambda photo: reference_yolox(photo, floor=FLOOR, iou=IOU, limit=LIMIT, model=DETECT_MODELS / model)


#: section -> (its reference, how its class indexes map to COCO category ids)
MODELS = {
    "yolox": (yolox_reference("yolox_nano.onnx"), "80"),
    "yolox16": (yolox_reference("yolox_nano_float16.tflite"), "80"),
    "v8": (reference_yolov8, "80"),
    "ssd": (reference_ssd, "90"),
}


def truth() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(SUBSET / "instances.json"))


def scored(annotations: COCO, found: list[dict]) -> float:
    """mAP@[.5:.95] by pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        scoring = COCOeval(annotations, annotations.loadRes(found), "bbox")
        scoring.evaluate()
        scoring.accumulate()
        scoring.summarize()
    return float(scoring.stats[0])


def reference_map(name: str) -> float:
    annotations = truth()
    reference, numbering = MODELS[name]
    ids = sorted(annotations.getCatIds())  # the 80 classes count COCO's categories in order
    found = []
    for image_id, info in annotations.imgs.items():
        photo = SUBSET / "images" / info["file_name"]
        for klass, score, (ymin, xmin, ymax, xmax) in reference(photo):
            w, h = info["width"], info["height"]
            category = ids[klass] if numbering == "80" else klass + 1  # the 90 ids: line i is id i + 1
            box = [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]
            found.append({"image_id": image_id, "category_id": category, "bbox": box, "score": score})
    return scored(annotations, found)


@pytest.fixture(scope="module")
def usr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three sections, and YOLOv8n added as a user adds a model: its layout recognised."""
    folder = tmp_path_factory.mktemp("usr")
    (folder / "object_detection.config").write_text(SECTIONS, encoding="utf-8")
    added = main(
        ["models", "add", "v8", str(DETECT_MODELS / "yolov8n_int8.tflite"), "--labels",
         str(DETECT_MODELS / "coco80_labels.txt"), "--usr", str(folder), "--set", "LETTERBOX=stretch",
         *(arg for key, value in (("MIN_SCORE_THRESH", FLOOR), ("MAX_BOXES_TO_DRAW", LIMIT), ("NMS_IOU", IOU))
           for arg in ("--set", f"{key}={value}"))]
    )  # fmt: skip
    assert added == 0
    return folder


@pytest.fixture(scope="module")
def references() -> dict[str, float]:
    return {name: reference_map(name) for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_scai_evaluate_gives_the_references_map(
    name: str, usr: Path, references: dict[str, float], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "report"
    status = main(
        ["evaluate", str(SUBSET / "images"), "--coco", str(SUBSET / "instances.json"), "--model", name,
         "--usr", str(usr), "--report", str(report)]
    )  # fmt: skip
    assert status == 0 and capsys.readouterr().out.startswith("33 photos, ")
    metrics = json.loads((report / "metrics.json").read_text())
    served = metrics["summary"]["mAP@[.5:.95]"]
    print(f"{name}: mAP {served:.4f} from scai evaluate, {references[name]:.4f} the reference")
    assert abs(served - references[name]) <= 0.005, (name, served, references[name])
    assert 0.15 < served < 0.7 and metrics["per_class"]["person"] > 0.15
    assert (report / "precision_recall.png").read_bytes()[:4] == b"\x89PNG"
    assert "mAP@[.5:.95]" in (report / "report.md").read_text()


@pytest.mark.slow
def test_the_http_apis_map_is_the_references(usr: Path, references: dict[str, float], tmp_path: Path) -> None:
    """Every photo posted to /api/v1/detect for every model; the answers scored as they come."""
    annotations = truth()
    categories = {c["name"].replace(" ", ""): c["id"] for c in annotations.loadCats(annotations.getCatIds())}
    spelled = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv"}  # Darknet
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log")
    try:
        for name in MODELS:
            found = []
            for image_id, info in annotations.imgs.items():
                photo = (SUBSET / "images" / info["file_name"]).read_bytes()
                answer = requests.post(
                    f"{server.url}/api/v1/detect", params={"model": name, "min_score": FLOOR, "wait": 60},
                    files={"photo": (info["file_name"], photo)}, timeout=90,
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
                for d in answer.json()["detections"]:
                    category = categories.get(spelled.get(d["label"], d["label"]).replace(" ", ""))
                    box = d["box_normalized"]
                    x, y = box["xmin"] * info["width"], box["ymin"] * info["height"]
                    w, h = (box["xmax"] - box["xmin"]) * info["width"], (box["ymax"] - box["ymin"]) * info["height"]
                    if category is not None:
                        found.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                                      "score": d["score"]})  # fmt: skip
            served = scored(annotations, found)
            print(f"{name}: mAP {served:.4f} through the API, {references[name]:.4f} the reference")
            assert abs(served - references[name]) <= 0.005, (name, served, references[name])
    finally:
        server.stop()
