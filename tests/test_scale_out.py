"""Past one machine: 2 portals and 3 classification workers, each process with a temp folder of
its own, meeting only in one real redis-server. 1,000 uploads spread over both portals (half
answered with wait=, half polled on the other portal, some through the original routes) while 3
workers holding claims are killed with SIGKILL and replaced: every session completes exactly once
(counted by the completion fence) with the reference label, a dead worker's claims were handed
out again, and the stream's pending list is empty at the end."""

from __future__ import annotations

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
from scai.store.redis_streams import GROUP, RedisStore
from scai.tasks import classify_file

pytestmark = [needs_assets, pytest.mark.slow]

UPLOADS = 1000
PHOTOS = ["parrot.jpg", "burger.jpg", "grace_hopper.jpg", "pets.jpg"]
FAST_RECOVERY = {"SCAI_CLAIM_LEASE_SECONDS": "2", "SCAI_RESCAN_SECONDS": "1"}


class Workers:
    """``scai worker classify`` processes on the shared store, each in a folder of its own."""

    def __init__(self, root: Path, usr: Path, store: str) -> None:
        self.root, self.usr, self.store, self.processes = root, usr, store, []

    def start(self) -> subprocess.Popen:
        folder = self.root / f"worker{len(self.processes)}"
        folder.mkdir(parents=True)
        command = scai_command(
            "worker",
            "classify",
            "--store",
            self.store,
            "--session-dir",
            str(folder / "session"),
            "--usr",
            str(self.usr),
        )
        log = (folder / "worker.log").open("wb")
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **FAST_RECOVERY}
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "".join(p.read_text() for p in self.root.glob("worker*/worker.log"))


def holding_claims(client: redis.Redis, pool: str, processes: list[subprocess.Popen]) -> subprocess.Popen | None:
    """A live worker that holds claimed entries right now (its consumer name ends in its pid)."""
    held = {c["name"].decode().rsplit(":", 1)[-1] for c in client.xinfo_consumers(pool, GROUP) if c["pending"]}
    return next((p for p in processes if p.poll() is None and str(p.pid) in held), None)


def test_two_portals_three_workers_kill_9_every_session_once(tmp_path: Path, usr: Path, redis_url: str) -> None:
    url = redis_url.replace("/0", "/2")
    client = redis.Redis.from_url(url)
    client.flushdb()
    spec = load_models(usr, CLASSIFICATION)["default"]
    reference = {name: classify_file(spec, IMAGES / name, 1, 50_000_000)[0].label for name in PHOTOS}
    photos = {name: (IMAGES / name).read_bytes() for name in PHOTOS}
    portals = [
        Server(tmp_path / f"portal{i}" / "session", usr, tmp_path / f"portal{i}.log", "--store", url, "--portal-only",
               env=FAST_RECOVERY, healthy=False)
        for i in range(2)
    ]  # fmt: skip
    workers = Workers(tmp_path / "workers", usr, url)
    store = RedisStore(url, 3600)
    pool = store._pool(CLASSIFICATION)
    try:
        for _ in range(3):
            workers.start()
        wait_for(lambda: requests.get(f"{portals[0].url}/healthz").json()["jobs"]["classify"]["workers"] == 3, 60,
                 "three workers to beat")  # fmt: skip
        killed, done = [], threading.Event()

        def killer() -> None:
            while len(killed) < 3 and not done.is_set():
                victim = holding_claims(client, pool, workers.processes)
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
        assert client.xpending(pool, GROUP)["pending"] == 0 and client.xlen(pool) == 0
    finally:
        for process in workers.processes:
            stop(process)
        for portal in portals:
            portal.stop()
