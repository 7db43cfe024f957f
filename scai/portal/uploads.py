"""Request handling shared by the original routes and ``/api/v1``: uploads in, sessions out."""

from __future__ import annotations

import io
import logging
import mimetypes
import os
from contextlib import suppress
from typing import Any

from flask import Response, abort, current_app, request, send_file
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from scai import config, imaging
from scai.config import DETECTION, Settings
from scai.errors import QueueFull
from scai.store import INITIALIZATION, SessionNotFound, is_session_id, key_matches, open_store
from scai.tasks import annotated_png

log = logging.getLogger("scai.portal")

#: Multipart fields an image may arrive in: ``photo`` (original clients) or ``image``.
UPLOAD_FIELDS = ("photo", "image")


def settings() -> Settings:
    return current_app.extensions["scai"]


def store() -> Any:
    """This portal's session store (one per application: a Redis store holds a connection pool)."""
    extensions = current_app.extensions
    if "scai_store" not in extensions:
        extensions["scai_store"] = open_store(settings())
    return extensions["scai_store"]


def model_name(job: str, name: str | None) -> str:
    """The configured section a request asks for (400 if there is no such section)."""
    return config.pick_model(config.load_models(settings().usr_dir, job), name).name


def upload_options(job: str) -> dict[str, Any]:
    """Per-request options the worker applies: ``min_score`` for detection (0..1)."""
    raw = request.args.get("min_score")
    if job != DETECTION or raw is None:
        return {}
    return {"min_score": fraction("min_score", raw)}


def fraction(name: str, raw: str) -> float:
    """A request's number between 0 and 1, or 400 naming the parameter."""
    try:
        value = float(raw)
    except ValueError:
        abort(400, f"{name} must be a number between 0 and 1, not {raw[:40]!r}")
    if not 0 <= value <= 1:
        abort(400, f"{name} must be between 0 and 1, not {raw[:40]}")
    return value


def accept_upload(
    job: str, model: str | None = None, options: dict[str, Any] | None = None, upload: FileStorage | None = None
) -> dict[str, Any]:
    """Validate the uploaded image (``upload``, else the request's ``photo`` or ``image``), store it
    as a new session and queue it for a worker.

    The client's filename is reported back but never used as a path.
    """
    upload = upload or next((request.files[f] for f in UPLOAD_FIELDS if f in request.files), None)
    if upload is None:
        abort(400, "no image: send it as the multipart field 'photo' (or 'image')")
    data = upload.read()
    info = imaging.inspect(data, settings().max_pixels)
    name = model_name(job, model)
    refuse_when_full(job)
    filename = safe_filename(upload.filename or "", info.ext)
    session_id, key = store().create(job, name, data, info.ext, filename, options or {})
    start_job_worker_if_needed(job)
    return {"sessname": session_id, "sesskey": key, "filename": filename, "model": name}


#: The longest file name a session keeps and reports (a file system's limit, though it is never a path).
MAX_FILENAME = 255


def safe_filename(name: str, ext: str) -> str:
    """The client's file name as a session keeps it: ASCII with no path in it
    (``secure_filename``), at most ``MAX_FILENAME`` characters with its extension kept, or
    ``upload.EXT`` when nothing is left of it."""
    safe = secure_filename(name) or f"upload.{ext}"
    stem, suffix = os.path.splitext(safe)
    suffix = suffix[:16]
    return stem[: MAX_FILENAME - len(suffix)] + suffix


def start_job_worker_if_needed(job: str) -> None:
    """Job mode: a worker process for ``job``'s pool unless enough run already. Called after each
    upload and whenever a client looks at a session still waiting, so that a waiting session
    gets a process even if the one that would have taken it was killed. A failure to start one
    is logged; the session stays queued for the next."""
    if settings().running_mode != "job":
        return
    from scai.launcher import start_job_worker

    try:
        start_job_worker(settings(), job)
    except Exception:
        log.exception("could not start a job-mode worker for %s", job)


def refuse_when_full(job: str) -> None:
    """503 with Retry-After once ``queue_limit`` sessions wait for this job kind's workers: a
    client that outpaces them is told to come back, and the disk does not fill with sessions
    nobody will wait for."""
    limit = settings().queue_limit
    if limit and store().queue_depth(job, stop_at=limit) >= limit:
        raise QueueFull(
            f"{limit} sessions already wait for a worker; try again shortly", settings().retry_after_seconds
        )


#: The header that carries a session's key, so that it stays out of URLs (access logs, browser
#: history); ``?key=`` still works, as the original clients send it.
KEY_HEADER = "X-Session-Key"


def session_key() -> str | None:
    return request.headers.get(KEY_HEADER) or request.args.get("key")


def find_session(job: str | None, task: str | None, key: str | None) -> tuple[str, dict[str, Any]]:
    """The session a request names, after checking its id and access key."""
    if not task:
        abort(400, "missing parameter 'task' (the session name)")
    if not is_session_id(task):
        abort(400, "invalid task: not a session name")
    try:
        state = store().state(task)
    except SessionNotFound:
        abort(404, f"no session {task}")
    if job is not None and state.get("job") != job:
        abort(404, f"no {job} session {task}")
    if not key_matches(state, key):
        abort(403, "wrong or missing key for this session")
    if state.get("state") == INITIALIZATION:
        start_job_worker_if_needed(state["job"])
    return task, state


def public_state(session_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """What a client may see of ``process.json`` (not the key digest, not internal names)."""
    return {
        "sessname": session_id,
        "state": state.get("state"),
        "job": state.get("job"),
        "model": state.get("model"),
        "message": state.get("message"),
        "result": state.get("result"),
        "result_image": state.get("result_image"),
        **{k: state[k] for k in ("predictions", "detections", "image_size") if k in state},
        "created": state.get("created"),
        "updated": state.get("updated"),
    }


def send_session_file(session_id: str, name: str, data: bytes | None = None) -> Response:
    """A file of a session (the upload, the annotated image), never cached by the browser."""
    if data is None:
        try:
            data = store().read_blob(session_id, name)
        except SessionNotFound:
            abort(404, "that file of the session is gone")
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return send_file(io.BytesIO(data), mimetype=mimetype, max_age=0, download_name=name)  # inline, our name


def send_result_image(session_id: str, state: dict[str, Any]) -> Response:
    """The annotated image once the session is complete (404 before, and for jobs that make
    none), drawn on first request and kept in the session for the next."""
    if not state.get("result_image"):
        abort(404, f"no result image (the session is {state.get('state')})")
    name = state["result_image"]
    try:
        return send_session_file(session_id, name, store().read_blob(session_id, name))
    except SessionNotFound:
        pass  # not drawn yet
    try:
        png = annotated_png(state, store().read_blob(session_id, state["input"]), settings().max_pixels)
    except (SessionNotFound, imaging.InvalidImage):
        abort(404, "that file of the session is gone")
    with suppress(OSError, SessionNotFound):  # a full disk: send it all the same, draw it again next time
        store().write_blob(session_id, name, png)
    return send_session_file(session_id, name, png)
