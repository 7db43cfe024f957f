"""``scai serve`` as production serving: uwsgi, worker processes sized and supervised, workers that
import only what their models need, and decoding only the pixels a model needs."""

from __future__ import annotations

import io
import os
import re
import signal
from pathlib import Path

import pytest
import requests
from conftest import DETECT_MODELS, IMAGES, Server, needs_assets, wait_for, write_usr
from PIL import Image

from scai import imaging
from scai.config import CLASSIFICATION, DETECTION, ModelSpec, Settings
from scai.store.folder import FolderStore
from scai.tasks import DetectionTask, Item, annotated_png
from scai.worker import Worker

pytestmark = [needs_assets, pytest.mark.slow]


def watching(log: Path) -> set[str]:
    """Pids of the workers that have started serving, from the log."""
    return set(re.findall(r"scai\.worker\[(\d+)\] INFO watching", log.read_text()))


def twelve_megapixels(name: str = "grace_hopper.jpg") -> bytes:
    buffer = io.BytesIO()
    Image.open(IMAGES / name).convert("RGB").resize((4032, 3024), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_a_killed_worker_is_restarted_and_serves_again(tmp_path: Path, usr: Path) -> None:
    log = tmp_path / "serve.log"
    server = Server(tmp_path / "session", usr, log, "--workers", "2")
    try:
        first = wait_for(lambda: len(watching(log)) == 2 and watching(log), 30, "two workers")
        uwsgi = [p for p in os.listdir("/proc") if p.isdigit() and b"uwsgi" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert uwsgi, "the portal runs under uwsgi"
        for victim in first:  # both: whatever serves the next upload is a restarted worker
            os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: log.read_text().count("was killed by SIGKILL") == 2, 10, "the supervisor to notice")
        wait_for(lambda: len(watching(log) - first) == 2, 30, "two new workers")
        assert "restarting it in 1 s" in log.read_text()
        response = server.classify(IMAGES / "parrot.jpg", model="mobilenet_v2")
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "macaw"
        complete = re.compile(r"scai\.worker\[(\d+)\] INFO complete")  # logged just after the result
        done_by = wait_for(lambda: complete.findall(log.read_text()), 10, "the worker's log line")
        assert done_by[-1] in watching(log) - first
    finally:
        server.stop()
    assert not [p for p in watching(log) if Path(f"/proc/{p}").exists()], "every worker stopped with serve"


def test_a_worker_whose_model_cannot_load_keeps_running_and_health_says_why(tmp_path: Path) -> None:
    """A missing model file fails that model's sessions; the worker does not exit (it used to,
    with status 2, and was never restarted: uploads then waited forever)."""
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / "image_classification.config").write_text(f"[default]\nGRAPH = {tmp_path / 'missing.tflite'}\n")
    log = tmp_path / "serve.log"
    server = Server(tmp_path / "session", usr, log, "--workers", "1", healthy=False)
    try:
        wait_for(lambda: watching(log), 30, "the worker to serve")
        health = requests.get(f"{server.url}/healthz", timeout=5)  # the portal says what is wrong
        assert health.status_code == 503 and health.json()["jobs"]["classify"]["workers"] == 1
        assert health.json()["status"].startswith("classify model 'default' unavailable: model file"), health.json()
        failed = server.classify(IMAGES / "grace_hopper.jpg").json()
        assert failed["state"] == "failure" and failed["message"].startswith("model 'default' unavailable")
        assert "not restarting" not in log.read_text()
    finally:
        server.stop()


def test_a_tflite_detection_worker_never_loads_tensorflow(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / "object_detection.config").write_text(
        f"[default]\nPATH_TO_CKPT = {DETECT_MODELS / 'ssd_mobilenet_v1_coco_quant.tflite'}\n"
        f"PATH_TO_LABELS = {DETECT_MODELS / 'coco_labels.txt'}\n"
    )
    log = tmp_path / "serve.log"
    server = Server(tmp_path / "session", usr, log, "--workers", "1")
    try:
        (pid,) = wait_for(lambda: watching(log), 30, "the detection worker")
        response = requests.post(
            f"{server.url}/api/v1/detect?wait=30", files={"photo": ("p.jpg", twelve_megapixels())}, timeout=60
        )
        assert response.status_code == 200 and response.json()["detections"][0]["label"] == "person"
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps.replace("tensorflow_lite", ""), "full TensorFlow is mapped"
        assert "ai_edge_litert" in maps
    finally:
        server.stop()


def coco_ssd() -> ModelSpec:
    return ModelSpec(
        "coco", DETECTION, DETECT_MODELS / "ssd_mobilenet_v1_coco_quant.tflite", DETECT_MODELS / "coco_labels.txt"
    )


def distance(a: dict, b: dict) -> float:
    return max(abs(a["box_normalized"][k] - b["box_normalized"][k]) for k in ("xmin", "ymin", "xmax", "ymax"))


