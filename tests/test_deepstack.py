"""The real DeepStack / CodeProject.AI client libraries against a real ``scai serve``, whose COCO
detector was installed by ``scai models pull coco-ssd --from`` a local HTTP mirror of the shared
model files. Boxes are checked against the plain TFLite interpreter's (the assets' reference
table) by IoU; the fast layer (test_deepstack_fast.py) covers the routes' edges."""

from __future__ import annotations

import functools
import http.server
import io
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from codeprojectai.core import CodeProjectAIObject
from conftest import DETECT_MODELS, IMAGES, ROOT, Server, needs_assets, reference_detections, scai_command, write_usr
from deepstack.core import DeepstackException, DeepstackObject, DeepstackScene
from deepstack_sdk import Detection, SceneRecognition, ServerConfig
from PIL import Image
from test_yolo import reference_yolox

from scai import apikeys

pytestmark = [needs_assets, pytest.mark.slow]

#: Photos with people in the reference table (the plain interpreter's detections).
PEOPLE = ["girl.jpg", "grace_hopper.jpg", "squat.bmp", "coco_000000000431.jpg", "coco_000000000446.jpg"]


@pytest.fixture(scope="module")
def mirror() -> Iterator[str]:
    """The shared detection models served over HTTP, as a mirror of their public source."""
    handler = functools.partial(_QuietHandler, directory=str(DETECT_MODELS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mirror: str) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("deepstack")
    usr = write_usr(folder / "usr")  # classification only: the detector comes from the pull
    pulled = subprocess.run(
        scai_command("models", "pull", "coco-ssd", "--from", mirror, "--usr", str(usr)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "[coco-ssd]" in (usr / "object_detection.config").read_text()
    with (usr / "object_detection.config").open("a", encoding="utf-8") as config:  # a model a user brings
        config.write(
            f"\n[yolox]\nGRAPH = {DETECT_MODELS / 'yolox_nano.onnx'}\nLABELS = {DETECT_MODELS / 'coco80_labels.txt'}\n"
        )
    running = Server(folder / "session", usr, folder / "serve.log")
    yield running
    running.stop()


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def reference_people(image: str) -> list[tuple[float, float, float, float]]:
    """The interpreter's person boxes in pixels (x_min, y_min, x_max, y_max) of the stored image."""
    width, height = Image.open(IMAGES / image).size
    return [
        (max(x1, 0) * (width - 1), max(y1, 0) * (height - 1), min(x2, 1) * (width - 1), min(y2, 1) * (height - 1))
        for label, _, (y1, x1, y2, x2) in reference_detections()[image]
        if label == "person"
    ]


def assert_people_found(image: str, predictions: list) -> None:
    """Every reference person has a prediction with IoU >= 0.5; predictions come best first."""
    boxes = [(p["x_min"], p["y_min"], p["x_max"], p["y_max"]) for p in predictions if p["label"] == "person"]
    for want in reference_people(image):
        assert max((iou(want, got) for got in boxes), default=0) >= 0.5, (image, want, boxes)
    confidences = [p["confidence"] for p in predictions]
    assert confidences == sorted(confidences, reverse=True)


@pytest.mark.parametrize("image", PEOPLE)
def test_deepstack_python_finds_the_people(served: Server, image: str) -> None:
    client = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60, min_confidence=0.4)
    predictions = client.detect((IMAGES / image).read_bytes())
    assert_people_found(image, predictions)


@pytest.mark.parametrize("image", PEOPLE)
def test_codeproject_ai_api_finds_the_people(served: Server, image: str) -> None:
    client = CodeProjectAIObject(ip="127.0.0.1", port=served.port, timeout=60, min_confidence=0.4)
    assert_people_found(image, client.detect((IMAGES / image).read_bytes()))


@pytest.mark.parametrize("image", PEOPLE)
def test_deepstack_sdk_finds_the_people(served: Server, image: str) -> None:
    found = Detection(ServerConfig(served.url)).detectObject(str(IMAGES / image), min_confidence=0.4)
    assert_people_found(image, [vars(item) for item in found])


def test_a_frigate_style_request(served: Server) -> None:
    """As Frigate's DeepStack detector: a 320x320 JPEG as ``image`` with ``api_key``, no
    ``min_confidence``; it reads at most 20 predictions, stopping at the first below 0.4."""
    frame = Image.open(IMAGES / "girl.jpg").convert("RGB").resize((320, 320))
    sent = io.BytesIO()
    frame.save(sent, format="JPEG")
    response = requests.post(
        f"{served.url}/v1/vision/detection", data={"api_key": ""}, files={"image": sent.getvalue()}, timeout=60
    )
    predictions = response.json()["predictions"]
    read = []
    for detection in predictions[:20]:
        if detection["confidence"] < 0.4:
            break
        read.append(detection)
    assert read == predictions, "best first, none below the default 0.4"
    people = [(d["x_min"] / 319, d["y_min"] / 319, d["x_max"] / 319, d["y_max"] / 319) for d in read]
    label, _, (y1, x1, y2, x2) = reference_detections()["girl.jpg"][0]  # normalised: any frame size
    assert label == "person" and max(iou((x1, y1, x2, y2), got) for got in people) >= 0.5


def test_the_pulled_detector_finds_the_dogs_and_the_cats(served: Server) -> None:
    photo = (IMAGES / "cats_and_dogs.jpg").read_bytes()
    deepstack = requests.post(f"{served.url}/v1/vision/detection", files={"image": photo}, timeout=60).json()
    api = requests.post(
        f"{served.url}/api/v1/detect",
        params={"model": "coco-ssd", "min_score": 0.4, "wait": 60},
        files={"photo": ("cats_and_dogs.jpg", photo)},
        timeout=60,
    ).json()
    for labels in ([p["label"] for p in deepstack["predictions"]], [d["label"] for d in api["detections"]]):
        assert labels.count("dog") >= 2 and labels.count("cat") >= 1, labels
    assert len(deepstack["predictions"]) == len(api["detections"])


def test_scene_custom_list_and_update_through_the_clients(served: Server) -> None:
    photo = (IMAGES / "parrot.jpg").read_bytes()
    top = served.classify(photo).json()["predictions"][0]
    scene = DeepstackScene(ip="127.0.0.1", port=served.port, timeout=60).recognize(photo)
    assert scene["label"] == top["label"] and abs(scene["confidence"] - top["score"]) < 1e-6
    sdk_scene = SceneRecognition(ServerConfig(served.url)).recognizeScene(photo)
    assert sdk_scene.label == top["label"]
    custom = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60, custom_model="coco-ssd")
    assert "bird" in {p["label"] for p in custom.detect(photo)}
    listed = requests.post(f"{served.url}/v1/vision/custom/list", timeout=10).json()
    assert listed == {"success": True, "models": ["coco-ssd", "yolox"]}
    update = requests.get(f"{served.url}/v1/status/updateavailable", timeout=10).json()
    assert update["success"] is True and update["updateAvailable"] is False


def test_the_clients_get_yolox_boxes_from_a_custom_model(served: Server) -> None:
    """An ONNX YOLOX section a user added, through deepstack-python and codeproject-ai-api:
    predictions best first, lower-case COCO names (Frigate's plugin reads them so)."""
    photo = (IMAGES / "kite_and_cold.jpg").read_bytes()
    deepstack = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60, custom_model="yolox").detect(photo)
    codeproject = CodeProjectAIObject(ip="127.0.0.1", port=served.port, timeout=60, custom_model="yolox")
    for predictions in (deepstack, codeproject.detect(photo)):
        labels = [p["label"] for p in predictions]
        scores = [p["confidence"] for p in predictions]
        assert labels.count("person") >= 2 and "kite" in labels, labels
        assert scores == sorted(scores, reverse=True) and all(label == label.lower() for label in labels)


