"""What ``/healthz`` reports: can this installation take uploads and answer them?

For every job kind with a model configured: how many workers are alive (their heartbeat is fresh,
see ``Worker.run_forever``), how many sessions wait and how long the oldest has waited; and the
free space of the session folder. A job kind with models but no live worker makes the service
unhealthy (503): its uploads would be accepted and never answered. In job mode no worker is
expected; the portal starts one per upload.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from scai import config
from scai.config import Settings
from scai.store import open_store

#: A heartbeat older than this is a dead (or hung) worker's: several missed beats, and longer
#: than loading a TensorFlow model or running one large image.
STALE_SECONDS = 15.0


def report(settings: Settings, store: Any = None) -> tuple[dict[str, Any], int]:
    """The health report and its HTTP status (200, or 503 with the reasons in ``problems``)."""
    root = settings.session_dir
    problems = []
    store = store or open_store(settings)
    if settings.store:
        if not store.healthy():
            return {"status": "session store does not answer", "jobs": {}}, 503
    elif not (root.is_dir() and os.access(root, os.W_OK)):
        problems.append("session folder not writable")
    jobs = {}
    for job in config.JOBS:
        if not config.load_models(settings.usr_dir, job):
            continue
        live = store.live_workers(job, STALE_SECONDS)
        jobs[config.ALIAS_OF_JOB[job]] = {
            "workers": live,
            "queued": store.queue_depth(job, stop_at=settings.queue_limit or None),
            "oldest_wait_seconds": round(store.oldest_wait(job), 1),
        }
        if settings.running_mode == "runtime" and live == 0:
            problems.append(f"no live {config.ALIAS_OF_JOB[job]} worker")
    free = shutil.disk_usage(root).free if root.is_dir() else 0
    body = {"status": "ok" if not problems else "; ".join(problems), "jobs": jobs, "free_disk_mb": free // 2**20}
    return body, 503 if problems else 200
