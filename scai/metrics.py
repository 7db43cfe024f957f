"""Prometheus metrics, correct across the portal's processes and the workers.

SCAI is several processes (uwsgi's, each worker, the supervisor), so values live in
prometheus_client's multiprocess mode: every process writes its own memory-mapped files in one
folder (``SCAI_METRICS_DIR``, default ``.metrics`` in the session folder; ``scai serve`` empties it
at start), and ``/metrics`` merges them into a fresh registry on each scrape. The mode is fixed when
prometheus_client is first imported, so each process calls ``enable(settings)`` before any metric
is touched, and the metrics are created on first use. Without a folder (a process of its own, the
in-process tests) the values are this process's.

Counters of processes that ended stay in their files and keep counting (a worker killed and
restarted does not take its sessions with it). Queue depth, oldest wait and live workers are
read from the session store at scrape time: they are the store's facts, not a process's; so are
the session folder's size and its disk's free space (``session_folder_usage``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scai.config import ALIAS_OF_JOB, JOBS, Settings, load_models
from scai.errors import StoreUnavailable
from scai.store import is_session_id

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Request latencies, and inference times (a TFLite model takes milliseconds, a TF1 detector on a
#: large photo seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: A scrape reuses a process's measure of the session folder this long (Prometheus scrapes every
#: 15 s or so; the folder's size moves slowly).
FOLDER_CACHE_SECONDS = 30.0
#: Sessions measured file by file; past this many, a random sample of them is measured and the
#: rest estimated from it, so a scrape never walks a day of uploads (a million sessions).
FOLDER_SAMPLE = 1000


def enable(settings: Settings) -> None:
    """Record into the folder this installation's processes share (``Settings.metrics_folder``).
    Called by each process's entry point (``scai serve``, ``scai worker``, ``run.py``) before
    anything records; a process that never calls it keeps its values to itself."""
    if ENV not in os.environ:
        settings.metrics_folder.mkdir(parents=True, exist_ok=True)
        os.environ[ENV] = str(settings.metrics_folder)


def identify(name: str) -> None:
    """Name this process's value files ``name`` instead of its pid: a job-mode process by the
    slot it holds, so that the files stay as many as the slots rather than one set per process.
    Only a name no other running process has (the slot's lock makes sure), and only before the
    first value is recorded."""
    if ENV in os.environ and not _created:
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: name)


def reset(folder: Path) -> None:
    """Remove a run's value files: before a new set of processes starts (they would add up), and
    when it ends. Only prometheus_client's ``*.db`` files (``SCAI_METRICS_DIR`` may name a folder
    that holds other things), and never the folder: a job-mode worker the portal started may
    still be finishing, and it must be able to make a file there."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


_created: list[SimpleNamespace] = []
_creating = threading.Lock()


def _metrics() -> SimpleNamespace:
    """The metrics, made on first use (after ``enable``) by exactly one of the threads asking."""
    if not _created:
        with _creating:
            if not _created:
                _created.append(_make())
    return _created[0]


def _make() -> SimpleNamespace:
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter("scai_http_requests", "HTTP requests answered", ["route", "method", "status"]),
        latency=Histogram(
            "scai_http_request_duration_seconds", "HTTP request time", ["route"], buckets=LATENCY_BUCKETS
        ),
        sessions=Counter("scai_sessions", "Sessions finished by the workers", ["job", "model", "state"]),
        inference=Histogram(
            "scai_inference_seconds", "Model time per image", ["job", "model"], buckets=INFERENCE_BUCKETS
        ),
        restarts=Counter("scai_worker_restarts", "Worker processes restarted by a supervisor", ["job"]),
        load_failures=Counter("scai_model_load_failures", "Models that could not be loaded", ["job", "model"]),
    )


def request_done(route: str, method: str, status: int, seconds: float) -> None:
    metrics = _metrics()
    metrics.requests.labels(route, method, str(status)).inc()
    metrics.latency.labels(route).observe(seconds)


def session_done(job: str, model: str, state: str, inference_ms: float | None = None) -> None:
    metrics = _metrics()
    metrics.sessions.labels(ALIAS_OF_JOB.get(job, job), model, state).inc()
    if inference_ms is not None:
        metrics.inference.labels(ALIAS_OF_JOB.get(job, job), model).observe(inference_ms / 1000)


