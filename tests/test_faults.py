"""Workers that die or hang under a real ``scai serve`` on the session folder: an upload that kills
every worker that takes it fails after 3 and the job kind keeps serving; ``/healthz`` counts only
workers that exist. (The store's and the supervisor's parts are tested in ``test_store_folder`` and
``test_supervisor``.)"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import IMAGES, Server, needs_assets, wait_for
from PIL import Image

from scai.config import CLASSIFICATION
from scai.store import FINAL_STATES
from scai.store.folder import FolderStore

pytestmark = [needs_assets, pytest.mark.slow]

FAST = {"SCAI_RESCAN_SECONDS": "1"}


def workers_of(server: Server) -> set[int]:
    """The pids of the classification workers ``scai serve`` runs now."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(server.process.pid)], capture_output=True, text=True)
    return {int(line.split()[0]) for line in out.stdout.splitlines() if "worker classify" in line}


def large_png() -> bytes:
    """40 megapixels: decoding takes long enough to catch the worker holding it."""
    row = np.random.default_rng(1).integers(0, 255, (1, 8000, 3), dtype=np.uint8)
    pixels = np.repeat(row, 5000, axis=0)  # rows alike: a small file, all 40 MP to decode
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_an_upload_that_kills_its_workers_fails_after_three_and_the_job_kind_keeps_serving(
    tmp_path: Path, usr: Path
) -> None:
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log", "--workers", "2", env=FAST)
    store = FolderStore(server.session_dir)
    try:
        answer = requests.post(f"{server.url}/api/v1/classify", files={"photo": ("big.png", large_png())}, timeout=60)
        session_id, key = answer.json()["sessname"], answer.json()["sesskey"]
        killed: list[int] = []

        def holder_or_end() -> int | bool:
            if store.state(session_id)["state"] in FINAL_STATES:
                return True
            holder = store.holder(CLASSIFICATION, session_id)
            return holder not in killed and holder or False

        for _ in range(10):  # the repro: kill whichever worker holds it, 10 times
            found = wait_for(holder_or_end, 60, "a worker to take the session, or its end")
            if found is True:
                break
            os.kill(found, signal.SIGKILL)
            killed.append(found)
        kills = len(killed)
        state = store.state(session_id)
        # 3 deliveries; a kill may also hit a worker that held the marker's lock only to recover it
        assert 3 <= kills < 10 and state["state"] == "failure", (kills, state)
        assert "the image stopped 3 workers (delivered 3 times)" in state["message"]
        final = requests.get(f"{server.url}/api/v1/sessions/{session_id}", params={"key": key}, timeout=10).json()
        assert final["state"] == "failure"
        assert server.classify(IMAGES / "grace_hopper.jpg").json()["state"] == "complete", "the job kind serves"
        workers = lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["jobs"]["classify"]["workers"]  # noqa: E731
        wait_for(lambda: workers() == 2, 30, "both workers back, none given up on")
    finally:
        server.stop()


def test_healthz_counts_only_workers_that_exist(tmp_path: Path, usr: Path) -> None:
    """Kill every classification worker at once: ``/healthz`` shows it before the supervisor
    brings them back (it counted the dead beside their replacements), and the count never
    exceeds the workers there are."""
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log", "--workers", "2", env=FAST)
    try:
        victims = workers_of(server)
        assert len(victims) == 2
        seen = []

        def count() -> int:
            answer = requests.get(f"{server.url}/healthz", timeout=5)
            seen.append((answer.status_code, answer.json()["jobs"]["classify"]["workers"]))
            return seen[-1][1]

        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: count() < 2, 5, "/healthz to see the deaths")
        wait_for(lambda: count() == 2 and not workers_of(server) & victims, 60, "the replacements")
        assert max(workers for _, workers in seen) <= 2, seen
        assert any(status == 503 for status, _ in seen) or min(w for _, w in seen) < 2
        beats = list((server.session_dir / "pool" / CLASSIFICATION / ".workers").iterdir())
        assert len(beats) == 2, f"the dead workers' heartbeats are removed: {beats}"
    finally:
        server.stop()
