"""The DeepStack / CodeProject.AI vision routes, for the clients that already speak them.

Home Assistant's DeepStack integrations (through ``deepstack-python``), ``deepstack-sdk``,
``codeproject-ai-api``, Frigate's DeepStack detector and Blue Iris post an image as the multipart
field ``image`` (named ``image``, no extension, no content type) with the form fields
``min_confidence`` and ``api_key``, and wait for the answer. Here each such request is a session
like any other (the same workers, batching and limits), waited on synchronously and removed once
answered.

Boxes are integer pixels of the image as stored in the file: a photo with an EXIF rotation is
detected upright (as every SCAI route does), and its boxes are then turned back into the stored
pixel grid, which is what these clients measure (they open the image without applying EXIF).
Predictions come best first: Frigate stops reading at the first one below 0.4.

Errors have DeepStack's shape, ``{"success": false, "error": ..., "code": N}`` (the portal's error
handlers give it to every error under ``/v1/``, routing errors included): 400 for what is not an
image or a ``min_confidence`` outside 0..1, 401 for a missing or wrong API key, 404 for an unknown
custom model, 413 for a body over the upload limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, abort, after_this_request, jsonify, request

from object_detection.boxes import Box
from scai import __version__, apikeys, catalogue, config, imaging
from scai.config import CLASSIFICATION, DETECTION
from scai.errors import SessionNotFound
from scai.portal import DEEPSTACK_PREFIX
from scai.portal.uploads import accept_upload, fraction, settings, store
from scai.store import COMPLETE, FAILURE, SERVER

bp = Blueprint("deepstack", __name__, url_prefix=DEEPSTACK_PREFIX)
log = logging.getLogger("scai.portal")

#: DeepStack's default for ``min_confidence``.
DEFAULT_MIN_CONFIDENCE = 0.40


def _min_confidence() -> float:
    raw = request.form.get("min_confidence") or request.args.get("min_confidence")
    if raw is None or not raw.strip():
        return DEFAULT_MIN_CONFIDENCE
    return fraction("min_confidence", raw)


def detection_model() -> str:
    """``SCAI_DEEPSTACK_MODEL``, else the most accurate COCO detector installed from the catalogue
    (``scai models pull yolox-nano``, ``coco-ssd``), else the default: DeepStack's route finds
    COCO's objects."""
    if settings().deepstack_model:
        return settings().deepstack_model
    return catalogue.most_accurate_coco_detector(settings().usr_dir) or config.DEFAULT_MODEL


