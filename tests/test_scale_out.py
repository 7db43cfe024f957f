"""Past one machine: 2 portals and 3 classification workers, each process with a temp folder of
its own, meeting only in one real redis-server. 1,000 uploads spread over both portals (half
answered with wait=, half polled on the other portal, some through the original routes) while 3
workers holding claims are killed with SIGKILL and replaced: every session completes exactly once
(counted by the completion fence) with the reference label, a dead worker's claims were handed
out again, and the stream's pending list is empty at the end.

The same test runs on the folder store where it applies: the processes share one session folder
(the folder store holds on one file system only), and a worker holding claims is found by its
locks in ``/proc/locks``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from conftest import IMAGES, ROOT, Server, needs_assets, scai_command, stop, wait_for

from scai.config import CLASSIFICATION, load_models
from scai.store.folder import FolderStore
from scai.store.redis_streams import GROUP, RedisStore
from scai.tasks import classify_file

pytestmark = [needs_assets, pytest.mark.slow]

UPLOADS = 1000
PHOTOS = ["parrot.jpg", "burger.jpg", "grace_hopper.jpg", "pets.jpg"]
FAST_RECOVERY = {"SCAI_CLAIM_LEASE_SECONDS": "2", "SCAI_RESCAN_SECONDS": "1"}


class Workers:
    """``scai worker classify`` processes on the shared store, each in a folder of its own (with
    the folder store, that folder is the shared one)."""

    def __init__(self, root: Path, usr: Path, store: list[str], shared: Path | None) -> None:
        self.root, self.usr, self.store, self.shared, self.processes = root, usr, store, shared, []

    def start(self) -> subprocess.Popen:
        folder = self.root / f"worker{len(self.processes)}"
        folder.mkdir(parents=True)
        session = self.shared or folder / "session"
        command = scai_command("worker", "classify", *self.store, "--session-dir", str(session), "--usr", str(self.usr))
        log = (folder / "worker.log").open("wb")
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **FAST_RECOVERY}
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "".join(p.read_text() for p in self.root.glob("worker*/worker.log"))


def redis_holders(client: redis.Redis, pool: str) -> set[str]:
    """Pids of the workers holding claimed entries (a consumer's name ends in its pid)."""
    return {c["name"].decode().rsplit(":", 1)[-1] for c in client.xinfo_consumers(pool, GROUP) if c["pending"]}


def folder_holders(claimed: Path) -> set[str]:
    """Pids of the workers holding claim markers: the owners of the flocks on those files."""
    inodes = set()
    for entry in claimed.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            inodes.add(str(entry.stat().st_ino))
    locks = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return {fields[4] for fields in locks if fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] in inodes}


def holding_claims(holders: set[str], processes: list[subprocess.Popen]) -> subprocess.Popen | None:
    """A live worker that holds claimed work right now."""
    return next((p for p in processes if p.poll() is None and str(p.pid) in holders), None)


@pytest.mark.parametrize("backend", ["redis", "folder"])
def test_two_portals_three_workers_kill_9_every_session_once(tmp_path: Path, usr: Path, backend: str, request) -> None:
    spec = load_models(usr, CLASSIFICATION)["default"]
    reference = {name: classify_file(spec, IMAGES / name, 1, 50_000_000)[0].label for name in PHOTOS}
    photos = {name: (IMAGES / name).read_bytes() for name in PHOTOS}
    if backend == "redis":
        url = request.getfixturevalue("redis_url").replace("/0", "/2")
        client = redis.Redis.from_url(url)
        client.flushdb()
        store, shared, args = RedisStore(url, 3600), None, ["--store", url]
        holders = lambda: redis_holders(client, store._pool(CLASSIFICATION))  # noqa: E731
    else:
        shared = tmp_path / "session"
        store, args = FolderStore(shared), []
        holders = lambda: folder_holders(store.claimed(CLASSIFICATION))  # noqa: E731
    portals = [
        Server(shared or tmp_path / f"portal{i}" / "session", usr, tmp_path / f"portal{i}.log", *args, "--portal-only",
               env=FAST_RECOVERY, healthy=False)
        for i in range(2)
    ]  # fmt: skip
    workers = Workers(tmp_path / "workers", usr, args, shared)
    try:
        for _ in range(3):
            workers.start()
        wait_for(lambda: requests.get(f"{portals[0].url}/healthz").json()["jobs"]["classify"]["workers"] == 3, 60,
                 "three workers to beat")  # fmt: skip
        killed, done = [], threading.Event()

        def killer() -> None:
            while len(killed) < 3 and not done.is_set():
                victim = holding_claims(holders(), workers.processes)
                if victim is not None:
                    victim.send_signal(signal.SIGKILL)
                    killed.append(victim.pid)
                    workers.start()
                done.wait(0.3)

        def one(number: int) -> tuple[str, str, str, bytes]:
            name = PHOTOS[number % len(PHOTOS)]
            here, there = portals[number % 2], portals[(number + 1) % 2]
            if number % 10 == 0:  # the original routes
                sent = requests.post(
                    f"{here.url}/imageclassification", files={"photo": (name, photos[name])}, timeout=60
                )
                session_id, key = sent.json()["sessname"], sent.json()["sesskey"]
            else:
                wait = 30 if number % 2 else 0
                sent = requests.post(f"{here.url}/api/v1/classify", params={"wait": wait},
                                     files={"photo": (name, photos[name])}, timeout=60)  # fmt: skip
                session_id, key = sent.json()["sessname"], sent.json()["sesskey"]
            answer = requests.get(f"{there.url}/api/v1/sessions/{session_id}", params={"wait": 60},
                                  headers={"X-Session-Key": key}, timeout=90)  # fmt: skip
            assert answer.status_code == 200, answer.text
            upload = b""
            if number % 50 == 1:
                upload = requests.get(f"{there.url}/api/v1/sessions/{session_id}/input",
                                      headers={"X-Session-Key": key}, timeout=30).content  # fmt: skip
                assert upload == photos[name], "the upload as sent, from the other portal"
            return name, session_id, answer.json()["predictions"][0]["label"], upload

        thread = threading.Thread(target=killer)
        thread.start()
        with ThreadPoolExecutor(16) as pool_of_clients:
            results = list(pool_of_clients.map(one, range(UPLOADS)))
        done.set()
        thread.join()

        assert len(killed) == 3, f"only {len(killed)} workers were caught holding claims"
        assert [label for name, _, label, _ in results] == [reference[name] for name, *_ in results]
        completions = [store.completions(session_id) for _, session_id, _, _ in results]
        assert set(completions) == {1}, f"completions per session: {sorted(set(completions))}"
        taken_back = sum(int(n) for n in re.findall(r"took back (\d+) sessions", workers.logs()))
        assert taken_back >= 1, "no claim of a killed worker was handed out again"
        assert store.queue_depth(CLASSIFICATION) == 0 and store.pending_claims(CLASSIFICATION) == 0
        if backend == "redis":
            assert client.xlen(store._pool(CLASSIFICATION)) == 0, "completed entries are deleted from the stream"
    finally:
        for process in workers.processes:
            stop(process)
        for portal in portals:
            portal.stop()
