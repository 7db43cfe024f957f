"""SCAI on separate hosts (``netns.Network``): redis-server on one, a portal on each of two more,
a classification worker on each of two others. Each process has a temporary folder of its own;
they meet only in Redis, over the network. A closed-loop load from the test process sends photos
to both portals while a fault is made, and ``Report`` says what it cost: answers by status,
sessions lost or completed twice, the longest wait a client saw, and how long after the fault
ended the affected part served again.

Shared by tests/test_hosts.py (short runs, marked ``fault``) and bench/hosts.py (longer ones)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import redis
import requests
from conftest import redis_answers, scai_command, wait_for
from netns import Host, Network

PORT, REDIS_PORT = 5001, 6379
#: A worker's claims are handed out again after this long (a cut-off host's included).
LEASE = {"SCAI_CLAIM_LEASE_SECONDS": "5", "SCAI_RESCAN_SECONDS": "1"}
CLIENT_WAIT = 15  # wait= of each upload: the longest a portal may hold a client


class Site:
    """The five hosts and their processes; ``folder`` holds each one's temporary folder and log."""

    def __init__(self, folder: Path, usr: Path) -> None:
        self.folder, self.usr = folder, usr
        self.network = Network()
        self.redis_host = self.network.add_host("redis")
        self.portals = [self.network.add_host(f"portal{n}") for n in (1, 2)]
        self.workers = [self.network.add_host(f"worker{n}") for n in (1, 2)]
        self.store = f"redis://{self.redis_host.address}:{REDIS_PORT}/0"
        self.env = {**os.environ, **LEASE}

    @cached_property
    def client(self) -> redis.Redis:
        """One client for the test's own reads (it reconnects after a Redis restart)."""
        return redis.Redis(host=self.redis_host.address, port=REDIS_PORT, socket_timeout=5)

    def url(self, portal: Host) -> str:
        return f"http://{portal.address}:{PORT}"

    def start(self) -> None:
        self.start_redis()
        for portal in self.portals:
            self.start_portal(portal)
        for worker in self.workers:
            self.start_worker(worker)
        wait_for(lambda: all(self.workers_seen(p) == 2 for p in self.portals), 90, "both portals and workers")

    def start_redis(self) -> None:
        data = self.folder / "redis"
        data.mkdir(exist_ok=True)
        command = [shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                   "--protected-mode", "no", "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                   "--save", "", "--maxmemory-policy", "noeviction"]  # fmt: skip
        self.redis_host.spawn(command, data / "redis.log")
        wait_for(lambda: redis_answers(self.client), 20, "redis-server")

    def start_portal(self, portal: Host) -> None:
        self._scai(portal, "portal.log", "serve", "--portal-only", "--host", "0.0.0.0", "--port", str(PORT))
        wait_for(lambda: self.workers_seen(portal) >= 0, 60, f"{portal.name}'s /healthz")

    def start_worker(self, worker: Host) -> None:
        self._scai(worker, "worker.log", "worker", "classify", "--workers", "1")

    def _scai(self, host: Host, log: str, *args: str) -> None:
        """``scai ARGS`` on ``host``, on the shared store, with a session folder of its own."""
        own = self.folder / host.name
        own.mkdir(exist_ok=True)
        store = ("--store", self.store, "--session-dir", str(own / "session"), "--usr", str(self.usr))
        host.spawn(scai_command(*args, *store), own / log, self.env)

    def workers_seen(self, portal: Host) -> int:
        """Live classification workers as the portal's /healthz counts them; -1 if it does not answer."""
        try:
            answer = requests.get(f"{self.url(portal)}/healthz", timeout=3)
            return int(answer.json()["jobs"]["classify"]["workers"])
        except (requests.RequestException, ValueError, KeyError):
            return -1

    def beats_since(self, host: Host, ended: float) -> bool:
        """Whether a worker on ``host`` has beaten since ``ended`` (a time.monotonic() instant):
        its heartbeat in Redis is named ``hostname-pid-...`` and its pid is in the namespace."""
        since = time.time() - (time.monotonic() - ended)
        listed = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True)
        pids = set(listed.stdout.split())
        beats = self.client.zrange("scai:workers:image_classification", 0, -1, withscores=True)
        return any(name.decode().split("-")[-3] in pids and score > since for name, score in beats)

    def close(self) -> None:
        self.network.close()


@dataclass
class Answer:
    portal: str
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    seconds: float
    ended: float  # time.monotonic() when it came
    session: str | None = None
    key: str | None = None
    label: str | None = None


@dataclass
class Load:
    """Clients in closed loop, each sending the next photo as soon as the last is answered."""

    site: Site
    photo: bytes
    clients: int = 8
    answers: list[Answer] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def _client(self, number: int) -> None:
        portal = self.site.portals[number % len(self.site.portals)]
        with requests.Session() as http:
            while not self.stopping.is_set():
                started = time.monotonic()
                answer = Answer(portal.name, 0, 0.0, 0.0)
                try:
                    response = http.post(f"{self.site.url(portal)}/api/v1/classify", params={"wait": CLIENT_WAIT},
                                         files={"photo": ("p.jpg", self.photo)}, timeout=CLIENT_WAIT + 30)  # fmt: skip
                    answer.status = response.status_code
                    if response.status_code in (200, 202):
                        body = response.json()
                        answer.session, answer.key = body["sessname"], body["sesskey"]
                        answer.label = (body.get("predictions") or [{}])[0].get("label")
                except requests.RequestException:
                    time.sleep(0.2)  # a refused connection comes back at once: do not spin
                answer.seconds, answer.ended = time.monotonic() - started, time.monotonic()
                self.answers.append(answer)

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            for thread in threads:
                thread.join(CLIENT_WAIT + 40)


