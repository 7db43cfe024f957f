"""Keeping child processes alive: the portal server and the workers of ``scai serve``, and the
worker processes of one ``scai worker --workers N`` unit.

A child that dies is started again after a growing delay (1, 2, 4 ... up to 30 s), and the log
says how it ended. One that exits with ``EXIT_CONFIG`` (a model or setting that cannot work) or
fails ``burst`` times within ``window`` seconds stays down, as systemd's StartLimitBurst does:
restarting would not help, and the log says why. As in supervisord (``startsecs``), a child that
ran ``STARTED_SECONDS`` before it died had started fine: its death begins a new count at a 1 s
delay, so a worker killed now and then (out of memory, an operator) is always brought back.
When every child is down for good, or an ``essential`` one is (the portal), the supervisor stops
the rest and exits non-zero, so that systemd sees the failure too. Nothing needs cleaning up after a death: a dead
worker's claims are handed out again at a later recovery by any worker (see ``scai.store``).

A worker child also beats a heartbeat file of the supervisor's (``beat``) from its loop. Its
first beat means it has started well (it loaded its models and serves), like systemd's
``Type=notify``: a worker that an upload kills later (out of memory, a decoder crash) is always
brought back after 1 s, never given up on; the store fails that upload after it stopped
``MAX_DELIVERIES`` workers. A heartbeat silent for ``hang_seconds`` is a hung worker (stopped,
stuck in a model): it is killed with SIGKILL and started again.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from scai import metrics
from scai.errors import EXIT_CONFIG

log = logging.getLogger("scai.supervisor")

#: The longest wait before a restart: a child failing at start is tried again at least this often.
MAX_DELAY = 10.0
#: The variable that names a child's heartbeat file (see ``beat``).
HEARTBEAT_ENV = "SCAI_SUPERVISOR_HEARTBEAT"
#: A child that lived this long had started well; only quicker deaths add up to giving up.
STARTED_SECONDS = 10.0


@dataclass
class Child:
    """One supervised command and what is known of its recent life."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    failures: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    started_at: float = 0.0
    given_up: bool = False
    #: Without it the others are of no use (the portal): giving up on it stops everything.
    essential: bool = False
    #: The job kind a worker serves (``classify``), counted in ``scai_worker_restarts_total``.
    kind: str = ""
    last_status: int = 0
    #: A heartbeat silent this long is a hung child, killed and restarted (None: not watched).
    hang_seconds: float | None = None
    heartbeat: Path | None = None
    started_wall: float = 0.0


def beat() -> None:
    """In a supervised worker: say "alive and serving" to the supervisor (nothing elsewhere)."""
    path = os.environ.get(HEARTBEAT_ENV)
    if path:
        with suppress(OSError):
            os.utime(path)


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child should not dlopen


def _die_with(parent: int) -> Callable[[], None]:
    """For the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so that no
    worker outlives it and keeps serving a pool nobody supervises (and exit at once if it already
    died between the fork and this call)."""

    def arm() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def describe(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {status}"


class Supervisor:
    """Starts its children, restarts those that die, and stops them all on request."""

    def __init__(self, children: list[Child], *, burst: int = 10, window: float = 300.0) -> None:
        self.children = children
        self.burst = burst
        self.window = window
        self.beats = Path(tempfile.mkdtemp(prefix="scai-supervisor-"))
        #: Set by ``stop`` or a signal handler (a plain flag: a handler must not take a lock).
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **child.env} if child.env else None
        if child.hang_seconds is not None:
            child.heartbeat = self.beats / f"{self.children.index(child)}"
            child.heartbeat.touch()
            child.started_wall = child.heartbeat.stat().st_mtime  # a beat makes it newer
            env = {**(env or os.environ), HEARTBEAT_ENV: str(child.heartbeat)}
        child.process = subprocess.Popen(
            child.command, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with(os.getpid())
        )
        child.restart_at = None
        child.started_at = time.monotonic()
        log.debug("started %s (pid %d)", child.name, child.process.pid)

    def check(self) -> None:
        """Reap children that ended and start again those that are due."""
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                self._kill_if_hung(child)
            if child.process is not None and child.process.poll() is not None:
                self._ended(child, child.process.returncode, now)
            if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                self._spawn(child)

    def _last_beat(self, child: Child) -> float | None:
        """When a watched child last beat (None: not since it started, or not watched)."""
        try:
            stamp = child.heartbeat.stat().st_mtime if child.heartbeat else 0.0
        except OSError:
            return None
        return stamp if stamp > child.started_wall else None

    def _kill_if_hung(self, child: Child) -> None:
        if child.hang_seconds is None:
            return
        silent = time.time() - (self._last_beat(child) or child.started_wall)
        if silent > child.hang_seconds:
            log.error("%s (pid %d) has not beaten for %.0f s: it hangs; killing it",
                      child.name, child.process.pid, silent)  # fmt: skip
            child.process.kill()
            child.process.wait()

    def _ended(self, child: Child, status: int, now: float) -> None:
        pid = child.process.pid if child.process else 0
        child.process = None
        child.last_status = status
        if now - child.started_at >= STARTED_SECONDS or self._last_beat(child) is not None:
            child.failures.clear()
        child.failures.append(now)
        while child.failures and child.failures[0] < now - self.window:
            child.failures.popleft()
        if status == EXIT_CONFIG:
            child.given_up = True
            log.error("%s (pid %d) cannot start (status %d): not restarting it; see its message above",
                      child.name, pid, status)  # fmt: skip
        elif len(child.failures) >= self.burst:
            child.given_up = True
            log.error("%s (pid %d) %s; %d failures in %.0f s: not restarting it",
                      child.name, pid, describe(status), len(child.failures), self.window)  # fmt: skip
        else:
            delay = min(MAX_DELAY, 2.0 ** (len(child.failures) - 1))
            child.restart_at = now + delay
            if child.kind:
                metrics.worker_restarted(child.kind)
            log.warning("%s (pid %d) %s; restarting it in %.0f s", child.name, pid, describe(status), delay)

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is None]

    def finished(self) -> bool:
        """Every child down for good, or an essential one."""
        return all(c.given_up for c in self.children) or any(c.given_up and c.essential for c in self.children)

    def exit_status(self) -> int:
        """0 after a requested stop; else EXIT_CONFIG if a child could not start, else 1."""
        if not self.finished():
            return 0
        return EXIT_CONFIG if any(c.given_up and c.last_status == EXIT_CONFIG for c in self.children) else 1

    def run(self, interval: float = 0.5) -> int:
        """Supervise until a signal asks to stop (see ``stop_on_signals``) or nothing is left to
        supervise; then stop every child. Returns the exit status for the command."""
        try:
            while not self.stopping:
                self.check()
                if self.finished():
                    log.error("nothing left to supervise: stopping")
                    break
                time.sleep(interval)  # a signal cuts it short
        finally:
            self.stop()
        return self.exit_status()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (workers finish the batch in hand), then SIGKILL whatever outlives ``timeout``."""
        self.stopping = True
        running = self.alive()
        for child in running:
            child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in %.0f s: killing it", child.name, child.process.pid, timeout)
                child.process.kill()
                child.process.wait()
        shutil.rmtree(self.beats, ignore_errors=True)

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT end ``run``; the children get SIGTERM from ``stop``. The handler
        only sets a flag: taking a lock in a signal handler could deadlock the loop holding it."""

        def handler(*_: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
