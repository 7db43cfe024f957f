"""What ``/healthz`` reports: can this installation take uploads and answer them?

For every job kind with a model configured: how many workers are alive (their heartbeat is fresh,
see ``Worker.run_forever``), how many sessions wait and how long the oldest has waited; and the
free space of the session folder. A job kind with models but no live worker makes the service
unhealthy (503): its uploads would be accepted and never answered. In job mode no worker is
expected; the portal starts one per upload. So do a disk without room for an upload (uploads would
get 507) and a broken ``default`` model; other broken models are named, and fail only their own
sessions.
"""

from __future__ import annotations

import os
from typing import Any

from scai import config, engines
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
    stored = store.problem()  # the store's own fault, named as such: workers' beats fail with it
    if stored and settings.store:
        return {"status": stored, "jobs": {}}, 503
    if stored:
        problems.append(stored)
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
        broken = broken_models(settings, job)
        jobs[config.ALIAS_OF_JOB[job]]["broken_models"] = broken
        if problem := models_problem(settings, job, broken):
            problems.append(problem)
    usage = os.statvfs(root) if root.is_dir() else None
    if not settings.store and usage and (full := disk_full(settings, usage)):
        problems.append(full)
    free = usage.f_bavail * usage.f_frsize if usage else 0
    body = {"status": "ok" if not problems else "; ".join(problems), "jobs": jobs, "free_disk_mb": free // 2**20}
    return body, 503 if problems else 200


def broken_models(settings: Settings, job: str) -> dict[str, str]:
    """The sections of ``job`` that cannot load, each with why. The model files themselves are
    looked at only with the session folder, where the workers share this machine's disk; with
    Redis they may run on other hosts with files of their own, so only bad keys are found."""
    models = config.load_models(settings.usr_dir, job)
    if settings.store:
        return {name: spec.problem for name, spec in models.items() if spec.problem}
    return {name: _file_names_only(why, spec) for name, spec in models.items() if (why := engines.problem(spec))}


def _file_names_only(why: str, spec: config.ModelSpec) -> str:
    """``why`` without the server's folders: /healthz is public, the log has the whole path."""
    for path in (spec.path, spec.labels, spec.head):
        if path is not None:
            why = why.replace(str(path), path.name)
    return why


def models_problem(settings: Settings, job: str, broken: dict[str, str]) -> str | None:
    """A broken ``default`` section, or every section broken, makes the service unhealthy: most
    uploads name no model. Another broken section fails only its own sessions: it is named in
    ``broken_models``, and the status stays 200."""
    alias = config.ALIAS_OF_JOB[job]
    if config.DEFAULT_MODEL in broken:
        return f"{alias} model {config.DEFAULT_MODEL!r} unavailable: {broken[config.DEFAULT_MODEL]}"
    if broken and broken.keys() == config.load_models(settings.usr_dir, job).keys():
        return f"no {alias} model can load"
    return None


def disk_full(settings: Settings, usage: os.statvfs_result) -> str | None:
    """Why the session folder cannot be trusted with an upload, or None: its disk has less room
    than one upload of the largest size allowed, or no free inode, so an upload may be refused
    (507). ``usage``: the folder's statvfs, which /healthz reads once for this and its free space."""
    free = usage.f_bavail * usage.f_frsize
    if usage.f_files and not usage.f_favail:
        return "disk full: no free inode for the session folder"
    if free < settings.max_upload_bytes:
        room = f"{free // 2**20} MB free for the session folder"
        return f"disk full: {room}, less than one upload may take ({settings.max_upload_mb} MB)"
    return None
