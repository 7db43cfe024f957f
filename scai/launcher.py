"""Starting worker processes: supervised groups for runtime mode, bounded short-lived ones for
job mode. Kept apart from ``worker`` (the loop inside a worker process) so that the portal, which
starts job-mode workers, never imports the worker's machinery.

Job mode starts a worker process for an upload only while fewer than ``workers`` processes of
that job kind run; each holds a slot (``JobModeStore.take_slot``: job mode runs on the session
folder only) and drains the pool before it exits, so uploads beyond the bound wait in the pool
instead of each starting a TensorFlow process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

from scai import config
from scai.config import Settings
from scai.store import JobModeStore, open_store
from scai.supervisor import Child, Supervisor

log = logging.getLogger("scai.launcher")


def python_executable() -> str:
    """This environment's Python. Under uwsgi ``sys.executable`` is the uwsgi binary, so the
    interpreter is found from ``sys.prefix`` (the virtual environment) instead."""
    candidate = Path(sys.prefix) / "bin" / "python"
    if Path(sys.executable).name.startswith("python") or not candidate.exists():
        return sys.executable
    return str(candidate)


def worker_command(settings: Settings, job: str, *extra: str) -> list[str]:
    """The command line that runs a worker for ``job`` with the same folders as ``settings``."""
    alias = config.ALIAS_OF_JOB[job]
    return [
        python_executable(), "-m", "scai", "worker", alias,
        "--session-dir", str(settings.session_dir), "--usr", str(settings.usr_dir), *extra,
    ]  # fmt: skip


def worker_group(settings: Settings, job: str, processes: int, *extra: str) -> list[Child]:
    """``processes`` supervised workers for ``job``, each told how many siblings share the cores."""
    alias = config.ALIAS_OF_JOB[job]
    options = (
        "--workers",
        "1",
        "--siblings",
        str(processes),
        "--checktimeperoid",
        str(settings.rescan_seconds),
        *extra,
    )
    command = worker_command(settings, job, *options)
    env = settings.to_env()
    hang = settings.claim_lease_seconds  # its claims are taken over then too
    return [
        Child(f"{alias} worker {i + 1}/{processes}", command, env, kind=alias, hang_seconds=hang)
        for i in range(processes)
    ]


def run_group(settings: Settings, job: str, processes: int, *extra: str) -> int:
    """``scai worker KIND --workers N``: N supervised worker processes, for one systemd unit."""
    supervisor = Supervisor(worker_group(settings, job, processes, *extra))
    supervisor.stop_on_signals()
    supervisor.start()
    log.info("%d %s workers", processes, job)
    return supervisor.run()


def start_job_worker(settings: Settings, job: str) -> subprocess.Popen | None:
    """Job mode, after an upload was queued: a worker process that drains ``job``'s pool, unless
    ``workers`` of them already run (a holder looks at the pool again after letting its slot go,
    so it takes this upload too). The slot is taken here and handed to the child, which inherits
    the lock: the bound holds across every portal process, with no window. Reaped by a thread."""
    slots = settings.worker_processes(job)
    slot = cast(JobModeStore, open_store(settings)).take_slot(job, slots)  # job mode: the folder's
    if slot is None:
        return None
    try:
        command = worker_command(
            settings, job, "--runningmode", "job", "--siblings", str(slots), "--slot-fd", str(slot)
        )
        env = {**os.environ, **settings.to_env()}
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=config.ROOT, env=env, pass_fds=(slot,))
    finally:
        os.close(slot)  # the child's copy holds the lock now
    threading.Thread(target=process.wait, daemon=True).start()
    return process
