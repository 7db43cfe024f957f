"""The worker daemon: claim waiting sessions of one job kind, run them through the model, write
the results.

A worker speaks only the session store's interface (``scai.store``), so the same loop serves the
session folder and Redis. Runtime mode keeps models loaded and takes sessions from its queue as
they arrive (the store wakes it: no polling); a recovery every ``rescan_seconds``, whatever the
load, takes back the claims of workers that died or hang. Job mode (the session folder only) runs
the same code over what is pending, then exits. Any number of workers, on one machine or
several, may share a job kind: a claim is one worker's, and ``finish`` writes only while it still
is, so each session is completed exactly once.

A worker claims what is waiting, never waiting for a batch to fill: up to ``batch_size`` where a
model runs a batch in one call faster than one by one, else one at a time, so that sibling worker
processes share the queue.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

from scai import config, imaging, liveness, metrics, supervisor
from scai.config import ConfigError, Settings
from scai.store import (
    COMPLETE,
    FAILURE,
    FINAL_STATES,
    IMAGE,
    SERVER,
    Claim,
    JobModeStore,
    SessionNotFound,
    SessionStore,
    StoreUnavailable,
    open_store,
)
from scai.tasks import Item, Task, task_for

log = logging.getLogger("scai.worker")

#: How often a worker touches its heartbeat, busy or idle (``/healthz`` reads them).
HEARTBEAT_SECONDS = 2.0


class Worker:
    """One worker process for one job kind."""

    def __init__(
        self,
        settings: Settings,
        job: str,
        siblings: int = 1,
        *,
        task: Task | None = None,
        store: SessionStore | None = None,
    ) -> None:
        """``task`` and ``store`` default to the job's real ones; tests pass their own."""
        self.settings = settings
        self.job = job
        self.task: Task = task or task_for(job, settings, settings.interpreter_threads(siblings))
        self.store = store or open_store(settings)
        self.models: dict[str, config.ModelSpec] = {}
        self.models_stamp: tuple[object, ...] | None = None
        self._reread_models()
        self.engines: dict[str, tuple[config.ModelSpec, Any]] = {}
        self.stopping = threading.Event()
        self._stop_read, self._stop_write = os.pipe()
        #: This worker's name in the store's heartbeats (``/healthz`` counts the fresh ones).
        self.name = liveness.own_name()
        self.last_beat = 0.0
        self.next_rescan = 0.0

    # -- models ---------------------------------------------------------------------------------
    def preload(self, names: list[str] | None = None) -> None:
        """Load models before serving, so the first sessions do not wait for them. A model that
        cannot load is logged and left out: its sessions fail with the reason, the others serve
        (an exit would stop every model of the job kind). A name that is no section at all is
        the command line's mistake and raises."""
        for name in names if names is not None else list(self.models):
            config.pick_model(self.models, name)
            try:
                self.engine(name)
            except Exception as error:
                unexpected = not isinstance(error, ConfigError | OSError)  # a traceback only where it helps
                log.error("model %r cannot load; its sessions fail until fixed: %s", name, error, exc_info=unexpected)

    def engine(self, name: str) -> Any:
        """The loaded model of a section, loading it on first use. The config is read again when
        its file changed, so a section added or retrained since start-up is served as it is now."""
        self._reread_models()
        spec = config.pick_model(self.models, name)
        cached = self.engines.get(name)
        if cached is None or cached[0] != spec:
            started = time.perf_counter()
            try:
                spec.check()  # a section with a bad key is not loaded at all
                self.engines[name] = (spec, self.task.load(spec))
            except Exception:
                self.engines.pop(name, None)  # a section changed for the worse: its old model goes
                metrics.model_load_failed(self.job, name)
                raise
            layout = getattr(self.engines[name][1], "layout", None)  # a detector of raw outputs says which
            log.info(
                "loaded model %r from %s in %.2f s%s",
                name, spec.path, time.perf_counter() - started, f", layout {layout}" if layout else "",
            )  # fmt: skip
        return self.engines[name][1]

    def _reread_models(self) -> None:
        stamp = config.models_stamp(self.settings.usr_dir, self.job)
        if stamp != self.models_stamp:
            self.models, self.models_stamp = config.load_models(self.settings.usr_dir, self.job), stamp

    def claim_limit(self) -> int:
        """How many sessions to take at once: a batch only where a loaded model gains from one."""
        batching = any(getattr(engine, "batches", False) for _, engine in self.engines.values())
        return self.settings.batch_size if batching else 1

    # -- processing -----------------------------------------------------------------------------
    def drain(self) -> int:
        """Burst mode: process pending sessions until none is left; returns how many were taken."""
        taken = 0
        with self.store.queue(self.job, watch=False) as queue:
            while not self.stopping.is_set():
                claims = queue.take(self.claim_limit())
                if not claims:
                    break
                self.process(claims, lone=not queue.waiting())
                taken += len(claims)
        return taken

    def process(self, claims: list[Any], lone: bool = True) -> None:
        """Run claimed sessions, grouped by model; every claim ends complete, failed or gone.
        ``lone``: nothing else waits, so this batch may use every core."""
        by_model: dict[str, list[tuple[Claim, dict[str, Any]]]] = defaultdict(list)
        try:
            for claim in claims:
                state = self._open(claim)
                if state is not None:
                    by_model[_model(state)].append((claim, state))
            for model, opened in by_model.items():
                self._run_model(model, opened, lone)
        except BaseException:  # the store failed: what is still in hand goes back, to be tried again
            for claim in claims:
                self.store.release(claim)
            raise

    def _open(self, claim: Claim) -> dict[str, Any] | None:
        """The claimed session's state, or None (and the claim let go) if it needs no more work."""
        try:
            state = self.store.claimed_state(claim)
        except SessionNotFound:
            return self._vanished(claim)
        except StoreUnavailable:
            raise  # the store, not the session: the claim stays pending and is handed out again
        except Exception as error:  # an unreadable process.json fails its session, not the worker
            log.exception("session %s has an unreadable state", claim.session_id)
            self._fail(claim, None, f"internal error: unreadable session state ({error.__class__.__name__})", SERVER)
            return None
        if state.get("state") in FINAL_STATES:  # done before a crash took the worker
            self.store.drop(claim)
            return None
        return state

    def _vanished(self, claim: Claim) -> None:
        """A session cleaned away before its turn: nothing to do but let its claim go."""
        log.info("session %s vanished before processing", claim.session_id)
        self.store.drop(claim)

    def _decode(self, engine: Any, claim: Claim, state: dict[str, Any]) -> Item | None:
        """The session's image decoded for this engine, or None (the session failed) if it cannot be."""
        fit = getattr(engine, "input_size", None) if self.settings.draft_decode else None
        try:
            source = self.store.claimed_upload(claim, str(state.get("input")))
            contain = getattr(engine, "letterboxed", False)
            image = engine.shrink(
                imaging.load_rgb(source, self.settings.max_pixels, fit[::-1] if fit else None, contain)
            )
        except SessionNotFound:
            return self._vanished(claim)
        except imaging.InvalidImage as error:
            self._fail(claim, state, str(error))
            return None
        except StoreUnavailable:
            raise
        except Exception as error:  # a session must never take the worker down
            log.exception("session %s could not be opened", claim.session_id)
            self._fail(claim, state, f"internal error: {error}", SERVER)
            return None
        return Item(image, state.get("options") or {}, source)

    def _run_model(self, model: str, opened: list[tuple[Claim, dict[str, Any]]], lone: bool) -> None:
        try:
            engine = self.engine(model)
        except Exception as error:  # a missing or broken model fails its sessions, not the worker
            if not isinstance(error, ConfigError | OSError):
                log.exception("model %r could not be loaded", model)
            for claim, state in opened:
                self._fail(claim, state, f"model {model!r} unavailable: {error}", SERVER)
            return
        items = []
        for claim, state in opened:
            item = self._decode(engine, claim, state)
            if item is not None:
                items.append((claim, state, item))
        if items:
            self._infer(engine, model, items, lone)

    def _infer(self, engine: Any, model: str, items: list[tuple[Claim, dict[str, Any], Item]], lone: bool) -> None:
        try:
            started = time.perf_counter()
            results = self.task.run(engine, [item for _, _, item in items], lone=lone)
            elapsed = (time.perf_counter() - started) * 1000
        except Exception:
            if len(items) > 1:  # find the one session that breaks the batch
                for item in items:
                    self._infer(engine, model, [item], lone)
                return
            log.exception("session %s failed in the model", items[0][0].session_id)
            self._fail(items[0][0], items[0][1], "the model could not process this image")
            return
        for (claim, state, _), fields in zip(items, results, strict=True):
            self._complete(claim, state, fields, elapsed / len(items))

    def _complete(self, claim: Claim, state: dict[str, Any], fields: dict[str, Any], millis: float) -> None:
        final = {"state": COMPLETE, "message": "complete", **fields, "inference_ms": round(millis, 1)}
        if self._record(claim, state, final):
            log.info("complete %s in %.1f ms", claim.session_id, millis)
            metrics.session_done(self.job, _model(state), COMPLETE, millis)

    def _fail(self, claim: Claim, state: dict[str, Any] | None, message: str, fault: str = IMAGE) -> None:
        """End a session in failure; ``fault`` says whose: the image's (a client error) or the
        server's (a model that cannot load, an internal error)."""
        if self._record(claim, state or {}, {"state": FAILURE, "message": message, "fault": fault}):
            log.info("failure %s: %s", claim.session_id, message)
            metrics.session_done(self.job, _model(state or {}), FAILURE)

    def _record(self, claim: Claim, known: dict[str, Any], fields: dict[str, Any]) -> bool:
        """Write a final state and drop the claim; True if written. A session that vanished
        needs nothing more. One that cannot be written (a full disk) is released: a later
        recovery hands it out again, so it is retried until space is freed, and the worker goes on."""
        try:
            written = self.store.finish(claim, fields, known)
        except OSError as error:
            log.error("cannot record session %s (%s): it goes back to the pool", claim.session_id, error)
            self.store.release(claim)
            return False
        if not written:
            log.info("session %s vanished or was taken over during processing", claim.session_id)
        return written

    # -- modes ----------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Runtime mode: serve until SIGTERM or SIGINT, finishing the batch in hand."""
        with self.store.queue(self.job) as queue, self._stop_pipe():
            log.info("watching the %s pool of %s", self.job, self.settings.session_dir)
            self.next_rescan = 0.0
            while not self.stopping.is_set():
                try:
                    self._step(queue)
                except (OSError, StoreUnavailable):  # the store (its disk, Redis), not a session: wait, go on
                    log.exception("the session store failed; trying again in %.0f s", self.settings.rescan_seconds)
                    self.next_rescan = time.monotonic() + self.settings.rescan_seconds
                    select.select([self._stop_read], [], [], self.settings.rescan_seconds)

    def _step(self, queue: Any) -> None:
        """One turn of the loop: heartbeat and recovery when due, then a batch if one waits."""
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            supervisor.beat()  # first: a store that fails is not a hung worker
            self.store.beat(self.job, self.name)
            self.last_beat = now
        if now >= self.next_rescan:
            recovered = queue.recover()
            if recovered:
                log.info("took back %d sessions from a worker that died", recovered)
            self.next_rescan = now + self.settings.rescan_seconds
        wait = min(self.next_rescan, self.last_beat + HEARTBEAT_SECONDS) - now
        claims = queue.take(self.claim_limit(), wait, wake=(self._stop_read,))
        if claims:
            self.process(claims, lone=not queue.waiting())

    @contextmanager
    def _stop_pipe(self) -> Iterator[None]:
        try:
            yield
        finally:
            with suppress(OSError, StoreUnavailable):  # the heartbeat goes stale by itself
                self.store.retire(self.job, self.name)
            os.close(self._stop_read)
            os.close(self._stop_write)

    def rescan(self) -> int:
        """Take back the claims of workers that died (burst mode; the loop's queue does it there)."""
        with self.store.queue(self.job, watch=False) as queue:
            return queue.recover()

    def run_job(self, session_id: str | None = None, slots: int = 1, held: int | None = None) -> int:
        """Job mode: process one named session, or, holding one of ``slots`` job slots of this
        job kind (``held``: one handed over by the portal), everything pending, then return.
        Without a free slot it returns at once: the slot holders drain the pool, and each looks
        at the pool again after letting its slot go, so no session queued meanwhile is left behind."""
        store = cast(JobModeStore, self.store)  # the session folder: open_store refuses job mode on Redis
        if session_id is None:
            taken = 0
            slot = held if held is not None else store.take_slot(self.job, slots)
            number = store.slot_number(slot) if slot is not None else None
            if number is not None:  # this process's metric files are the slot's, not the pid's
                # slot numbers are exclusive within one session folder; several may share metrics
                metrics.identify(f"{self.job}-slot{number}-{config.folder_tag(self.settings.session_dir)}")
            while slot is not None:
                try:
                    store.recover(self.job)  # claims of a job process that died, or could not write
                    taken += self.drain()
                finally:
                    os.close(slot)
                # only its own slot again: its metric files may only be written by that slot's holder
                slot = store.take_slot(self.job, slots, only=number) if store.pending(self.job) else None
            return taken
        claim = store.claim(self.job, session_id)
        if claim is None:
            log.info("session %s is not pending (taken by another worker?)", session_id)
            return 0
        self.process([claim])
        return 1

    def stop(self, *_: object) -> None:
        self.stopping.set()
        with suppress(OSError):  # the loop has ended and closed its pipe
            os.write(self._stop_write, b"x")


def _model(state: dict[str, Any]) -> str:
    """The model section a session names (the default where it names none)."""
    return str(state.get("model") or config.DEFAULT_MODEL)


def run(
    settings: Settings,
    job: str,
    mode: str,
    model: str | None = None,
    session: str | None = None,
    siblings: int = 1,
    slot_fd: int | None = None,
) -> int:
    """The ``scai worker`` command: runtime mode serves until stopped, job mode once.
    ``siblings``: how many worker processes share this job kind (and the cores) with this one."""
    worker = Worker(settings, job, siblings)
    if mode == "job":
        worker.run_job(session, siblings, slot_fd)
        return 0
    worker.preload([model] if model else None)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run_forever()
    return 0
