"""``scai serve``: the portal under uwsgi behind a front that takes whole requests, and the
workers of every job kind, sized to the machine and supervised, as one command.

The front (``scai.front``) owns the port: it reads each request's headers and body on an event
loop, within ``Settings.client_timeout``, so that a slow client holds no thread, and hands only
whole requests to uwsgi, which speaks HTTP itself (``--http-socket``) on a private Unix socket,
one process per core with threads for the requests that wait on a result. Each job kind gets
``Settings.worker_processes`` workers. A child that dies is restarted and logged
(``supervisor``); Ctrl-C or SIGTERM stops everything, the workers finishing the batch in hand.
Production runs the same pieces as systemd units behind nginx (see ``deploy/``), nginx in the
front's place.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from scai import config, front, metrics
from scai.config import PORTAL_THREADS, ROOT, Settings
from scai.launcher import worker_group
from scai.store import open_store
from scai.supervisor import Child, Supervisor

log = logging.getLogger("scai.service")


def uwsgi_command(settings: Settings, socket: str) -> list[str]:
    """uwsgi serving ``run:application`` over plain HTTP on the Unix socket ``socket`` (the
    front's only), one process per core. Each request comes behind a PROXY line naming the client.
    The buffer holds the longest head the front passes on (32 KB) with room to spare.

    No ``harakiri``: with threads, uwsgi fires it spuriously about a second into a request and
    drops every request the process holds (seen under load with 12-megapixel uploads). The API
    bounds its own waits (``max_wait_seconds``) instead.
    """
    return [
        str(Path(sys.prefix) / "bin" / "uwsgi"),
        "--http-socket", socket, "--enable-proxy-protocol", "--add-header", "Connection: close",
        "--master", "--need-app", "--die-on-term", "--enable-threads",
        "--processes", str(config.auto_processes()), "--threads", str(PORTAL_THREADS),
        "--listen", str(config.listen_backlog()),
        "--chdir", str(ROOT), "--virtualenv", sys.prefix, "--module", "run:application",
        "--buffer-size", "65535", "--wsgi-disable-file-wrapper",
        "--chunked-input-limit", str(settings.max_upload_bytes),  # one chunk may be the whole upload
        "--disable-logging", "--log-4xx", "--log-5xx", "--log-format", config.UWSGI_LOG_FORMAT,
        "--ignore-sigpipe", "--ignore-write-errors",
        "--disable-write-exception",
    ]  # fmt: skip


#: glibc malloc arenas for the portal's processes (glibc's default: up to 8 per core, one per
#: thread here). An arena keeps what is freed into it, the upload buffers each thread read, so every
#: thread's arena held its own few MB (bench/portal_memory.py, 12 MP photos, 16 and 64 clients: the
#: largest portal process 40 MB at start, 80 MB at peak, 57-67 MB after; with 2 arenas 65-68, 45-48,
#: requests/s 0.89x to 1.19x over three runs, noise). glibc reads it at start: set in the environment.
PORTAL_MALLOC_ARENAS = "2"


def portal_env(settings: Settings) -> dict[str, str]:
    """The portal's settings: uwsgi's app reads them from the environment, as under systemd; and
    ``MALLOC_ARENA_MAX`` unless the environment names its own."""
    arenas = os.environ.get("MALLOC_ARENA_MAX", PORTAL_MALLOC_ARENAS)
    return {**settings.to_env(), "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": arenas}


def serve(settings: Settings, host: str, port: int, portal_only: bool = False) -> int:
    """Run until Ctrl-C or SIGTERM, then stop the portal and the workers and wait for them.
    ``portal_only``: no workers here (they run on other machines, sharing a Redis store)."""
    open_store(settings)  # a store or blob setting that does not parse stops here, not in every child
    settings.session_dir.mkdir(parents=True, exist_ok=True)
    metrics.reset(settings.metrics_folder)  # this run's processes only
    metrics.enable(settings)
    private = tempfile.mkdtemp(prefix="scai-serve-")  # the portal's socket: the front's alone
    socket = str(Path(private) / "portal.sock")
    children = [
        Child("front", front.command(socket, host, port), portal_env(settings), essential=True),
        Child("portal (uwsgi)", uwsgi_command(settings, socket), portal_env(settings), essential=True),
    ]
    if settings.running_mode == "runtime" and not portal_only:
        for job in configured_jobs(settings):
            children += worker_group(settings, job, settings.worker_processes(job))
    supervisor = Supervisor(children)
    supervisor.stop_on_signals()
    supervisor.start()
    workers = ", ".join(child.name for child in children[2:]) or "none here"
    log.info("SCAI on http://%s:%d (%s mode, sessions in %s; workers: %s)",
             host, port, settings.running_mode, settings.session_dir, workers)  # fmt: skip
    try:
        return supervisor.run()
    finally:
        metrics.reset(settings.metrics_folder)  # this run's values go with it, as they came
        shutil.rmtree(private, ignore_errors=True)


def configured_jobs(settings: Settings) -> list[str]:
    """The job kinds that have at least one model section: each gets workers."""
    return [job for job in config.JOBS if config.load_models(settings.usr_dir, job)]
