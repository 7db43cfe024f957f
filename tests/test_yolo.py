"""Detectors of today's kind: ONNX Runtime and TFLite exports of YOLOX and YOLOv8 decoded by
``scai.engines.layouts``. The fast tests need no assets; the rest run the shared models, against a
reference written here independently of the engine (onnxruntime, OpenCV's resize, the decode
as the model's README states it)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DETECT_MODELS, IMAGES, ROOT, needs_assets
from fakes import upload
from PIL import Image

from scai.config import DETECTION, ConfigError, ModelSpec, Settings, Threads
from scai.engines import load_detector
from scai.engines.layouts import Preparation, recognise, suppress
from scai.portal import create_app
from scai.worker import Worker

YOLOX = DETECT_MODELS / "yolox_nano.onnx"
LABELS = DETECT_MODELS / "coco80_labels.txt"
PHOTOS = [
    "grace_hopper.jpg", "pets.jpg", "kite_and_cold.jpg", "cats_and_dogs.jpg", "coco_000000000315.jpg",
    "traffic_0001.bmp", "face.jpg", "g3doc_dogs.jpg",
]  # fmt: skip


# -- no assets ----------------------------------------------------------------------------------


def test_suppression_is_class_wise_and_best_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.5], dtype=np.float32)
    classes = np.array([0, 0, 1, 0])
    kept = suppress(boxes, scores, classes, iou=0.5, limit=10)
    assert kept.tolist() == [1, 2, 3], "the weaker box of class 0 goes; class 1's twin stays"
    assert suppress(boxes, scores, classes, iou=0.5, limit=2).tolist() == [1, 2]


@pytest.mark.parametrize(("letterbox", "offset", "pad_row"), [("topleft", (0, 0), 300), ("center", (0, 104), 10)])
def test_the_letterbox_maps_back_exactly(letterbox: str, offset: tuple[int, int], pad_row: int) -> None:
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    tensor, geometry = Preparation((416, 416), letterbox, 114, True, True, 1.0).apply(image)
    left, top, x_scale, y_scale = int(geometry[0]), int(geometry[1]), geometry[2], geometry[3]
    assert tensor.shape == (1, 3, 416, 416) and (left, top) == offset and (x_scale, y_scale) == (2.08, 2.08)
    assert tensor[0, :, top + 5, left + 5].tolist() == [30, 20, 10], "BGR, 0-255"
    assert tensor[0, :, pad_row, 5].tolist() == [114, 114, 114], "the pad outside the photo"


def test_layouts_are_recognised_from_the_outputs_or_asked_for() -> None:
    assert recognise([(1, 3549, 85)], (416, 416), 80, "m") == "yolox"
    assert recognise([(1, 84, 8400)], (640, 640), 80, "m") == "yolo"  # v8: channels first
    assert recognise([(1, 25200, 85)], (640, 640), 80, "m") == "yolo"  # v5: three anchors a cell
    assert recognise([(1, 8400, 84)], (640, 640), 80, "m") == "yolo"  # v8 transposed
    with pytest.raises(ConfigError, match=r"\[1, 3549, 85\].*could be: yolox, yolo\); set LAYOUT"):
        recognise([(1, 3549, 85)], (416, 416), None, "m")  # no labels: 80 classes or 81?
    with pytest.raises(ConfigError, match=r"could be: none of yolox, yolo, detr"):
        recognise([(1, 1000, 85)], (416, 416), 80, "m")


def test_a_corrupt_onnx_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match="m.onnx cannot be loaded by ONNX Runtime"):
        load_detector(ModelSpec("m", DETECTION, tmp_path / "m.onnx"))


# -- the shared models ----------------------------------------------------------------------------


def run_plainly(model: Path, tensor: np.ndarray) -> np.ndarray:
    """A model's one output for one input, by onnxruntime or the LiteRT interpreter, as they come."""
    if model.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: tensor})[0]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def reference_yolox(
    photo: Path, floor: float = 0.3, iou: float = 0.45, limit: int = 100, model: Path = YOLOX
) -> list[tuple[int, float, list[float]]]:
    """YOLOX-Nano as the assets' README states it, without SCAI: BGR letterbox into the top-left
    corner padded with 114, raw cells decoded by stride, class-wise NMS (OpenCV's); the best
    ``limit`` over ``floor``."""
    image = cv2.imread(str(photo))
    height, width = image.shape[:2]
    ratio = min(416 / height, 416 / width)
    canvas = np.full((416, 416, 3), 114, dtype=np.uint8)
    inner = cv2.resize(image, (int(width * ratio), int(height * ratio)), interpolation=cv2.INTER_LINEAR)
    canvas[: inner.shape[0], : inner.shape[1]] = inner
    out = run_plainly(model, canvas.transpose(2, 0, 1)[None].astype(np.float32))[0]
    cells = [(x, y, s) for s in (8, 16, 32) for y in range(416 // s) for x in range(416 // s)]
    found = []
    for (x, y, s), row in zip(cells, out, strict=True):
        scores = row[4] * row[5:]
        best = int(scores.argmax())
        if scores[best] < floor:
            continue
        cx, cy, w, h = (row[0] + x) * s, (row[1] + y) * s, np.exp(row[2]) * s, np.exp(row[3]) * s
        found.append((best, float(scores[best]), [cx - w / 2, cy - h / 2, w, h]))
    result = []
    for klass, score, (x, y, w, h) in kept_classwise(found, floor, iou):
        box = [y / ratio / height, x / ratio / width, (y + h) / ratio / height, (x + w) / ratio / width]
        result.append((klass, score, [min(1.0, max(0.0, v)) for v in box]))
    return sorted(result, key=lambda found: -found[1])[:limit]


def kept_classwise(found: list, floor: float, iou: float) -> list:
    """(class, score, [x, y, w, h]) candidates thinned by OpenCV's NMS, one class at a time."""
    kept = []
    for klass in {f[0] for f in found}:
        mine = [f for f in found if f[0] == klass]
        keep = cv2.dnn.NMSBoxes([f[2] for f in mine], [f[1] for f in mine], floor, iou)
        kept += [mine[i] for i in np.array(keep).reshape(-1)]
    return kept


def served(spec: ModelSpec, photo: Path) -> list[tuple[int, float, list[float]]]:
    found = load_detector(spec, Threads(1, 2)).detect_one(Image.open(photo).convert("RGB"))
    return [
        (int(c), float(s), b.tolist())
        for b, c, s in zip(found.boxes, found.classes, found.scores, strict=True)
        if s >= 0.3
    ]


def matched(ours: list, theirs: list, tolerance: float = 0.02) -> bool:
    """Every detection of ``theirs`` over 0.5 has one of ``ours`` of its class, boxes within tolerance."""
    return all(
        any(c == klass and np.abs(np.subtract(b, box)).max() <= tolerance for c, _, b in ours)
        for klass, score, box in theirs
        if score >= 0.5
    )


@needs_assets
@pytest.mark.parametrize("photo", PHOTOS)
def test_yolox_onnx_and_its_tflite_twin_give_the_references_boxes(photo: str) -> None:
    reference = reference_yolox(IMAGES / photo)
    onnx = served(ModelSpec("yolox", DETECTION, YOLOX, LABELS), IMAGES / photo)
    tflite = served(
        ModelSpec("yolox16", DETECTION, DETECT_MODELS / "yolox_nano_float16.tflite", LABELS), IMAGES / photo
    )
    assert any(score >= 0.5 for _, score, _ in reference), "a photo with something to find"
    assert matched(onnx, reference) and matched(reference, onnx), (onnx, reference)
    assert matched(tflite, onnx) and matched(onnx, tflite), (tflite, onnx)


@needs_assets
def test_a_users_yolov8_export_is_recognised_and_finds_what_yolox_finds() -> None:
    spec = ModelSpec("v8", DETECTION, DETECT_MODELS / "yolov8n_int8.tflite", LABELS, options={"letterbox": "stretch"})
    detector = load_detector(spec)
    assert detector.layout == "yolo" and detector.input_size == (640, 640)
    found = served(spec, IMAGES / "grace_hopper.jpg")
    person = [box for klass, score, box in found if klass == 0 and score >= 0.5]
    assert person and person[0][0] < 0.1 and person[0][2] > 0.95, found


@needs_assets
def test_a_worker_serves_an_onnx_section_through_the_api(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / f"{DETECTION}.config").write_text(f"[yolox]\nGRAPH = {YOLOX}\nLABELS = {LABELS}\n", encoding="utf-8")
    settings = Settings(session_dir=tmp_path / "session", usr_dir=usr)
    client = create_app(settings).test_client()
    answer = upload(client, (IMAGES / "grace_hopper.jpg").read_bytes(), "/api/v1/detect?wait=0&model=yolox")
    Worker(settings, DETECTION).drain()
    result = client.get(f"/api/v1/sessions/{answer.json['sessname']}?key={answer.json['sesskey']}").json
    labels = [d["label"] for d in result["detections"]]
    assert result["state"] == "complete" and labels[:2] == ["person", "tie"], result


@needs_assets
def test_an_onnx_detector_never_loads_tensorflow() -> None:
    code = (
        "import json, sys; from PIL import Image; from scai.config import ModelSpec; "
        "from scai.engines import load_detector; "
        f"d = load_detector(ModelSpec('y', 'object_detection', {str(YOLOX)!r}, {str(LABELS)!r})); "
        f"d.detect_one(Image.open({str(IMAGES / 'pets.jpg')!r}).convert('RGB')); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == []


def test_an_onnx_classifier_reads_nchw_input_normalised(tmp_path: Path) -> None:
    """A tiny ONNX classifier built here: the mean of each channel, times the identity, as logits.
    A red photo is class 0, a blue one class 2, as (pixel - 127.5) / 127.5 makes them."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        ],
        "means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("weights", TensorProto.FLOAT, [3, 3], np.eye(3).ravel().tolist()),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    from scai.engines import load_classifier

    model = load_classifier(ModelSpec("m", "image_classification", tmp_path / "m.onnx", tmp_path / "labels.txt"))
    assert model.input_size == (8, 8)
    photos = [Image.new("RGB", (40, 30), color) for color in ((250, 10, 10), (10, 10, 250))]
    assert [model.top(row, 1)[0].label for row in model.predict(photos)] == ["red", "blue"]


@needs_assets
def test_labels_that_do_not_match_the_classes_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("\n".join(LABELS.read_text().splitlines()[:79]) + "\n")
    with pytest.raises(ConfigError, match=r"\[1, 3549, 85\] for an input of 416x416 and 79 labels"):
        load_detector(ModelSpec("y", DETECTION, YOLOX, tmp_path / "labels.txt"))
    with pytest.raises(ConfigError, match="model 'y' has 80 classes but 79 labels"):
        load_detector(ModelSpec("y", DETECTION, YOLOX, tmp_path / "labels.txt", options={"layout": "yolox"}))


def test_a_model_that_emits_nan_reports_nothing(tmp_path: Path) -> None:
    """A YOLOX-shaped ONNX model built here whose every output is NaN: no detection, no crash."""
    import onnx
    from onnx import TensorProto, helper

    nan = np.full((1, 3549, 85), np.nan, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["nan"], ["output"])],
        "nan",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 416, 416])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3549, 85])],
        [onnx.numpy_helper.from_array(nan, "nan")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "nan.onnx")
    detector = load_detector(ModelSpec("nan", DETECTION, tmp_path / "nan.onnx", options={"layout": "yolox"}))
    found = detector.detect_one(Image.new("RGB", (64, 48), (1, 2, 3)))
    assert len(found.boxes) == 0 and len(found.scores) == 0


def test_a_tflite_classification_worker_does_not_load_opencv() -> None:
    """OpenCV (17 MB of a worker's memory) is loaded by the YOLO family's preparation only."""
    code = "import sys; from scai.engines import load_classifier, tflite; print('cv2' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def detr_model(path: Path, boxes: np.ndarray, logits: np.ndarray) -> Path:
    """A DETR-shaped ONNX model built here, input [1, 3, 64, 96]: its boxes are ``boxes``, its
    logits ``logits`` plus the mean of the prepared input (zero only when it is prepared right)."""
    import onnx
    from onnx import TensorProto, helper

    queries, classes = logits.shape
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            helper.make_node("Add", ["base", "mean"], ["logits"]),
            helper.make_node("Identity", ["fixed"], ["boxes"]),
        ],
        "detr",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, queries, 4]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, queries, classes]),
        ],
        [
            onnx.numpy_helper.from_array(boxes[None].astype(np.float32), "fixed"),
            onnx.numpy_helper.from_array(logits[None].astype(np.float32), "base"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def sigmoid(value: float) -> float:
    return float(1 / (1 + np.exp(-value)))


def test_a_detr_is_recognised_and_its_best_query_class_pairs_kept_without_suppression(tmp_path: Path) -> None:
    """RT-DETR / RF-DETR style: normalised centre and size, sigmoid logits, a mean and deviation a
    channel. A query may name two classes; a NaN box and a score under the floor are dropped."""
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1], [0.5, 0.5, 1, 1], [np.nan, 0, 0, 0],
                      [0.5, 0.5, 0.2, 0.4]])  # fmt: skip
    logits = np.array([[4, -6, -6], [-6, 2, 1], [-10, -10, -10], [9, 9, 9], [0, -10, -10]])
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    spec = ModelSpec(
        "detr", DETECTION, detr_model(tmp_path / "detr.onnx", boxes, logits), tmp_path / "labels.txt",
        input_mean=(0.2, 0.4, 0.6), input_std=(0.5, 0.25, 0.125),
    )  # fmt: skip
    detector = load_detector(spec)
    assert detector.layout == "detr" and detector.input_size == (64, 96)
    # each channel at its mean once scaled to 0-1: every prepared value 0, the logits as built
    found = detector.detect_one(Image.new("RGB", (200, 100), (51, 102, 153)))
    assert found.classes.tolist() == [0, 1, 2, 0]
    assert np.allclose(found.scores, [sigmoid(4), sigmoid(2), sigmoid(1), sigmoid(0)], atol=1e-4)
    assert np.allclose(found.boxes[0], [0.3, 0.4, 0.7, 0.6]) and np.allclose(found.boxes[1], [0.2, 0.2, 0.3, 0.3])
    shifted = detector.detect_one(Image.new("RGB", (200, 100), (0, 0, 0)))
    assert not np.allclose(shifted.scores[0], sigmoid(4), atol=1e-3), "the preparation reaches the model"


def test_detrs_no_object_class_is_dropped_and_pixel_corners_read(tmp_path: Path) -> None:
    """The original DETR: one class more than the labels ("no object", last), softmax; here with
    corner boxes in input pixels (BOX_FORMAT = xyxy)."""
    boxes = np.array([[9.6, 6.4, 48, 32], [0, 0, 96, 64]])
    logits = np.array([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 8.0]])  # the second query: no object
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    spec = ModelSpec("detr", DETECTION, detr_model(tmp_path / "d.onnx", boxes, logits), tmp_path / "labels.txt",
                     input_mean=127.5, input_std=127.5, options={"box_format": "xyxy", "input_scale": "1"})  # fmt: skip
    found = load_detector(spec).detect_one(Image.new("RGB", (200, 100), (127, 128, 128)))
    best = np.exp(3) / (np.exp(3) + 3)
    with pytest.raises(ConfigError, match="DATA_FORMAT must be nchw or nhwc, not 'chw'"):
        load_detector(replace(spec, options={**spec.options, "data_format": "chw"}))
    assert found.classes.tolist() == [0, 1, 2], "the first query's classes; none of the no-object query's"
    assert abs(found.scores[0] - best) < 1e-3 and np.allclose(found.boxes, [0.1, 0.1, 0.5, 0.5], atol=1e-5)
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ConfigError, match="model 'detr' has 4 classes but 2 labels"):
        load_detector(ModelSpec("detr", DETECTION, spec.path, tmp_path / "two.txt"))