def worker_restarted(kind: str) -> None:
    _metrics().restarts.labels(kind).inc()


def model_load_failed(job: str, model: str) -> None:
    _metrics().load_failures.labels(ALIAS_OF_JOB.get(job, job), model).inc()


class StoreCollector:
    """Queue depth, oldest wait and live workers per job kind, read from the store at scrape time."""

    def __init__(self, settings: Settings, store: Any, stale_seconds: float) -> None:
        self.settings, self.store, self.stale_seconds = settings, store, stale_seconds

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("scai_store_up", "Whether the session store answered this scrape")
        depth = GaugeMetricFamily("scai_queue_depth", "Sessions waiting for a worker", labels=["job"])
        oldest = GaugeMetricFamily(
            "scai_queue_oldest_wait_seconds", "Age of the oldest waiting session", labels=["job"]
        )
        workers = GaugeMetricFamily("scai_workers_live", "Workers with a fresh heartbeat", labels=["job"])
        try:
            for job in JOBS:
                if load_models(self.settings.usr_dir, job):
                    depth.add_metric([ALIAS_OF_JOB[job]], self.store.queue_depth(job))
                    oldest.add_metric([ALIAS_OF_JOB[job]], self.store.oldest_wait(job))
                    workers.add_metric([ALIAS_OF_JOB[job]], self.store.live_workers(job, self.stale_seconds))
        except StoreUnavailable:  # the processes' own values are still worth a scrape
            up.add_metric([], 0)
            yield up
            yield from self._folder()
            return
        up.add_metric([], 1)
        yield from (up, depth, oldest, workers)
        yield from self._folder()

    def _folder(self) -> Any:
        """The session folder's sessions, their bytes on disk and the disk's free bytes (not with
        Redis, which keeps sessions in its own memory)."""
        from prometheus_client.core import GaugeMetricFamily

        root = self.settings.session_dir
        if self.settings.store or not root.is_dir():
            return
        sessions, used = session_folder_usage(root)
        yield GaugeMetricFamily("scai_sessions_stored", "Sessions in the session folder", value=sessions)
        yield GaugeMetricFamily(
            "scai_session_folder_bytes", "Disk space the sessions take (estimated past FOLDER_SAMPLE)", value=used
        )
        usage = os.statvfs(root)
        yield GaugeMetricFamily(
            "scai_disk_free_bytes", "Free space of the session folder's disk", value=usage.f_bavail * usage.f_frsize
        )


#: Session folder -> (when measured, sessions, bytes), per process.
_folder_usage: dict[Path, tuple[float, int, int]] = {}


def session_folder_usage(root: Path) -> tuple[int, int]:
    """How many sessions the folder holds, and the disk space they take (blocks, so a 73 KB upload
    counts what the disk gives it). Exact up to ``FOLDER_SAMPLE`` sessions, estimated from a
    random sample of that many above it; measured again after ``FOLDER_CACHE_SECONDS``."""
    now = time.monotonic()
    cached = _folder_usage.get(root)
    if cached is not None and now - cached[0] < FOLDER_CACHE_SECONDS:
        return cached[1], cached[2]
    with os.scandir(root) as entries:
        names = [entry.name for entry in entries if is_session_id(entry.name)]
    sample = names if len(names) <= FOLDER_SAMPLE else random.sample(names, FOLDER_SAMPLE)
    measured = sum(_disk_bytes(root / name) for name in sample)
    used = measured * len(names) // max(len(sample), 1)
    _folder_usage[root] = (now, len(names), used)
    return len(names), used


def _disk_bytes(folder: Path) -> int:
    """The blocks of a session folder and of the files in it, in bytes; 0 for one cleaned away."""
    total = 0
    with suppress(FileNotFoundError, NotADirectoryError):
        total = folder.stat().st_blocks * 512
        with os.scandir(folder) as entries:
            for entry in entries:
                with suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def render(collector: StoreCollector) -> tuple[bytes, str]:
    """The exposition text of every process's values plus the store's gauges, and its type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _metrics()  # every family appears from the first scrape, even before its first value
    store_registry = CollectorRegistry()
    store_registry.register(collector)
    if ENV in os.environ:
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged) + generate_latest(store_registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(store_registry), CONTENT_TYPE_LATEST
