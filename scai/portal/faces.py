"""The DeepStack / CodeProject.AI face routes: find faces, recognise them, register, list and delete
people, match two photos. Home Assistant's deepstack_face (deepstack-python), Double Take, Blue
Iris, Agent DVR and codeproject-ai-api speak them.

Each photo is a session of the face job kind like any other upload (the same workers, batching,
limits), answered synchronously and removed once answered, so no face photo stays on the server.
The workers find faces and compute their embeddings; who they are is decided here, against the
face database (``scai.facedb``), which every portal shares through the store. A register adds its
photos' embeddings to the person's earlier ones, and only once every photo had a face: a photo
without one fails the whole register, naming the file, and the database is unchanged.

An image without a face is no error for ``face`` and ``recognize``: 200, ``predictions: []``, as
DeepStack answers and every client expects.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, abort, current_app, jsonify, request
from werkzeug.datastructures import FileStorage

from object_detection.boxes import Box
from scai import apikeys, config
from scai.config import FACES
from scai.errors import ConfigError
from scai.facedb import Faces, check_userid, confidence, open_faces
from scai.portal import DEEPSTACK_PREFIX
from scai.portal.deepstack import answer, answer_predictions, corners, stored_pixels, timings
from scai.portal.uploads import accept_upload, fraction, settings, store

bp = Blueprint("faces", __name__, url_prefix=DEEPSTACK_PREFIX)

#: DeepStack's defaults: ``min_confidence`` of a face found, and of a face recognised.
FACE_CONFIDENCE = 0.55
RECOGNIZE_CONFIDENCE = 0.67
#: The detector's own boundary (margin 0): faces to recognise, register or match.
FACE_FOUND = 0.5
#: Photos one register may bring: each is a session, answered within the request.
MAX_REGISTER_PHOTOS = 20


def faces_db() -> Faces:
    extensions = current_app.extensions
    if "scai_faces" not in extensions:
        extensions["scai_faces"] = open_faces(settings(), store())
    return extensions["scai_faces"]


def _installed() -> str:
    """The face model's section: ``default``, else the one ``scai models pull face`` wrote."""
    models = config.load_models(settings().usr_dir, FACES)
    if not models:
        abort(503, "face recognition is not installed: run `scai models pull face`")
    return config.DEFAULT_MODEL if config.DEFAULT_MODEL in models else sorted(models)[0]


def _min_confidence(default: float) -> float:
    raw = request.form.get("min_confidence") or request.args.get("min_confidence")
    return default if raw is None or not raw.strip() else fraction("min_confidence", raw)


def _photos() -> list[FileStorage]:
    """Every file of the request, whatever its field's name (``image``, ``image1``...)."""
    return [upload for _, upload in request.files.items(multi=True)]


def _found(uploads: list[FileStorage], embed: bool, min_confidence: float) -> list[dict[str, Any]]:
    """Each photo's final state: all are queued first, so that several workers take them at once."""
    model, options = _installed(), {"embed": embed, "min_confidence": min_confidence}
    created = [accept_upload(FACES, model, options, upload) for upload in uploads]
    states = []
    try:
        for one in created:
            states.append(answer(one))
    finally:
        for one in created[len(states) + 1 :]:  # a failure left these unanswered: nobody asks again
            store().remove(one["sessname"])
    return states


def _box(state: dict[str, Any], face: dict[str, Any]) -> dict[str, int]:
    box = face["box_normalized"]
    return corners(stored_pixels(state, Box(box["xmin"], box["ymin"], box["xmax"], box["ymax"])))


def _largest(state: dict[str, Any]) -> dict[str, Any] | None:
    """The photo's largest face: the one a register or a match is about."""

    def area(face: dict[str, Any]) -> float:
        box = face["box_normalized"]
        return (box["xmax"] - box["xmin"]) * (box["ymax"] - box["ymin"])

    return max(state.get("faces") or [], key=area, default=None)


