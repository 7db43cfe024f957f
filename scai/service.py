"""``scai serve``: the portal and its workers as one command, for a laptop or a first look.

Production runs the same pieces as separate systemd units behind nginx (see ``deploy/``).
"""

from __future__ import annotations

import logging
import signal
import subprocess

from werkzeug.serving import run_simple

from scai import config
from scai.config import Settings
from scai.portal import create_app
from scai.worker import worker_command

log = logging.getLogger("scai.service")


def _stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def serve(settings: Settings, host: str, port: int) -> int:
    """Run until Ctrl-C or SIGTERM, then stop the workers and wait for them."""
    app = create_app(settings)
    workers: list[subprocess.Popen] = []
    if settings.running_mode == "runtime":
        for job in configured_jobs(settings):
            command = worker_command(settings, job, "--checktimeperoid", str(settings.rescan_seconds))
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log.info(
        "SCAI on http://%s:%d (%s mode, sessions in %s)",
        host,
        port,
        settings.running_mode,
        settings.session_dir,
    )
    try:
        run_simple(host, port, app, threaded=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all(workers)
    return 0


def configured_jobs(settings: Settings) -> list[str]:
    """The job kinds that have at least one model section: each gets a worker."""
    return [job for job in config.JOBS if config.load_models(settings.usr_dir, job)]


def stop_all(processes: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM (workers finish the batch in hand), then SIGKILL whatever outlives ``timeout``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