def test_drafted_detection_keeps_the_boxes_and_draws_at_the_upload_size(tmp_path: Path) -> None:
    task = DetectionTask(Settings(session_dir=tmp_path / "s", usr_dir=tmp_path))
    engine = task.load(coco_ssd())
    source = tmp_path / "input.jpg"
    for name in ("kite_and_cold.jpg", "grace_hopper.jpg", "coco_000000000431.jpg", "g3doc_dogs.jpg"):
        source.write_bytes(twelve_megapixels(name))
        results = {}
        for fit in (None, engine.input_size[::-1]):
            image = imaging.load_rgb(source, 50_000_000, fit)
            results[fit is None] = task.run(engine, [Item(image, {}, source)])[0]
        png = annotated_png(results[False], source, 50_000_000)
        assert Image.open(io.BytesIO(png)).size == (4032, 3024), "drawn on the upload at its own size"
        full, drafted = results[True]["detections"], results[False]["detections"]
        assert full, name
        # Each clear detection (a margin above the 0.5 threshold) of one decode has its twin in the
        # other; close scores may swap places, and one just at the threshold may come or go.
        for ours, theirs in ((full, drafted), (drafted, full)):
            for a in (d for d in ours if d["score"] >= 0.6):
                assert any(a["label"] == b["label"] and distance(a, b) <= 0.02 for b in theirs), (name, a, theirs)
        assert results[False]["image_size"] == {"width": 4032, "height": 4032 * 3 // 4}


@pytest.mark.parametrize("setting", ["1", "0"])
def test_draft_decoding_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("SCAI_DRAFT_DECODE", setting)
    settings = Settings.from_env(session_dir=tmp_path / "session", usr_dir=write_usr(tmp_path / "usr"))
    store = FolderStore(settings.session_dir)
    session_id, _ = store.create(CLASSIFICATION, "default", twelve_megapixels(), "jpg", "big.jpg")
    worker = Worker(settings, CLASSIFICATION)
    (claim,) = [store.claim(CLASSIFICATION, session_id)]
    state = store.state(session_id)
    decoded = []  # what the decoder gave, before the worker shrinks it to the model's input
    original = imaging.load_rgb

    def load_rgb(*args: object) -> Image.Image:
        decoded.append(original(*args))
        return decoded[-1]

    monkeypatch.setattr("scai.worker.imaging.load_rgb", load_rgb)
    item = worker._decode(worker.engine("default"), claim, state)
    assert decoded[0].size == ((1008, 756) if setting == "1" else (4032, 3024)) and item.image.size == (224, 224)
    worker._infer(worker.engine("default"), "default", [(claim, state, item)], lone=True)
    assert store.state(session_id)["state"] == "complete"


def test_a_broken_session_or_model_fails_its_session_and_the_worker_goes_on(tmp_path: Path) -> None:
    usr = write_usr(tmp_path / "usr")
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer")
    with (usr / "image_classification.config").open("a") as config:
        config.write(f"\n[broken]\nGRAPH = {tmp_path / 'broken.tflite'}\n")
    settings = Settings(session_dir=tmp_path / "session", usr_dir=usr)
    store = FolderStore(settings.session_dir)
    photo = (IMAGES / "parrot.jpg").read_bytes()
    unreadable, _ = store.create(CLASSIFICATION, "default", photo, "jpg", "a.jpg")
    (store.path(unreadable) / "process.json").write_text("{")
    broken_model, _ = store.create(CLASSIFICATION, "broken", photo, "jpg", "b.jpg")
    fine, _ = store.create(CLASSIFICATION, "default", photo, "jpg", "c.jpg")
    assert Worker(settings, CLASSIFICATION).drain() == 3
    assert store.state(unreadable)["state"] == "failure"
    assert store.state(broken_model)["state"] == "failure" and "unavailable" in store.state(broken_model)["message"]
    assert store.state(fine)["predictions"][0]["label"] == "macaw"


def test_a_worker_holds_the_image_at_the_model_size_right_after_decoding(tmp_path: Path) -> None:
    """However large the upload (a 7000x7000 PNG here) or the batch, what a worker keeps until the
    model runs is the model's input, not the photo."""
    settings = Settings(session_dir=tmp_path / "session", usr_dir=write_usr(tmp_path / "usr"))
    store = FolderStore(settings.session_dir)
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000), "teal").save(buffer, "PNG")
    session_id, _ = store.create(CLASSIFICATION, "default", buffer.getvalue(), "png", "big.png")
    worker = Worker(settings, CLASSIFICATION)
    claim = store.claim(CLASSIFICATION, session_id)
    item = worker._decode(worker.engine("default"), claim, store.state(session_id))
    assert item.image.size == (224, 224)
    store.drop(claim)


def test_the_annotated_image_of_a_huge_upload_is_capped(tmp_path: Path) -> None:
    """Drawn on the upload at its own size up to 4096 pixels a side, scaled down beyond."""
    source = tmp_path / "input.png"
    Image.new("RGB", (6000, 3000), "white").save(source)
    box = {"xmin": 1500, "ymin": 750, "xmax": 4500, "ymax": 2250}  # the middle half, in upload pixels
    state = {
        "detections": [{"label": "thing", "class_id": 1, "score": 0.9, "box": box}],
        "image_size": {"width": 6000, "height": 3000},
        "line_thickness": 4,
    }
    annotated = Image.open(io.BytesIO(annotated_png(state, source, 50_000_000))).convert("RGB")
    assert annotated.size == (4096, 2048)
    left_edge = round(1500 / 5999 * 4095)  # where the box's left side lands once scaled
    assert annotated.getpixel((left_edge, 1024)) != (255, 255, 255), "the box, scaled with the image"
    assert annotated.getpixel((left_edge - 20, 1024)) == (255, 255, 255), "and nowhere else on that row"
    assert annotated.getpixel((100, 100)) == (255, 255, 255)