def _run(job: str, model: str, options: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Store the upload as a session, wait for its worker; the final state and the milliseconds
    it took. An answered session is removed at once: the client got no key to read it with,
    and a camera's frames should not pile up on the server for a day."""
    started = time.monotonic()
    return answer(accept_upload(job, model, options)), (time.monotonic() - started) * 1000


def answer(created: dict[str, Any]) -> dict[str, Any]:
    """The final state of a session ``accept_upload`` made, once its worker is done with it; the
    session is removed once the response has gone. A failure is an error response (``abort``)."""
    try:
        state = store().wait(created["sessname"], settings().max_wait_seconds)
    except SessionNotFound:
        abort(404, "the session was cleaned away before it was answered")
    if state.get("state") in (COMPLETE, FAILURE):
        _remove_once_sent(created["sessname"], state)
    if state.get("state") == FAILURE and state.get("fault") == SERVER:
        abort(500, "the server could not run its model (its log says why)")  # not the client's doing
    if state.get("state") == FAILURE:
        abort(400, str(state.get("message") or "the image could not be processed"))
    if state.get("state") != COMPLETE:
        store().remove(created["sessname"])  # cancelled unless a worker has it: nobody can ask again
        abort(503, f"no answer within {settings().max_wait_seconds:g} s: the workers are busy or down")
    return state


def _remove_once_sent(session_id: str, state: dict[str, Any]) -> None:
    """Remove an answered session after its response has gone out, off the client's clock."""
    target = store()

    def remove() -> None:
        try:
            target.remove(session_id, state)
        except Exception:  # the cleaner removes it later
            log.exception("could not remove the answered session %s", session_id)

    @after_this_request
    def when_sent(response: Response) -> Response:
        response.call_on_close(remove)
        return response


def timings(state: dict[str, Any], job: str, process_ms: float) -> dict[str, Any]:
    return {
        "inferenceMs": round(state.get("inference_ms") or 0),
        "processMs": round(process_ms),
        "analysisRoundTripMs": round(process_ms),
        "moduleId": f"scai-{job}",
        "code": 200,
    }


def stored_pixels(state: dict[str, Any], box: Box) -> dict[str, int]:
    """A box of the upright photo (normalised) in the stored pixel grid, as DeepStack's clients
    measure it (the worker records the EXIF orientation it applied)."""
    orientation = int(state.get("orientation") or 1)
    size = state.get("image_size") or {}
    width, height = int(size.get("width", 1)), int(size.get("height", 1))
    stored = (height, width) if orientation in imaging.TRANSPOSED else (width, height)
    return box.unrotated(orientation).pixels(*stored)


def corners(pixels: dict[str, int]) -> dict[str, int]:
    return {"x_min": pixels["xmin"], "y_min": pixels["ymin"], "x_max": pixels["xmax"], "y_max": pixels["ymax"]}


def predictions(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The session's detections as DeepStack predictions, best first."""
    size = state.get("image_size") or {}
    span_x, span_y = max(int(size.get("width", 1)) - 1, 1), max(int(size.get("height", 1)) - 1, 1)
    out = []
    for item in sorted(state.get("detections") or [], key=lambda d: -d["score"]):
        p = item["box"]
        box = Box(p["xmin"] / span_x, p["ymin"] / span_y, p["xmax"] / span_x, p["ymax"] / span_y)
        out.append({"label": item["label"], "confidence": item["score"], **corners(stored_pixels(state, box))})
    return out


def answer_predictions(
    found: list[dict[str, Any]], message: str, command: str, state: dict[str, Any], job: str, process_ms: float
) -> tuple[Response, int]:
    """A prediction route's answer, in the shape DeepStack and CodeProject.AI clients read."""
    return jsonify(
        success=True,
        message=message,
        predictions=found,
        count=len(found),
        command=command,
        **timings(state, job, process_ms),
    ), 200


def _detect(model: str) -> tuple[Response, int]:
    state, process_ms = _run(DETECTION, model, {"min_score": _min_confidence()})
    found = predictions(state)
    labels = ", ".join(dict.fromkeys(p["label"] for p in found))
    return answer_predictions(
        found, f"Found {labels}" if found else "No objects found", "detect", state, "detect", process_ms
    )


@bp.post("/vision/detection")
@apikeys.required
def detection() -> tuple[Response, int]:
    return _detect(detection_model())


@bp.post("/vision/custom/list")
@apikeys.required
def custom_list() -> Response:
    return jsonify(success=True, models=sorted(config.load_models(settings().usr_dir, DETECTION)))


@bp.post("/vision/custom/<model>")
@apikeys.required
def custom(model: str) -> tuple[Response, int]:
    if model not in config.load_models(settings().usr_dir, DETECTION):
        abort(404, f"no custom model {model!r}; POST /v1/vision/custom/list names them")
    return _detect(model)


@bp.post("/vision/scene")
@apikeys.required
def scene() -> tuple[Response, int]:
    state, process_ms = _run(CLASSIFICATION, config.DEFAULT_MODEL, {})
    best = (state.get("predictions") or [{"label": "unknown", "score": 0.0}])[0]
    return jsonify(
        success=True,
        label=best["label"],
        confidence=best["score"],
        message=f"Found {best['label']}",
        command="scene",
        **timings(state, "classify", process_ms),
    ), 200


@bp.get("/status/updateavailable")
def update_available() -> Response:
    """CodeProject.AI's update check, which its dashboards call: SCAI updates come through git."""
    return jsonify(
        success=True,
        updateAvailable=False,
        current=__version__,
        latest=__version__,
        message="SCAI is updated through its repository, not by this server",
    )
