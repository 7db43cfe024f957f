"""The worker daemon: watch the pool, claim markers, run batches through the model, write results.

Runtime mode keeps models loaded and waits on file-system events (inotify through watchdog), with
a slow rescan as a safety net that also takes back markers of workers that died. Job mode runs the
same code once for one session and exits. Any number of workers may share one pool: claims are
exclusive (see ``sessions``), so each session is processed exactly once.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from scai import config, imaging
from scai.config import ConfigError, Settings
from scai.sessions import (
    COMPLETE,
    FAILURE,
    FINAL_STATES,
    PROCESSING,
    Claim,
    SessionNotFound,
    SessionStore,
)
from scai.tasks import Item, Task, task_for

log = logging.getLogger("scai.worker")


class SetOnChange(FileSystemEventHandler):
    """A watchdog handler that sets a ``threading.Event`` on any change in the watched folder."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class Worker:
    """One worker process for one job kind."""

    def __init__(self, settings: Settings, job: str) -> None:
        self.settings = settings
        self.job = job
        self.task: Task = task_for(job, settings.top_k)
        self.store = SessionStore(settings.session_dir)
        self.store.ensure_pool(job)
        self.models: dict[str, config.ModelSpec] = {}
        self.models_stamp = -1
        self._reread_models()
        self.engines: dict[str, tuple[config.ModelSpec, Any]] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()

    # -- models ---------------------------------------------------------------------------------
    def preload(self, names: list[str] | None = None) -> None:
        """Load models before serving, so a broken model stops the worker at start, not later."""
        for name in names if names is not None else list(self.models):
            self.engine(name)

    def engine(self, name: str) -> Any:
        """The loaded model of a section, loading it on first use. The config is read again when
        its file changed, so a section added or retrained since start-up is served as it is now."""
        self._reread_models()
        spec = config.pick_model(self.models, name)
        cached = self.engines.get(name)
        if cached is None or cached[0] != spec:
            started = time.perf_counter()
            self.engines[name] = (spec, self.task.load(spec))
            log.info("loaded model %r from %s in %.2f s", name, spec.path, time.perf_counter() - started)
        return self.engines[name][1]

    def _reread_models(self) -> None:
        path = self.settings.usr_dir / f"{self.job}.config"
        stamp = path.stat().st_mtime_ns if path.exists() else 0
        if stamp != self.models_stamp:
            self.models, self.models_stamp = config.load_models(self.settings.usr_dir, self.job), stamp

    # -- processing -----------------------------------------------------------------------------
    def claim_batch(self) -> list[Claim]:
        claims: list[Claim] = []
        for session_id in self.store.pending(self.job):
            claim = self.store.claim(self.job, session_id)
            if claim:
                claims.append(claim)
            if len(claims) >= self.settings.batch_size:
                break
        return claims

    def drain(self) -> int:
        """Process pending sessions until the pool is empty; returns how many were taken."""
        taken = 0
        while not self.stopping.is_set():
            claims = self.claim_batch()
            if not claims:
                break
            self.process(claims)
            taken += len(claims)
        return taken

    def process(self, claims: list[Claim]) -> None:
        """Run claimed sessions, grouped by model; every claim ends complete, failed or gone."""
        by_model: dict[str, list[tuple[Claim, Item]]] = defaultdict(list)
        for claim in claims:
            opened = self._open(claim)
            if opened is not None:
                by_model[opened[0]].append((claim, opened[1]))
        for model, items in by_model.items():
            self._run_model(model, items)

    def _open(self, claim: Claim) -> tuple[str, Item] | None:
        """Mark a session as processing and decode its image; None if it needs no more work."""
        sid = claim.session_id
        try:
            state = self.store.state(sid)
            if state.get("state") in FINAL_STATES:  # done before a crash took the worker
                self.store.finish(claim)
                return None
            self.store.update(sid, state=PROCESSING, message="processing")
            folder = self.store.path(sid)
            image = imaging.load_rgb(folder / state["input"], self.settings.max_pixels)
            return state["model"], Item(image, folder, state.get("options") or {})
        except SessionNotFound:
            log.info("session %s vanished before processing", sid)
            self.store.finish(claim)
        except imaging.InvalidImage as error:
            self._fail(claim, str(error))
        except Exception as error:  # a session must never take the worker down
            log.exception("session %s could not be opened", sid)
            self._fail(claim, f"internal error: {error}")
        return None

    def _run_model(self, model: str, items: list[tuple[Claim, Item]]) -> None:
        claims = [claim for claim, _ in items]
        try:
            engine = self.engine(model)
            started = time.perf_counter()
            results = self.task.run(engine, [item for _, item in items])
            elapsed = (time.perf_counter() - started) * 1000
        except (ConfigError, OSError) as error:
            for claim in claims:
                self._fail(claim, f"model {model!r} unavailable: {error}")
            return
        except Exception:
            if len(items) > 1:  # find the one session that breaks the batch
                for item in items:
                    self._run_model(model, [item])
                return
            log.exception("session %s failed in the model", claims[0].session_id)
            self._fail(claims[0], "the model could not process this image")
            return
        for claim, fields in zip(claims, results, strict=True):
            self._complete(claim, fields, elapsed / len(claims))

    def _complete(self, claim: Claim, fields: dict[str, Any], millis: float) -> None:
        try:
            self.store.update(claim.session_id, state=COMPLETE, message="complete", **fields)
            log.info("complete %s in %.1f ms", claim.session_id, millis)
        except SessionNotFound:
            log.info("session %s vanished during processing", claim.session_id)
        self.store.finish(claim)

    def _fail(self, claim: Claim, message: str) -> None:
        try:
            self.store.update(claim.session_id, state=FAILURE, message=message)
            log.info("failure %s: %s", claim.session_id, message)
        except SessionNotFound:
            pass
        self.store.finish(claim)

    # -- modes ----------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Runtime mode: serve until SIGTERM or SIGINT, finishing the batch in hand."""
        observer = Observer()
        # Markers are created in place and closed: IN_CLOSE_WRITE is the one event to wake on.
        # Asking for no move events also keeps watchdog from holding the queue back 0.5 s after
        # each claim (it delays a rename out of the folder, hoping to pair it with a rename in).
        pool = str(self.store.pool(self.job))
        observer.schedule(SetOnChange(self.wake), pool, recursive=False, event_filter=[FileClosedEvent])
        observer.start()
        log.info("watching %s", self.store.pool(self.job))
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                recovered = self.store.recover(self.job)
                if recovered:
                    log.info("took back %d sessions from a worker that died", len(recovered))
                self.drain()
                self.wake.wait(self.settings.rescan_seconds)
        finally:
            observer.stop()
            observer.join()

    def run_job(self, session_id: str | None = None) -> int:
        """Job mode: process one named session, or everything pending, then return."""
        if session_id is None:
            return self.drain()
        claim = self.store.claim(self.job, session_id)
        if claim is None:
            log.info("session %s is not pending (taken by another worker?)", session_id)
            return 0
        self.process([claim])
        return 1

    def stop(self, *_: object) -> None:
        self.stopping.set()
        self.wake.set()