@bp.post("/vision/face")
@apikeys.required
def detect() -> tuple[Response, int]:
    started = time.monotonic()
    (state,) = _found([_one_photo()], embed=False, min_confidence=_min_confidence(FACE_CONFIDENCE))
    found = [{"confidence": face["confidence"], **_box(state, face)} for face in state.get("faces") or []]
    message = f"Found {len(found)} face{'s' if len(found) != 1 else ''}" if found else "No faces found"
    return answer_predictions(found, message, "detect", state, "face", (time.monotonic() - started) * 1000)


@bp.post("/vision/face/recognize")
@apikeys.required
def recognize() -> tuple[Response, int]:
    started = time.monotonic()
    wanted = _min_confidence(RECOGNIZE_CONFIDENCE)
    (state,) = _found([_one_photo()], embed=True, min_confidence=FACE_FOUND)
    found = []
    for face in state.get("faces") or []:
        userid, distance = faces_db().nearest(face["embedding"])
        sure = confidence(distance) if userid is not None else 0.0
        known = userid is not None and sure >= wanted
        found.append(
            {
                "confidence": round(sure, 6) if known else 0,
                "userid": userid if known else "unknown",
                **_box(state, face),
            }
        )
    found.sort(key=lambda p: -p["confidence"])
    named = [p["userid"] for p in found if p["userid"] != "unknown"]
    message = f"Found {', '.join(named)}" if named else ("No known faces" if found else "No faces found")
    return answer_predictions(found, message, "recognize", state, "face", (time.monotonic() - started) * 1000)


@bp.post("/vision/face/register")
@apikeys.required
def register() -> tuple[Response, int]:
    started = time.monotonic()
    userid = _userid()
    uploads = _photos()
    if not uploads:
        abort(400, "no image: send one or more files with the userid")
    if len(uploads) > MAX_REGISTER_PHOTOS:
        abort(400, f"{len(uploads)} images: a register takes at most {MAX_REGISTER_PHOTOS}")
    states, embeddings = _embedded(uploads)
    total = faces_db().add(userid, embeddings)
    return jsonify(
        success=True,
        message="face added",
        userid=userid,
        added=len(embeddings),
        faces=total,
        command="register",
        **timings(states[-1], "face", (time.monotonic() - started) * 1000),
    ), 200


@bp.post("/vision/face/list")
@apikeys.required
def listed() -> Response:
    return jsonify(success=True, faces=faces_db().names(), message="", command="list", code=200)


@bp.post("/vision/face/delete")
@apikeys.required
def delete() -> Response:
    removed = faces_db().delete(_userid())
    return jsonify(success=True, message="face deleted" if removed else "no such face", command="delete", code=200)


@bp.post("/vision/face/match")
@apikeys.required
def match() -> tuple[Response, int]:
    started = time.monotonic()
    uploads = _photos()
    if len(uploads) != 2:
        abort(400, f"match takes exactly two images, not {len(uploads)}")
    states, pair = _embedded(uploads)
    distance = float(np.linalg.norm(np.asarray(pair[0]) - np.asarray(pair[1])))
    return jsonify(
        success=True,
        similarity=round(confidence(distance), 6),
        message="",
        command="match",
        **timings(states[-1], "face", (time.monotonic() - started) * 1000),
    ), 200


def _userid() -> str:
    """The form's userid, or 400 saying why it cannot be one."""
    try:
        return check_userid(request.form.get("userid"))
    except ConfigError as error:
        abort(400, error.message)


def _embedded(uploads: list[FileStorage]) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """Each photo's final state and its largest face's embedding; 400 naming a photo without a face."""
    states = _found(uploads, embed=True, min_confidence=FACE_FOUND)
    embeddings = []
    for upload, state in zip(uploads, states, strict=True):
        face = _largest(state)
        if face is None:
            abort(400, f"no face detected in {upload.filename or upload.name or 'the image'}")
        embeddings.append(face["embedding"])
    return states, embeddings


def _one_photo() -> FileStorage:
    upload = request.files.get("image") or next(iter(_photos()), None)
    if upload is None:
        abort(400, "no image: send it as the multipart field 'image'")
    return upload
