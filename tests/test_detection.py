"""Object detection end to end: a real ``scai serve`` with the default person detector and the COCO
SSD from the shared assets, the reference table, the annotated PNG, and every detection layout."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import (
    ASSETS,
    DETECT_MODELS,
    IMAGES,
    ROOT,
    Server,
    needs_assets,
    reference_detections,
    scai_command,
    stop,
    wait_for,
    write_usr,
)
from PIL import Image

from object_detection import label_map
from scai import config
from scai.config import ConfigError, ModelSpec
from scai.engines import load_detector
from scai.store.folder import FolderStore

pytestmark = [needs_assets, pytest.mark.slow]


@pytest.fixture(scope="module")
def detect_server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("detect")
    running = Server(folder / "session", write_usr(folder / "usr", ("object_detection",)), folder / "serve.log")
    yield running
    running.stop()


def detect(server: Server, image: Path | bytes, name: str = "photo.jpg", **params: object) -> requests.Response:
    data = image.read_bytes() if isinstance(image, Path) else image
    params.setdefault("wait", 60)
    return requests.post(f"{server.url}/api/v1/detect", params=params, files={"photo": (name, data)}, timeout=90)


def test_reference_table_is_read() -> None:
    table = reference_detections()
    assert len(table) == 29 and table["dragonfly.bmp"] == []
    assert table["grace_hopper.jpg"][1] == ("tie", 0.63, [0.71, 0.44, 0.90, 0.57])


def clip(box: list[float]) -> list[float]:
    return [min(max(v, 0.0), 1.0) for v in box]


def box_distance(detection: dict, want: list[float]) -> float:
    got = detection["box_normalized"]
    return max(abs(a - b) for a, b in zip([got["ymin"], got["xmin"], got["ymax"], got["xmax"]], want, strict=True))


def edge_pixels_changed(original: np.ndarray, annotated: np.ndarray, box: dict[str, int]) -> float:
    """Share of pixels along the box's four edges that the drawing changed."""
    top, bottom, left, right = box["ymin"], box["ymax"], box["xmin"], box["xmax"]
    edges = [(top, slice(left, right + 1)), (bottom, slice(left, right + 1))]
    edges += [(slice(top, bottom + 1), left), (slice(top, bottom + 1), right)]
    changed = [np.any(original[e] != annotated[e], axis=-1) for e in edges]
    return float(np.concatenate(changed).mean())


@pytest.mark.parametrize("image", sorted(reference_detections()))
def test_coco_ssd_matches_the_reference(detect_server: Server, image: str) -> None:
    response = detect(detect_server, IMAGES / image, image, model="coco", min_score=0.5)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference_detections()[image]
    found = body["detections"]
    assert sorted(d["label"] for d in found) == sorted(label for label, _, _ in expected)
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    unmatched = list(found)
    for label, score, box in expected:
        want = clip(box)
        candidates = [d for d in unmatched if d["label"] == label]
        best = min(candidates, key=lambda d: box_distance(d, want))
        assert box_distance(best, want) <= 0.02, f"{label} {score}: {best['box_normalized']} vs {want}"
        assert abs(best["score"] - score) <= 0.01
        unmatched.remove(best)

    original = np.asarray(Image.open(IMAGES / image).convert("RGB"))
    output = requests.get(detect_server.url + body["links"]["output"])
    assert output.status_code == 200 and output.headers["Content-Type"] == "image/png"
    annotated = Image.open(io.BytesIO(output.content))
    assert annotated.format == "PNG" and annotated.size == (original.shape[1], original.shape[0])
    pixels = np.asarray(annotated.convert("RGB"))
    for d in found:
        height, width = original.shape[:2]
        box = d["box"]
        assert 0 <= box["xmin"] <= box["xmax"] < width and 0 <= box["ymin"] <= box["ymax"] < height
        assert edge_pixels_changed(original, pixels, box) > 0.9, f"box of {d['label']} not drawn"
    if not found:
        assert np.array_equal(pixels, original), "nothing detected, nothing drawn"


def test_default_person_detector_finds_grace_hopper(detect_server: Server) -> None:
    body = detect(detect_server, IMAGES / "grace_hopper.jpg").json()
    assert body["model"] == "default"
    assert [(d["label"], d["class_id"]) for d in body["detections"]] == [("person", 1)]
    assert body["detections"][0]["score"] > 0.9
    assert body["result"] == {"person": f"{body['detections'][0]['score'] * 100:.1f}%"}


