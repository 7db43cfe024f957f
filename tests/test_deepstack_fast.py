"""The DeepStack / CodeProject.AI routes and API keys in process: the portal under Flask's test
client, real Workers with fake models running in threads (the routes answer synchronously). The
real client libraries against a real ``scai serve`` are in test_deepstack.py."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fakes import FakeDetector, FakeTask, marked_jpeg, tiny_png, write_fake_usr
from PIL import Image

from scai import apikeys
from scai.config import CLASSIFICATION, DETECTION, ConfigError, Settings
from scai.portal import create_app
from scai.worker import Worker


@contextmanager
def running_workers(settings: Settings) -> Iterator[None]:
    """One classification and one detection worker, each looping in a thread until the test ends."""
    workers = [Worker(settings, CLASSIFICATION, task=FakeTask()), Worker(settings, DETECTION, task=FakeDetector())]
    threads = [threading.Thread(target=w.run_forever, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(10)


def make_settings(tmp_path, **overrides) -> Settings:
    usr = write_fake_usr(tmp_path / "usr", "default", detectors=("default", "backyard"))
    return Settings(session_dir=tmp_path / "session", usr_dir=usr, **{"max_wait_seconds": 20, **overrides})


@pytest.fixture
def deepstack(tmp_path):
    settings = make_settings(tmp_path)
    with running_workers(settings):
        yield create_app(settings).test_client()


def post(client, route: str, image: bytes, **form: str):
    """As the clients post: field ``image``, filename ``image``, no content type, form fields."""
    return client.post(route, data={"image": (io.BytesIO(image), "image"), **form}, content_type="multipart/form-data")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_are_in_the_pixel_grid_the_client_measures(deepstack, orientation: int) -> None:
    stored = (64, 48)
    marker = (10, 5, 29, 14)  # left, top, right, bottom as stored in the file
    answer = post(deepstack, "/v1/vision/detection", marked_jpeg(stored, marker, orientation))
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["success"] is True and body["code"] == 200 and body["count"] == 1
    (found,) = body["predictions"]
    assert found["label"] == "marker" and found["confidence"] == 0.9
    box = (found["x_min"], found["y_min"], found["x_max"], found["y_max"])
    assert all(isinstance(v, int) for v in box)
    assert all(abs(a - b) <= 1 for a, b in zip(box, marker, strict=True)), (orientation, box)
    assert body["message"] == "Found marker" and body["moduleId"] == "scai-detect"
    assert body["inferenceMs"] >= 0 and body["processMs"] >= body["inferenceMs"]


def test_min_confidence_overrides_the_threshold_and_predictions_come_best_first(deepstack) -> None:
    image = marked_jpeg((40, 40), (5, 5, 20, 20))
    everything = post(deepstack, "/v1/vision/detection", image, min_confidence="0").json
    assert [p["label"] for p in everything["predictions"]] == ["marker", "frame"]
    assert everything["predictions"][1] == {
        "label": "frame", "confidence": 0.3, "x_min": 0, "y_min": 0, "x_max": 39, "y_max": 39
    }  # fmt: skip
    assert [p["label"] for p in post(deepstack, "/v1/vision/detection", image).json["predictions"]] == ["marker"]
    nothing = post(deepstack, "/v1/vision/detection", tiny_png((90, 90, 90)), min_confidence="0.95").json
    assert nothing["success"] is True and nothing["predictions"] == [] and nothing["message"] == "No objects found"


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan"])
def test_a_min_confidence_outside_0_to_1_is_400(deepstack, value: str) -> None:
    answer = post(deepstack, "/v1/vision/detection", tiny_png(), min_confidence=value)
    assert answer.status_code == 400
    assert answer.json["success"] is False and "min_confidence" in answer.json["error"] and answer.json["code"] == 400


def test_what_is_not_an_image_is_400_in_deepstacks_shape(deepstack) -> None:
    for route in ("/v1/vision/detection", "/v1/vision/scene", "/v1/vision/custom/backyard"):
        answer = post(deepstack, route, b"this is not an image")
        assert answer.status_code == 400 and answer.json["success"] is False and "image" in answer.json["error"]
    missing = deepstack.post("/v1/vision/detection", data={"min_confidence": "0.5"})
    assert missing.status_code == 400 and missing.json["success"] is False


def test_custom_models_scene_list_and_update_check(deepstack) -> None:
    assert deepstack.post("/v1/vision/custom/list").json == {"success": True, "models": ["backyard", "default"]}
    custom = post(deepstack, "/v1/vision/custom/backyard", marked_jpeg((40, 40), (5, 5, 20, 20)))
    assert custom.status_code == 200 and custom.json["predictions"][0]["label"] == "marker"
    unknown = post(deepstack, "/v1/vision/custom/nosuch", tiny_png())
    assert unknown.status_code == 404 and unknown.json["success"] is False
    scene = post(deepstack, "/v1/vision/scene", tiny_png((1, 2, 3)))
    assert scene.status_code == 200
    assert (scene.json["success"], scene.json["label"], scene.json["confidence"]) == (True, "#010203", 1.0)
    update = deepstack.get("/v1/status/updateavailable").json
    assert update["success"] is True and update["updateAvailable"] is False and update["current"] == update["latest"]


def test_the_coco_detector_is_preferred_where_it_is_installed(tmp_path) -> None:
    settings = make_settings(tmp_path)
    client = create_app(settings).test_client()
    with client.application.test_request_context():
        from scai.portal.deepstack import detection_model

        assert detection_model() == "default"
        (settings.usr_dir / f"{DETECTION}.config").write_text(
            "[default]\nPATH_TO_CKPT = a.tflite\n\n[coco-ssd]\nPATH_TO_CKPT = b.tflite\n", encoding="utf-8"
        )
        assert detection_model() == "coco-ssd"
        settings.deepstack_model = "default"
        assert detection_model() == "default"


# -- API keys ---------------------------------------------------------------------------------------


@pytest.fixture
def locked(tmp_path):
    settings = make_settings(tmp_path, api_keys="first-key, second-key")
    with running_workers(settings):
        yield create_app(settings).test_client()


def test_every_upload_route_and_model_list_needs_a_key(locked) -> None:
    image = tiny_png()
    refused = [
        post(locked, "/v1/vision/detection", image),
        post(locked, "/v1/vision/detection", image, api_key="wrong"),
        post(locked, "/v1/vision/scene", image),
        locked.post("/v1/vision/custom/list"),
        locked.post("/api/v1/classify", data={"photo": (io.BytesIO(image), "a.png")}),
        locked.post("/imageclassification", data={"photo": (io.BytesIO(image), "a.png")}),
        locked.post("/objectdetection", data={"photo": (io.BytesIO(image), "a.png")}),
        locked.get("/api/v1/models", headers={"X-API-Key": "first-key-but-longer"}),
        locked.get("/api/v1/models", headers={"Authorization": "Bearer second"}),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert refused[0].json["success"] is False and refused[0].json["code"] == 401  # DeepStack's shape
    assert refused[4].json["status"] == 401 and refused[4].headers["WWW-Authenticate"].startswith("Bearer")
    assert all(b"first-key" not in r.data and b"wrong" not in r.data for r in refused), "keys are never echoed"


def test_a_key_in_any_of_the_three_places_is_let_in(locked) -> None:
    assert post(locked, "/v1/vision/detection", tiny_png(), api_key="second-key").status_code == 200
    assert locked.get("/api/v1/models", headers={"Authorization": "Bearer first-key"}).status_code == 200
    sent = locked.post(
        "/api/v1/classify?wait=20",
        data={"photo": (io.BytesIO(tiny_png()), "a.png")},
        headers={"X-API-Key": "first-key"},
    )
    assert sent.status_code == 200
    # the session's own key still guards its reads, with or without an API key
    session, key = sent.json["sessname"], sent.json["sesskey"]
    assert locked.get(f"/api/v1/sessions/{session}", headers={"X-Session-Key": key}).status_code == 200
    assert locked.get(f"/api/v1/sessions/{session}", headers={"X-API-Key": "first-key"}).status_code == 403
    assert locked.get("/healthz").status_code == 200 and locked.get("/").status_code == 200


def test_keys_in_the_usr_file_count_and_change_without_a_restart(tmp_path) -> None:
    settings = make_settings(tmp_path)
    client = create_app(settings).test_client()
    assert client.get("/api/v1/models").status_code == 200  # no keys: open, as before
    keys = settings.usr_dir / apikeys.KEYS_FILE
    keys.write_text("# one key a line\nfile-key-1\n", encoding="utf-8")
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/api/v1/models", headers={"X-API-Key": "file-key-1"}).status_code == 200
    keys.write_text("file-key-2\n", encoding="utf-8")
    assert client.get("/api/v1/models", headers={"X-API-Key": "file-key-1"}).status_code == 401
    assert client.get("/api/v1/models", headers={"X-API-Key": "file-key-2"}).status_code == 200


def test_keys_parse_and_match() -> None:
    keys = apikeys.parse_file("alpha, beta\tgamma # delta\n# epsilon\n")
    assert [apikeys.matches(k, keys) for k in ("alpha", "beta", "gamma", "delta", "epsilon", "", None)] == [
        True, True, True, False, False, False, False
    ]  # fmt: skip
    from_env = apikeys.parse("s3cr#et, #lead")  # no comments in the variable: '#' is part of a key
    assert apikeys.matches("s3cr#et", from_env) and not apikeys.matches("s3cr", from_env)
    with pytest.raises(ConfigError, match="holds no key"):
        Settings(api_keys=" , ")


def test_an_unreadable_key_file_refuses_keyed_requests(tmp_path) -> None:
    settings = make_settings(tmp_path)
    client = create_app(settings).test_client()
    keys = settings.usr_dir / apikeys.KEYS_FILE
    for broken in (b"\xff\xfe not utf-8\n", b"# every line a comment\n", b""):
        keys.write_bytes(broken)
        refused = client.get("/api/v1/models", headers={"X-API-Key": "anything"})
        assert refused.status_code == 503 and "API key file" in refused.json["message"], broken
    assert post(client, "/v1/vision/detection", tiny_png()).json["code"] == 503
    keys.unlink()
    keys.symlink_to(settings.usr_dir / "secret-not-mounted")
    assert client.get("/api/v1/models").status_code == 503
    keys.unlink()
    keys.symlink_to(keys)  # a loop
    assert client.get("/api/v1/models").status_code == 503
    keys.unlink()
    assert client.get("/api/v1/models").status_code == 200  # only its absence opens the service
    assert client.get("/healthz").status_code in (200, 503) and client.get("/").status_code == 200


def test_a_damaged_png_is_400_and_a_broken_model_500_without_its_path(tmp_path) -> None:
    settings = make_settings(tmp_path)
    png = tiny_png(size=(64, 64))
    garbled = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(garbled, "PNG", exif=b"Exif\0\0garbage-not-tiff")
    workers = [Worker(settings, DETECTION, task=FakeDetector(broken=["backyard"]))]
    threads = [threading.Thread(target=w.run_forever, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        client = create_app(settings).test_client()
        for route in ("/v1/vision/detection", "/api/v1/detect?wait=20", "/objectdetection"):
            cut = client.post(route, data={"image": (io.BytesIO(png[:60]), "image")})
            assert cut.status_code in (200, 400, 422), (route, cut.status_code)  # never a 500
        assert post(client, "/v1/vision/detection", png[:60]).status_code == 400
        answer = post(client, "/v1/vision/detection", garbled.getvalue())
        assert answer.status_code == 200, answer.json  # unreadable EXIF: as if there were none
        broken = post(client, "/v1/vision/custom/backyard", png)
        assert broken.status_code == 500 and broken.json["success"] is False
        assert str(tmp_path) not in broken.text and "tflite" not in broken.text
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(10)


def test_a_client_cannot_invent_metric_series(tmp_path) -> None:
    client = create_app(make_settings(tmp_path)).test_client()
    for number in range(5):
        client.open("/api/v1/models", method=f"X{number}")
    scraped = client.get("/metrics").text
    assert 'method="X0"' not in scraped and 'method="other"' in scraped


def test_a_request_no_worker_answers_in_time_is_503_and_cancelled(tmp_path) -> None:
    from scai.store.folder import FolderStore

    settings = make_settings(tmp_path, max_wait_seconds=0.2)  # no worker runs
    answer = post(create_app(settings).test_client(), "/v1/vision/detection", tiny_png())
    assert answer.status_code == 503 and answer.json["success"] is False
    assert FolderStore(settings.session_dir).sessions() == [], "nobody can ask for it again"
