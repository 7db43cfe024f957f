"""A real full disk: the session store on a 4 MB tmpfs, filled to the last byte. Uploads are
refused with 507 and leave nothing behind, ``/healthz`` says 503 "disk full", the worker lives,
and everything resumes once space is freed. Needs root to mount (CI runs as root); skipped
elsewhere with that reason."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeTask, upload, write_fake_usr

from scai.config import CLASSIFICATION, Settings
from scai.portal import create_app
from scai.store import COMPLETE
from scai.store.folder import FolderStore
from scai.worker import Worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path) -> Path:
    """Write until the disk refuses another byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (65536, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return filler


def test_a_full_disk_refuses_uploads_keeps_the_worker_and_resumes(disk: Path, tmp_path: Path) -> None:
    usr = write_fake_usr(tmp_path / "usr")
    settings = Settings(session_dir=disk / "session", usr_dir=usr, max_upload_mb=1)
    client = create_app(settings).test_client()
    worker = Worker(settings, CLASSIFICATION, task=FakeTask())
    worker.store.beat(CLASSIFICATION, worker.name)
    waiting = upload(client).json["sessname"]  # queued before the disk filled
    assert client.get("/healthz").status_code == 200, "3 MB free: room for an upload of up to 1 MB"
    filler = fill(disk)

    refused = upload(client)
    assert refused.status_code == 507 and refused.json["status"] == 507 and "disk is full" in refused.json["message"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["status"].startswith("disk full: 0 MB free"), health.json
    store = FolderStore(settings.session_dir)
    assert store.sessions() == [waiting], "the refused upload left no folder"

    assert worker.drain() == 1, "the worker took the session and did not die"
    assert store.state(waiting)["state"] == "processing", "its result could not be written, nor a false failure"
    worker.rescan()
    worker.drain()  # still full: tried again, still no result, still alive
    assert store.state(waiting)["state"] == "processing"

    filler.unlink()  # space is freed
    assert client.get("/healthz").status_code == 200
    worker.rescan()
    worker.drain()
    assert store.state(waiting)["state"] == COMPLETE
    accepted = upload(client)
    assert accepted.status_code == 202
    assert worker.drain() == 1 and store.state(accepted.json["sessname"])["state"] == COMPLETE
