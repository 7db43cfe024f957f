"""/healthz reflects the workers: a job kind with models and no live worker is a 503, with the
queue and the oldest wait reported. In process, heartbeats written as a worker writes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scai.config import Settings
from scai.portal import create_app
from scai.store.folder import FolderStore

JOB = "image_classification"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / f"{JOB}.config").write_text("[default]\nGRAPH = never-loaded.tflite\n")
    (usr / "never-loaded.tflite").touch()  # there, as /healthz checks; never loaded
    return Settings(session_dir=tmp_path / "session", usr_dir=usr)


def test_no_live_worker_is_unhealthy_and_a_heartbeat_makes_it_healthy(settings: Settings) -> None:
    client = create_app(settings).test_client()
    store = FolderStore(settings.session_dir)
    missing = client.get("/healthz")
    assert missing.status_code == 503 and missing.json["status"] == "no live classify worker"
    store.beat(JOB, "host-1")
    healthy = client.get("/healthz")
    assert healthy.status_code == 200 and healthy.json["jobs"]["classify"]["workers"] == 1
    assert healthy.json["free_disk_mb"] > 0 and "detect" not in healthy.json["jobs"], "no detection models"
    stale = time.time() - 60
    os.utime(store.pool(JOB) / ".workers" / "host-1", (stale, stale))  # a worker that died a minute ago
    assert client.get("/healthz").status_code == 503
    store.beat(JOB, "host-1")
    store.retire(JOB, "host-1")  # a worker that stops takes its heartbeat with it
    assert client.get("/healthz").status_code == 503


def test_queue_depth_and_oldest_wait_are_reported(settings: Settings) -> None:
    store = FolderStore(settings.session_dir)
    store.beat(JOB, "host-1")
    first, _ = store.create(JOB, "default", b"x", "png", "a.png")
    store.create(JOB, "default", b"x", "png", "b.png")
    old = time.time() - 30
    os.utime(store.pool(JOB) / first, (old, old))
    body = create_app(settings).test_client().get("/healthz").json
    assert body["jobs"]["classify"]["queued"] == 2 and body["jobs"]["classify"]["oldest_wait_seconds"] >= 30


def test_job_mode_needs_no_worker(settings: Settings) -> None:
    settings.running_mode = "job"
    assert create_app(settings).test_client().get("/healthz").status_code == 200