def test_the_clients_get_yolox_boxes_from_the_default_route_once_it_is_pulled(mirror: str, tmp_path: Path) -> None:
    """With yolox-nano pulled beside coco-ssd, the default route serves the more accurate one: the
    clients' boxes are the plain onnxruntime reference's (test_yolo), best first, lower-case."""
    usr = write_usr(tmp_path / "usr")
    for name in ("coco-ssd", "yolox-nano"):
        pulled = subprocess.run(
            scai_command("models", "pull", name, "--from", mirror, "--usr", str(usr)),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log")
    try:
        photo = IMAGES / "kite_and_cold.jpg"
        width, height = Image.open(photo).size
        wanted = [
            (x1 * width, y1 * height, x2 * width, y2 * height)
            for klass, score, (y1, x1, y2, x2) in reference_yolox(photo)
            if klass == 0 and score >= 0.5
        ]
        clients = (DeepstackObject(ip="127.0.0.1", port=server.port, timeout=60),
                   CodeProjectAIObject(ip="127.0.0.1", port=server.port, timeout=60))  # fmt: skip
        for client in clients:
            predictions = client.detect(photo.read_bytes())
            scores = [p["confidence"] for p in predictions]
            people = [(p["x_min"], p["y_min"], p["x_max"], p["y_max"]) for p in predictions if p["label"] == "person"]
            assert scores == sorted(scores, reverse=True) and all(p["label"] == p["label"].lower() for p in predictions)
            assert len(people) >= len(wanted) >= 2
            assert all(max(iou(want, got) for got in people) >= 0.9 for want in wanted), (wanted, people)
    finally:
        server.stop()


def test_bad_input_is_a_deepstack_4xx(served: Server) -> None:
    client = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60)
    with pytest.raises(DeepstackException, match="status code: 400"):
        client.detect(b"not an image at all")
    answer = requests.post(f"{served.url}/v1/vision/detection", files={"image": b"GIF89a"}, timeout=30)
    assert answer.status_code == 400 and answer.json()["success"] is False
    too_sure = requests.post(
        f"{served.url}/v1/vision/detection",
        data={"min_confidence": "1.5"},
        files={"image": (IMAGES / "girl.jpg").read_bytes()},
        timeout=30,
    )
    assert too_sure.status_code == 400 and "min_confidence" in too_sure.json()["error"]


def test_keys_set_while_serving(served: Server) -> None:
    keys = Path(served.session_dir).parent / "usr" / apikeys.KEYS_FILE
    keys.write_text("camera-key\n", encoding="utf-8")
    try:
        photo = (IMAGES / "girl.jpg").read_bytes()
        with pytest.raises(DeepstackException, match="status code: 401"):
            DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60, api_key="guess").detect(photo)
        keyed = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60, api_key="camera-key", min_confidence=0.4)
        assert_people_found("girl.jpg", keyed.detect(photo))
        refused = requests.post(f"{served.url}/api/v1/classify", files={"photo": ("p.jpg", photo)}, timeout=30)
        assert refused.status_code == 401 and "camera-key" not in refused.text
    finally:
        keys.unlink()


def test_answered_requests_leave_no_session_behind(served: Server) -> None:
    from conftest import wait_for

    from scai.store.folder import FolderStore

    store = FolderStore(served.session_dir)
    before = set(store.sessions())
    client = DeepstackObject(ip="127.0.0.1", port=served.port, timeout=60)
    for _ in range(10):
        client.detect((IMAGES / "girl.jpg").read_bytes())
    wait_for(lambda: set(store.sessions()) == before, 10, "the answered sessions to be removed")
