"""The HTTP API of a real ``scai serve`` (portal and worker processes) on real folders."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import ASSETS, IMAGES, Server, needs_assets, wait_for
from images import png_bomb, variants

pytestmark = [needs_assets, pytest.mark.slow]


def reference_top1() -> dict[str, str]:
    """image -> top-1 label, from the MobileNetV2 table in the assets' README."""
    readme = ASSETS / "README.md"
    if not readme.is_file():
        return {"(assets missing)": ""}  # the module is skipped; keep collection working
    text = readme.read_text(encoding="utf-8")
    section = text.split("### mobilenet_v2_1.0_224_quant.tflite", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\| (\S+\.(?:jpg|png|bmp)) \| ([^|]+?) \|", section, flags=re.M)
    return dict(rows)


def test_reference_table_is_read() -> None:
    table = reference_top1()
    assert len(table) == 29 and table["grace_hopper.jpg"] == "military uniform"


@pytest.mark.parametrize("image", sorted(reference_top1()))
def test_mobilenet_v2_returns_the_reference_label(server: Server, image: str) -> None:
    response = server.classify(IMAGES / image, image, model="mobilenet_v2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "complete" and body["model"] == "mobilenet_v2"
    assert body["predictions"][0]["label"] == reference_top1()[image]
    first_label, first_percent = next(iter(body["result"].items()))
    assert first_label == reference_top1()[image] and first_percent.endswith("%")


def test_original_client_flow(server: Server) -> None:
    photo = (IMAGES / "parrot.jpg").read_bytes()
    response = requests.post(f"{server.url}/imageclassification", files={"photo": ("parrot.jpg", photo)})
    assert response.status_code == 200
    created = response.json()
    assert set(created) == {"status", "filename", "datetime", "sessname", "sesskey"}
    assert created["status"] == "success" and created["filename"] == "parrot.jpg"
    task, key = created["sessname"], created["sesskey"]
    # wait for the worker through the API's own wait, then read it the original way
    requests.get(f"{server.url}/api/v1/sessions/{task}", params={"key": key, "wait": 30})
    result = requests.get(f"{server.url}/imageclassification/imgclassres", params={"task": task, "key": key})
    assert result.status_code == 200
    body = result.json()
    assert {"state", "job", "message", "result", "result_image"} <= set(body)
    assert body["state"] == "complete" and body["job"] == "image_classification"
    assert next(iter(body["result"])) == "macaw"  # the default EfficientNet-Lite0
    image = requests.get(f"{server.url}/imageclassification/imgclassres/iciptimg", params={"task": task, "key": key})
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert image.content == photo


def test_wait_zero_answers_at_once_with_202(server: Server) -> None:
    response = server.classify(IMAGES / "burger.jpg", wait=0)
    assert response.status_code in (200, 202)
    body = response.json()
    if response.status_code == 202:
        assert body["state"] in ("initialization", "processing") and response.headers["Location"]
    done = requests.get(server.url + body["links"]["self"], params={"wait": 30})
    assert done.status_code == 200 and done.json()["predictions"][0]["label"] == "cheeseburger"


@pytest.mark.parametrize("variant", ["png_alpha", "greyscale", "png_16bit", "cmyk_jpeg", "bmp", "exif_rotated"])
def test_image_variants_are_classified(server: Server, variant: str) -> None:
    name, data = variants(IMAGES / "grace_hopper.jpg")[variant]
    response = server.classify(data, name, model="mobilenet_v2")
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    if variant in ("greyscale", "png_16bit"):  # colour is gone; the uniform is still in the top 5
        assert "military uniform" in labels
    else:
        assert labels[0] == "military uniform"


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == status and body["message"]
    return body["message"]


BAD_UPLOADS = {
    "empty": ("photo.jpg", b"", 400, "empty"),
    "text": ("photo.jpg", b"just some text, not a JPEG\n", 400, "not a readable image"),
    "bomb": ("bomb.png", png_bomb(), 413, "40000x40000"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_json_error(server: Server, case: str) -> None:
    name, data, status, words = BAD_UPLOADS[case]
    for url in (f"{server.url}/imageclassification", f"{server.url}/api/v1/classify"):
        message = error_of(requests.post(url, files={"photo": (name, data)}), status)
        assert words in message


def test_missing_photo_field(server: Server) -> None:
    message = error_of(requests.post(f"{server.url}/imageclassification", files={"file": ("a.jpg", b"x")}), 400)
    assert "photo" in message


def test_upload_over_the_size_limit_is_413(tmp_path: Path, usr: Path) -> None:
    small = Server(tmp_path / "session", usr, tmp_path / "serve.log", env={"SCAI_MAX_UPLOAD_MB": "1"})
    try:
        big = (IMAGES / "cat_720p.jpg").read_bytes()
        big = big if len(big) > 1024 * 1024 else big * (1 + 1024 * 1024 // len(big))
        message = error_of(requests.post(f"{small.url}/imageclassification", files={"photo": ("b.jpg", big)}), 413)
        assert "1 MB" in message
    finally:
        small.stop()


def test_truncated_jpeg_ends_in_failure_and_the_worker_goes_on(server: Server) -> None:
    data = (IMAGES / "grace_hopper.jpg").read_bytes()
    failed = server.classify(data[: len(data) // 2], "cut.jpg")
    assert failed.status_code == 422
    assert failed.json()["state"] == "failure" and "cannot be decoded" in failed.json()["message"]
    after = server.classify(IMAGES / "parrot.jpg", model="mobilenet_v2")
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "macaw"


def test_hostile_filenames_never_become_paths(server: Server) -> None:
    photo = (IMAGES / "parrot.jpg").read_bytes()
    for name in ("../../../../tmp/scai-owned.jpg", "/etc/scai-owned.jpg", "..\\..\\owned.jpg"):
        response = requests.post(f"{server.url}/imageclassification", files={"photo": (name, photo)})
        assert response.status_code == 200
        created = response.json()
        assert "/" not in created["filename"] and ".." not in created["filename"]
        task, key = created["sessname"], created["sesskey"]
        done = requests.get(f"{server.url}/api/v1/sessions/{task}", params={"key": key, "wait": 30})
        assert done.json()["state"] == "complete"  # nothing is being written now
        folder = server.session_dir / task
        assert sorted(p.name for p in folder.iterdir()) == ["input.jpg", "process.json"]
    assert not Path("/tmp/scai-owned.jpg").exists() and not Path("/etc/scai-owned.jpg").exists()


def test_task_and_key_are_checked(server: Server) -> None:
    created = requests.post(
        f"{server.url}/imageclassification", files={"photo": ("p.jpg", (IMAGES / "parrot.jpg").read_bytes())}
    ).json()
    task, key = created["sessname"], created["sesskey"]
    result = f"{server.url}/imageclassification/imgclassres"
    assert "task" in error_of(requests.get(result, params={"key": key}), 400)
    for bad in ("../process", "a/b", "d-20260101-" + "0" * 31 + "\0", ".."):
        error_of(requests.get(result, params={"task": bad, "key": key}), 400)
    error_of(requests.get(result, params={"task": "d-20260101-" + "0" * 32, "key": key}), 404)
    wrong = key[:-1] + ("y" if key.endswith("x") else "x")  # one character off (never the key itself)
    error_of(requests.get(result, params={"task": task, "key": wrong}), 403)
    error_of(requests.get(result, params={"task": task}), 403)
    error_of(requests.get(f"{result}/iciptimg", params={"task": task, "key": "wrong"}), 403)
    assert requests.get(result, params={"task": task, "key": key}).status_code == 200


def test_unknown_model_is_400(server: Server) -> None:
    message = error_of(server.classify(IMAGES / "parrot.jpg", model="no_such_model"), 400)
    assert "no_such_model" in message and "mobilenet_v2" in message


def test_models_and_health(server: Server) -> None:
    health = requests.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["jobs"]["classify"]["workers"] >= 1
    assert requests.get(f"{server.url}/api/v1/models").json() == {
        "classify": ["default", "mobilenet_v1", "mobilenet_v2"],
        "detect": [],
    }
    error_of(requests.get(f"{server.url}/no/such/route"), 404)


def job_processes() -> int:
    """Live job-mode worker processes on this machine."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            count += b"--runningmode\0job" in cmdline.read_bytes()
    return count


def test_job_mode_runs_a_bounded_number_of_processes(tmp_path: Path, usr: Path) -> None:
    """Job mode starts a worker process per upload only while fewer than SCAI_WORKERS run; each
    drains the pool before it exits, so 8 uploads at once never mean 8 processes."""
    jobs = Server(tmp_path / "session", usr, tmp_path / "serve.log", "--runningmode", "job", env={"SCAI_WORKERS": "2"})
    photos = [("parrot.jpg", "macaw"), ("burger.jpg", "cheeseburger")] * 4
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], job_processes())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(len(photos)) as pool:
            answers = list(pool.map(lambda p: jobs.classify(IMAGES / p[0], model="mobilenet_v2"), photos))
        assert [a.json()["predictions"][0]["label"] for a in answers] == [label for _, label in photos]
        log = (tmp_path / "serve.log").read_text()
        assert "watching" not in log, "job mode must not start a runtime worker"
    finally:
        done.set()
        sampler.join()
        jobs.stop()
    assert 1 <= peak[0] <= 3, f"{peak[0]} job processes at once (2 allowed, and one may be on its way out)"


def test_ctrl_c_stops_the_portal_and_its_workers(tmp_path: Path, usr: Path) -> None:
    running = Server(tmp_path / "session", usr, tmp_path / "serve.log")
    log = tmp_path / "serve.log"
    worker_pids = wait_for(lambda: set(re.findall(r"scai\.worker\[(\d+)\] INFO watching", log.read_text())), 30)
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(30) == 0
    for pid in worker_pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived scai serve"
