"""Worker processes on one pool: exactly-once processing, and recovery after ``kill -9``."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import CLASSIFY_MODELS, IMAGES, ROOT, needs_assets, scai_command, stop, wait_for, write_usr

from scai.config import Settings
from scai.portal import create_app
from scai.store.folder import FolderStore

pytestmark = [needs_assets, pytest.mark.slow]
JOB = "image_classification"


def start_worker(session_dir: Path, usr: Path, log: Path, **env: str) -> subprocess.Popen:
    command = scai_command("worker", "classify", "--session-dir", str(session_dir), "--usr", str(usr))
    return subprocess.Popen(
        command, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **env}
    )


def upload(client, photo: bytes, model: str) -> str:
    response = client.post(f"/imageclassification?model={model}", data={"photo": (io.BytesIO(photo), "p.jpg")})
    assert response.status_code == 200, response.json
    return response.json["sessname"]


def states(store: FolderStore, ids: list[str]) -> list[str]:
    return [store.state(i)["state"] for i in ids]


def completed_in(logs: list[Path]) -> list[str]:
    return [sid for log in logs for sid in re.findall(r"INFO complete (d-\S+)", log.read_text())]


@pytest.fixture
def portal(tmp_path: Path, usr: Path):
    settings = Settings(session_dir=tmp_path / "session", usr_dir=usr)
    return create_app(settings).test_client(), FolderStore(settings.session_dir)


def test_two_workers_process_each_of_200_uploads_exactly_once(tmp_path: Path, usr: Path, portal) -> None:
    client, store = portal
    photos = [(IMAGES / name).read_bytes() for name in ("parrot.jpg", "burger.jpg", "hot_dog.jpg", "bird.bmp")]
    ids = [upload(client, photos[i % 4], "mobilenet_v1") for i in range(100)]  # waiting before start
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    workers = [start_worker(store.root, usr, log) for log in logs]
    try:
        ids += [upload(client, photos[i % 4], "mobilenet_v1") for i in range(100)]  # arriving while running
        wait_for(lambda: states(store, ids).count("complete") == 200, 120, "200 complete sessions")
    finally:
        for worker in workers:
            stop(worker)
    done = completed_in(logs)
    assert sorted(done) == sorted(ids), "every session processed exactly once"
    per_worker = [len(completed_in([log])) for log in logs]
    print(f"sessions per worker: {per_worker}")
    assert not store.pending(JOB) and not list(store.claimed(JOB).iterdir())
    labels = {store.state(i)["predictions"][0]["label"] for i in ids}
    assert labels == {"macaw", "cheeseburger", "pill bottle", "chickadee"}


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path: Path, usr: Path, portal) -> None:
    client, store = portal
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    ids = [upload(client, photo, "mobilenet_v2") for _ in range(48)]
    log = tmp_path / "worker.log"
    first = start_worker(store.root, usr, log, SCAI_BATCH_SIZE="16")
    try:
        wait_for(lambda: any(store.claimed(JOB).iterdir()), 60, "the worker to claim a batch")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        stop(first)
    held = [p.name for p in store.claimed(JOB).iterdir()]
    assert held, "the worker died holding claims"
    assert "processing" in states(store, ids) or "initialization" in states(store, held)

    second = start_worker(store.root, usr, log)
    try:
        wait_for(lambda: states(store, ids).count("complete") == 48, 60, "every session to complete")
    finally:
        stop(second)
    assert {store.state(i)["predictions"][0]["label"] for i in ids} == {"military uniform"}
    assert "took back" in log.read_text()
    assert not store.pending(JOB) and not list(store.claimed(JOB).iterdir())


def test_a_section_added_after_start_is_served_without_a_restart(tmp_path: Path, portal) -> None:
    client, store = portal
    usr = write_usr(tmp_path / "late-usr")
    settings = Settings(session_dir=store.root, usr_dir=usr)
    client = create_app(settings).test_client()
    worker = start_worker(store.root, usr, tmp_path / "worker.log")
    try:
        wait_for(lambda: "watching" in (tmp_path / "worker.log").read_text(), 30, "the worker to start")
        with (usr / "image_classification.config").open("a") as config:
            config.write(f"\n[late]\nGRAPH = {CLASSIFY_MODELS / 'mobilenet_v2_1.0_224_quant.tflite'}\n")
            config.write(f"LABELS = {CLASSIFY_MODELS / 'mobilenet_v2_labels.txt'}\n")
        session = upload(client, (IMAGES / "parrot.jpg").read_bytes(), "late")
        wait_for(lambda: store.state(session)["state"] in ("complete", "failure"), 30, "the session")
        assert store.state(session)["predictions"][0]["label"] == "macaw"
    finally:
        stop(worker)
