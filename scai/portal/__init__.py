"""The portal: a Flask application factory, with one blueprint per family of routes."""

from __future__ import annotations

import time

from flask import Flask, Request, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from scai import metrics
from scai.config import ROOT, Settings
from scai.errors import QueueFull, ScaiError, StoreUnavailable, Unauthorized
from scai.portal.chunked import terminate_chunked
from scai.portal.multipart import UploadFormParser


class UploadRequest(Request):
    """Multipart bodies parsed by python-multipart (see ``multipart``), and uploads kept in
    memory: the portal reads each one whole anyway, and the body is bounded by MAX_CONTENT_LENGTH.
    (Werkzeug would spool a file over 500 KB to a temporary file on disk first.)"""

    form_data_parser_class = UploadFormParser


def create_app(settings: Settings | None = None) -> Flask:
    """Build the portal for one installation (``settings`` default to flags' and env's defaults)."""
    settings = settings or Settings.from_env()
    settings.session_dir.mkdir(parents=True, exist_ok=True)
    app = Flask("scai", template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.request_class = UploadRequest
    app.wsgi_app = terminate_chunked(app.wsgi_app)  # type: ignore[method-assign]
    app.json.sort_keys = False  # keep top-k results in score order
    app.extensions["scai"] = settings

    from scai.portal import api, deepstack, faces, legacy, openapi, pages

    app.register_blueprint(legacy.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health)
    app.register_blueprint(deepstack.bp)
    app.register_blueprint(faces.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(pages.bp)
    app.register_error_handler(HTTPException, json_error)
    app.register_error_handler(ScaiError, scai_error)
    app.after_request(security_headers)
    app.before_request(start_timer)
    app.after_request(count_request)
    return app


def start_timer() -> None:
    g.started = time.perf_counter()


def count_request(response: Response) -> Response:
    """Every answer in ``scai_http_requests_total`` and the latency histogram, by route template
    (``/api/v1/sessions/<session_id>``, not each session: a bounded set of series)."""
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    method = request.method if request.method in KNOWN_METHODS else "other"  # a client names it: bounded here
    metrics.request_done(route, method, response.status_code, time.perf_counter() - g.get("started", 0.0))
    return response


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


#: The pages load everything from this server; previews of a chosen photo are blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def security_headers(response: Response) -> Response:
    """No content sniffing (an upload is served as the image type we stored it as), no framing,
    no Referer (links carry session keys), and a strict policy for the HTML pages."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


def json_error(error: HTTPException) -> tuple[Response, int]:
    """Every error as JSON with its real status, so API clients never parse an HTML page."""
    code = error.code or 500
    message = error.description or error.name
    if isinstance(error, RequestEntityTooLarge) and error.description == RequestEntityTooLarge.description:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"the upload is larger than the limit of {limit / 1024 / 1024:g} MB"
    return error_response(code, message, error.name)


def scai_error(error: ScaiError) -> tuple[Response, int]:
    """SCAI's own errors, raised anywhere below a view, with the status their class carries."""
    response, code = error_response(error.http_status, error.message)
    return with_error_headers(response, error), code


def with_error_headers(response: Response, error: ScaiError) -> Response:
    """The headers an error's class calls for: when to come back, how to authenticate."""
    if isinstance(error, QueueFull | StoreUnavailable):
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="scai"'
    return response


#: The DeepStack / CodeProject.AI routes (see ``deepstack``): every error under them has their shape.
DEEPSTACK_PREFIX = "/v1"


def error_response(code: int, message: str, name: str | None = None) -> tuple[Response, int]:
    """The one shape of every error the portal sends: ``{"error", "message", "status"}``, and
    under ``/v1/`` DeepStack's ``{"success": false, "error", "code"}``, which its clients read
    whatever went wrong (a route that does not exist, a body too large, a store that is down)."""
    if request.path.startswith(DEEPSTACK_PREFIX + "/"):
        return jsonify(success=False, error=message, code=code), code
    return jsonify(error=name or HTTP_STATUS_CODES.get(code, "Error"), message=message, status=code), code