def run(settings: Settings, job: str, mode: str, model: str | None = None, session: str | None = None) -> int:
    """The ``scai worker`` command: runtime mode serves until stopped, job mode once."""
    worker = Worker(settings, job)
    if mode == "job":
        worker.run_job(session)
        return 0
    worker.preload([model] if model else None)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run_forever()
    return 0


def python_executable() -> str:
    """This environment's Python. Under uwsgi ``sys.executable`` is the uwsgi binary, so the
    interpreter is found from ``sys.prefix`` (the virtual environment) instead."""
    candidate = Path(sys.prefix) / "bin" / "python"
    if Path(sys.executable).name.startswith("python") or not candidate.exists():
        return sys.executable
    return str(candidate)


def worker_command(settings: Settings, job: str, *extra: str) -> list[str]:
    """The command line that runs a worker for ``job`` with the same folders as ``settings``."""
    alias = {v: k for k, v in config.JOB_ALIASES.items()}[job]
    return [
        python_executable(), "-m", "scai", "worker", alias,
        "--session-dir", str(settings.session_dir), "--usr", str(settings.usr_dir), *extra,
    ]  # fmt: skip


def spawn_job(settings: Settings, job: str, session_id: str) -> subprocess.Popen:
    """Job mode: one short-lived worker process for one session, reaped by a thread."""
    command = worker_command(settings, job, "--runningmode", "job", "--session", session_id)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
    threading.Thread(target=process.wait, daemon=True).start()
    return process