def test_original_detection_routes(detect_server: Server) -> None:
    photo = (IMAGES / "pets.jpg").read_bytes()
    created = requests.post(
        f"{detect_server.url}/objectdetection?model=coco", files={"photo": ("pets.jpg", photo)}
    ).json()
    assert created["status"] == "success"
    task, key = created["sessname"], created["sesskey"]
    requests.get(f"{detect_server.url}/api/v1/sessions/{task}", params={"key": key, "wait": 60})
    params = {"task": task, "key": key}
    body = requests.get(f"{detect_server.url}/objectdetection/odres", params=params).json()
    assert body["state"] == "complete" and body["job"] == "object_detection"
    assert body["result_image"] == "output.png" and [d["label"] for d in body["detections"]] == ["dog", "dog"]
    upload = requests.get(f"{detect_server.url}/objectdetection/odres/odiptimg", params=params)
    assert upload.content == photo
    annotated = requests.get(f"{detect_server.url}/objectdetection/odres/odresimg", params=params)
    assert annotated.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(annotated.content)).size == Image.open(IMAGES / "pets.jpg").size
    assert (
        requests.get(f"{detect_server.url}/objectdetection/odres/odresimg", params={**params, "key": "x"}).status_code
        == 403
    )
    wrong_job = requests.get(f"{detect_server.url}/imageclassification/imgclassres", params=params)
    assert wrong_job.status_code == 404


def test_min_score_filters_and_is_checked(detect_server: Server) -> None:
    low = detect(detect_server, IMAGES / "face.jpg", model="coco", min_score=0.3).json()["detections"]
    high = detect(detect_server, IMAGES / "face.jpg", model="coco", min_score=0.65).json()["detections"]
    assert len(low) > len(high) >= 1 and all(d["score"] >= 0.65 for d in high)
    for bad in ("abc", "1.5", "-0.1"):
        response = detect(detect_server, IMAGES / "face.jpg", min_score=bad)
        assert response.status_code == 400 and "min_score" in response.json()["message"]


@pytest.mark.parametrize(
    "data, status",
    [(b"", 400), (b"text, not an image", 400), (None, 413)],
    ids=["empty", "text", "bomb"],
)
def test_bad_uploads_on_detection_routes(detect_server: Server, data: bytes | None, status: int) -> None:
    from images import png_bomb

    data = png_bomb() if data is None else data
    for route in ("/objectdetection", "/api/v1/detect"):
        response = requests.post(detect_server.url + route, files={"photo": ("x.jpg", data)})
        assert response.status_code == status and response.json()["status"] == status


def test_truncated_image_fails_its_session_only(detect_server: Server) -> None:
    data = (IMAGES / "pets.jpg").read_bytes()
    failed = detect(detect_server, data[: len(data) // 3], "cut.jpg", model="coco")
    assert failed.status_code == 422 and failed.json()["state"] == "failure"
    assert detect(detect_server, IMAGES / "pets.jpg", model="coco").status_code == 200


def test_unknown_model_and_bad_task(detect_server: Server) -> None:
    assert detect(detect_server, IMAGES / "pets.jpg", model="nope").status_code == 400
    response = requests.get(f"{detect_server.url}/objectdetection/odres", params={"task": "../x", "key": "k"})
    assert response.status_code == 400


# -- layouts ----------------------------------------------------------------------------------


def test_label_maps_in_both_forms(tmp_path: Path) -> None:
    pbtxt = tmp_path / "map.pbtxt"
    pbtxt.write_text(
        '# people\nitem {\n  id: 1\n  name: \'person\'\n}\nitem { name: "kite" id: 38 display_name: "Kite" }\n'
    )
    assert label_map.load(pbtxt, 0) == {1: "person", 38: "Kite"}
    coco = label_map.load(DETECT_MODELS / "coco_labels.txt", 0)
    assert coco[0] == "person" and coco[17] == "dog" and 11 not in coco and "???" not in coco.values()
    assert label_map.load(DETECT_MODELS / "coco_labels.txt", 1)[1] == "person"


def square_detector(folder: Path) -> Path:
    """A tiny TF2 Object Detection API SavedModel: it finds the bright region of the image."""
    import tensorflow as tf

    class Bright(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def detect(self, input_tensor):
            bright = tf.reduce_mean(tf.cast(input_tensor[0], tf.float32), axis=-1) > 128
            rows = tf.where(tf.reduce_any(bright, axis=1))[:, 0]
            cols = tf.where(tf.reduce_any(bright, axis=0))[:, 0]
            height = tf.cast(tf.shape(input_tensor)[1] - 1, tf.float32)
            width = tf.cast(tf.shape(input_tensor)[2] - 1, tf.float32)
            box = tf.stack(
                [
                    tf.cast(tf.reduce_min(rows), tf.float32) / height,
                    tf.cast(tf.reduce_min(cols), tf.float32) / width,
                    tf.cast(tf.reduce_max(rows), tf.float32) / height,
                    tf.cast(tf.reduce_max(cols), tf.float32) / width,
                ]
            )
            share = tf.reduce_mean(tf.cast(bright, tf.float32))
            return {
                "detection_boxes": tf.reshape(tf.concat([box, [0.0, 0.0, 0.1, 0.1]], 0), [1, 2, 4]),
                "detection_scores": tf.reshape(tf.stack([0.5 + share, 0.1]), [1, 2]),
                "detection_classes": tf.constant([[2.0, 1.0]]),
                "num_detections": tf.constant([2.0]),
            }

    module = Bright()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.detect})
    return folder


def test_tf2_savedmodel_layout(tmp_path: Path) -> None:
    model = square_detector(tmp_path / "bright")
    labels = tmp_path / "labels.pbtxt"
    labels.write_text("item { id: 1 name: 'noise' }\nitem { id: 2 name: 'square' }\n")
    spec = ModelSpec("bright", config.DETECTION, model, labels, options={"min_score_thresh": "0.3"})
    engine = load_detector(spec)
    assert engine.first_class_id == 1
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:61, 50:151] = 255
    from scai.tasks import detection_fields, select

    chosen = select(engine, engine.detect_one(Image.fromarray(image)), engine.min_score)
    fields = detection_fields(chosen, 200, 100)
    assert [(d["label"], d["class_id"]) for d in fields["detections"]] == [("square", 2)]
    assert fields["detections"][0]["box"] == {"xmin": 50, "ymin": 20, "xmax": 150, "ymax": 60}
    assert abs(fields["detections"][0]["score"] - (0.5 + 41 * 101 / 20000)) < 1e-5