@dataclass
class Report:
    fault: str
    statuses: Counter
    lost: list[Answer]  # accepted (200 or 202), and gone or never final
    twice: int
    wrong_label: int
    longest_seconds: float
    recovery_seconds: float | None
    accepted: int

    def row(self) -> str:
        ok = self.statuses[200] + self.statuses[202]
        other = sum(n for status, n in self.statuses.items() if status not in (200, 202, 503))
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f}"
        return (f"| {self.fault} | {ok} | {self.statuses[503]} | {other} | {len(self.lost)} | {self.twice} | "
                f"{self.longest_seconds:.1f} | {recovery} |")  # fmt: skip


HEADER = ("| fault | 200/202 | 503 | other | lost | completed twice | longest client wait, s | "
          "recovery after the fault ended, s |\n|---|---|---|---|---|---|---|---|")  # fmt: skip


def settle(site: Site, load: Load, fault: str, reference: str, recovery: float | None, timeout: float = 90) -> Report:
    """Once every accepted session is final (or ``timeout``), what the fault cost. ``recovery``:
    seconds from the end of the fault until the affected part served again."""
    accepted = [a for a in load.answers if a.status in (200, 202)]
    client = site.client

    def state(answer: Answer) -> dict | None:
        raw = client.hget(f"scai:session:{answer.session}", "state")
        return None if raw is None else json.loads(raw)

    def final(answer: Answer) -> bool:
        found = state(answer)
        return found is None or found["state"] in ("complete", "failure")  # gone is final too: lost

    deadline = time.monotonic() + timeout
    while not all(final(a) for a in accepted) and time.monotonic() < deadline:
        time.sleep(0.5)
    lost, twice, wrong = [], 0, 0
    for answer in accepted:
        found = state(answer)
        if found is None or found["state"] != "complete":
            lost.append(answer)
            continue
        twice += int(client.hget(f"scai:session:{answer.session}", "completions") or 0) > 1
        wrong += next(iter(found.get("result") or {}), None) != reference
    longest = max((a.seconds for a in load.answers), default=0.0)
    return Report(fault, Counter(a.status for a in load.answers), lost, twice, wrong, longest, recovery, len(accepted))


@dataclass
class Fault:
    """One fault: ``make`` it, hold it ``hold`` seconds, ``undo`` it; ``recovered(answers, ended)``
    says the affected part serves again."""

    name: str
    make: Callable[[], object]
    undo: Callable[[], object]
    recovered: Callable[[list[Answer], float], bool] | None = None
    hold: float = 10.0


def faults(site: Site, netem: bool) -> dict[str, Fault]:
    """The faults the tests and bench/hosts.py make, by key."""
    worker, portal, other_worker, other_portal = site.workers[0], site.portals[0], site.workers[1], site.portals[1]

    def start_again() -> None:
        site.start_worker(other_worker)
        site.start_portal(other_portal)

    def restart_redis(signal_number: int) -> Callable[[], None]:
        def restart() -> None:
            kill(site.redis_host, signal_number=signal_number)
            site.start_redis()

        return restart

    net = site.network
    return {
        "worker-cut": Fault("worker host cut off 10 s", lambda: net.cut(worker), lambda: net.restore(worker),
                            lambda answers, ended: site.beats_since(worker, ended)),
        "portal-cut": Fault("portal cut off from Redis 10 s", lambda: net.block(portal, site.redis_host),
                            lambda: net.unblock(portal), answered_by(portal)),
        "sigkill": Fault("SIGKILL of a worker host and a portal", lambda: kill(other_worker, other_portal),
                         start_again, lambda answers, ended: site.workers_seen(other_portal) == 2),
        "lossy": Fault("worker link: 2% loss" + (", 50 ms delay" if netem else " (no netem: no delay)"),
                       lambda: net.lossy(worker, 2, 50, netem), lambda: net.clear(worker)),
        "redis-sigterm": Fault("Redis restarted (SIGTERM)", restart_redis(signal.SIGTERM), lambda: None,
                               answered_by(portal), hold=0),
        "redis-sigkill": Fault("Redis restarted (SIGKILL)", restart_redis(signal.SIGKILL), lambda: None,
                               answered_by(portal), hold=0),
    }  # fmt: skip


def run_fault(
    site: Site, photo: bytes, reference: str, fault: Fault, clients: int = 8, after: float = 0.0
) -> tuple[Report, float]:
    """Load, the fault for its ``hold`` seconds (its length, not a synchronisation), undone, then
    the load until it has recovered (that time is the recovery) and ``after`` seconds more; what
    it cost once every accepted session is final, and when the fault was made."""
    load = Load(site, photo, clients)
    with load.running():
        wait_for(lambda: sum(a.status == 200 for a in load.answers) >= 5, 60, "answers before the fault")
        made = time.monotonic()
        fault.make()
        time.sleep(fault.hold)
        fault.undo()
        ended = time.monotonic()
        recovery = None
        if fault.recovered is not None:
            wait_for(lambda: fault.recovered(load.answers, ended), 90, f"recovery from: {fault.name}")
            recovery = time.monotonic() - ended
        time.sleep(after)
    return settle(site, load, fault.name, reference, recovery), made


def answered_by(portal: Host) -> Callable[[list[Answer], float], bool]:
    """Recovered once ``portal`` answers an upload with 200 after the fault ended."""
    return lambda answers, ended: any(a.portal == portal.name and a.status == 200 and a.ended > ended for a in answers)


def kill(*hosts: Host, signal_number: int = signal.SIGKILL) -> None:
    """``signal_number`` to every process of ``hosts`` (each leads its group)."""
    for host in hosts:
        for process in host.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal_number)
                process.wait()
