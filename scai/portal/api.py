"""The versioned JSON API: model choice, synchronous answers, health."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, abort, jsonify, request

from scai import apikeys, config, metrics
from scai.config import FACES, JOB_ALIASES
from scai.health import STALE_SECONDS, report
from scai.portal.uploads import (
    KEY_HEADER,
    accept_upload,
    find_session,
    public_state,
    send_result_image,
    send_session_file,
    session_key,
    settings,
    store,
    upload_options,
)
from scai.store import COMPLETE, FAILURE, SessionNotFound

bp = Blueprint("api", __name__, url_prefix="/api/v1")

#: The job kinds /api/v1 takes uploads for. Faces only through the DeepStack face routes, which
#: decide who is who and keep no session: a face session's state holds embeddings.
SERVED = {alias: job for alias, job in JOB_ALIASES.items() if job != FACES}


def _wait_seconds() -> float:
    raw = request.args.get("wait", "0")
    try:
        seconds = float(raw)
    except ValueError:
        abort(400, f"wait must be a number of seconds, not {raw!r}")
    if not 0 <= seconds < float("inf"):
        abort(400, "wait must be zero or more seconds")
    return min(seconds, settings().max_wait_seconds)


def wait_for(session_id: str, wait: float, changed_from: str | None = None) -> dict:
    """The session's state after waiting; 404 if it was cleaned away meanwhile."""
    try:
        return store().wait(session_id, wait, changed_from)
    except SessionNotFound:
        abort(404, f"session {session_id} is gone (cleaned away)")


def session_response(session_id: str, key: str, state: dict, key_in_links: bool = True) -> tuple[Response, int]:
    """200 when complete, 422 when the worker failed on the image, 202 while still pending.
    The links carry ``?key=`` unless the client sent its key in the header (then it knows it)."""
    body = public_state(session_id, state)
    body["sesskey"] = key
    # spelled out rather than url_for'd: three URL builds were a twentieth of the portal's time
    session = f"{request.script_root}{bp.url_prefix}/sessions/{session_id}"
    query = f"?key={quote(key, safe='')}" if key_in_links else ""
    body["links"] = {"self": session + query, "input": f"{session}/input{query}"}
    if state.get("result_image"):
        body["links"]["output"] = f"{session}/output{query}"
    status = {COMPLETE: 200, FAILURE: 422}.get(state.get("state"), 202)
    response = jsonify(body)
    if status == 202:
        response.headers["Location"] = body["links"]["self"]
    return response, status


@bp.post("/<kind>")
@apikeys.required
def submit(kind: str) -> tuple[Response, int]:
    if kind not in SERVED:
        abort(404, f"no service {kind!r}; use one of: {', '.join(SERVED)}")
    wait = _wait_seconds()
    created = accept_upload(SERVED[kind], request.args.get("model"), upload_options(SERVED[kind]))
    session_id, key = created["sessname"], created["sesskey"]
    state = wait_for(session_id, wait)
    return session_response(session_id, key, state)


@bp.get("/sessions/<session_id>")
def session(session_id: str) -> tuple[Response, int]:
    key = session_key()
    find_session(None, session_id, key)
    changed_from = request.args.get("changed_from")  # wake on any change, for progress displays
    state = wait_for(session_id, _wait_seconds(), changed_from)
    return session_response(session_id, key or "", state, key_in_links=KEY_HEADER not in request.headers)


@bp.get("/sessions/<session_id>/input")
def session_input(session_id: str) -> Response:
    _, state = find_session(None, session_id, session_key())
    return send_session_file(session_id, state["input"])


@bp.get("/sessions/<session_id>/output")
def session_output(session_id: str) -> Response:
    _, state = find_session(None, session_id, session_key())
    return send_result_image(session_id, state)


@bp.get("/models")
@apikeys.required
def models() -> Response:
    usr = settings().usr_dir
    return jsonify({kind: sorted(config.load_models(usr, job)) for kind, job in SERVED.items()})


health = Blueprint("health", __name__)


@health.get("/metrics")
def metrics_view() -> Response:
    """Prometheus' text format: every process's values, and the store's queue gauges."""
    body, content_type = metrics.render(metrics.StoreCollector(settings(), store(), STALE_SECONDS))
    return Response(body, content_type=content_type)


@health.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when uploads of every configured job kind will be answered (see ``scai.health``)."""
    body, status = report(settings(), store())
    return jsonify(body), status