def frozen_graph_without_scores(path: Path) -> Path:
    """An Object Detection API-shaped TF1 graph that lacks ``detection_scores``."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [None, None, None, 3], name="image_tensor")
        batch = tf.shape(image)[0]
        tf.zeros(tf.stack([batch, 1, 4]), name="detection_boxes")
        tf.ones(tf.stack([batch, 1]), name="detection_classes")
        tf.ones(tf.stack([batch]), name="num_detections")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


@pytest.mark.parametrize(
    "model, missing",
    [
        ("frozen", "detection_scores:0"),
        (ASSETS / "models" / "classify" / "mobilenet_v2_1.0_224_quant.tflite", "no detection layout SCAI knows"),
    ],
    ids=["frozen-graph", "classifier-tflite"],
)
def test_a_model_of_the_wrong_layout_fails_its_sessions_not_the_worker(tmp_path: Path, model, missing: str) -> None:
    """The worker names the missing output at start-up and keeps serving: an exit would stop
    every detection model, and the supervisor would not restart it."""
    path = frozen_graph_without_scores(tmp_path / "broken.pb") if model == "frozen" else model
    (tmp_path / "object_detection.config").write_text(f"[default]\nPATH_TO_CKPT = {path}\n")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_detector(config.load_models(tmp_path, config.DETECTION)["default"])
    store = FolderStore(tmp_path / "s")
    session, _ = store.create(config.DETECTION, "default", (IMAGES / "grace_hopper.jpg").read_bytes(), "jpg", "p.jpg")
    log = tmp_path / "worker.log"
    command = scai_command("worker", "detect", "--usr", str(tmp_path), "--session-dir", str(tmp_path / "s"))
    worker = subprocess.Popen(command, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        failed = wait_for(lambda: store.state(session)["state"] == "failure" and store.state(session), 120, "a failure")
        assert failed["message"].startswith("model 'default' unavailable") and missing in failed["message"]
        assert worker.poll() is None, log.read_text()
        assert missing in log.read_text() and "Traceback" not in log.read_text()
    finally:
        stop(worker)


def test_detect_command_writes_the_annotated_png(tmp_path: Path) -> None:
    output = tmp_path / "annotated.png"
    run = subprocess.run(
        scai_command("detect", str(IMAGES / "grace_hopper.jpg"), "--output", str(output), "--json"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    detections = json.loads(run.stdout)
    assert [d["label"] for d in detections] == ["person"] and detections[0]["score"] > 0.9
    assert Image.open(output).size == Image.open(IMAGES / "grace_hopper.jpg").size
