"""The original SCAI routes, field names and JSON keys, now with real HTTP status codes."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from scai import apikeys
from scai.config import CLASSIFICATION, DETECTION
from scai.portal.uploads import (
    accept_upload,
    find_session,
    public_state,
    send_result_image,
    send_session_file,
    session_key,
    upload_options,
)

bp = Blueprint("legacy", __name__)

#: job -> (upload route, result route, input image route, result image route); one table, one
#: set of views.
ROUTES = {
    CLASSIFICATION: ("/imageclassification", "imgclassres", "iciptimg", None),
    DETECTION: ("/objectdetection", "odres", "odiptimg", "odresimg"),
}


def _upload(job: str) -> Response:
    created = accept_upload(job, request.args.get("model"), upload_options(job))
    return jsonify(
        status="success",
        filename=created["filename"],
        datetime=datetime.now(UTC).isoformat(timespec="seconds"),
        sessname=created["sessname"],
        sesskey=created["sesskey"],
    )


def _result(job: str) -> Response:
    session_id, state = find_session(job, request.args.get("task"), session_key())
    return jsonify(public_state(session_id, state))


def _input_image(job: str) -> Response:
    session_id, state = find_session(job, request.args.get("task"), session_key())
    return send_session_file(session_id, state["input"])


def _result_image(job: str) -> Response:
    session_id, state = find_session(job, request.args.get("task"), session_key())
    return send_result_image(session_id, state)


def _register(job: str, upload: str, result: str, input_image: str, result_image: str | None) -> None:
    bp.add_url_rule(upload, f"{job}_upload", apikeys.required(lambda: _upload(job)), methods=["POST"])
    bp.add_url_rule(f"{upload}/{result}", f"{job}_result", lambda: _result(job))
    bp.add_url_rule(f"{upload}/{result}/{input_image}", f"{job}_input", lambda: _input_image(job))
    if result_image:
        bp.add_url_rule(f"{upload}/{result}/{result_image}", f"{job}_output", lambda: _result_image(job))


for _job, _routes in ROUTES.items():
    _register(_job, *_routes)
