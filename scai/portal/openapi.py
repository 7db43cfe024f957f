"""``GET /openapi.json``: the OpenAPI 3.1 description of every route the portal serves.

Written out by hand, next to the routes, and kept true by tests/test_openapi.py: the document must
validate, name every route Flask serves with its methods, and mark exactly the views that need an
API key (``apikeys.required``) as secured.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from scai import __version__

bp = Blueprint("openapi", __name__)


def _json(schema: str | dict[str, Any]) -> dict[str, Any]:
    body = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"content": {"application/json": {"schema": body}}}


def _answer(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    return {"description": description, **_json(schema)}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _answer(description, schema)


def _image(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"image/*": {"schema": {"type": "string"}}}}


def _upload(field: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    properties = {field: {"type": "string", "contentMediaType": "application/octet-stream"}, **(extra or {})}
    schema = {"type": "object", "required": [field], "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _param(name: str, where: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "required": required, "schema": schema}


STRING, NUMBER, INTEGER, BOOLEAN, OBJECT = ({"type": t} for t in ("string", "number", "integer", "boolean", "object"))
KEYED = [{"bearer": []}, {"apiKeyHeader": []}]
SESSION_KEYED = [{"sessionKeyHeader": []}, {"sessionKeyQuery": []}]
NUMBER_0_1 = {"type": "number", "minimum": 0, "maximum": 1}
WAIT = _param("wait", "query", "seconds to wait for the result (at most 60)", {"type": "number", "minimum": 0})
MODEL = _param("model", "query", "a model section of the job kind (default: default)", {"type": "string"})
MIN_SCORE = _param("min_score", "query", "detection: report boxes scoring at least this", NUMBER_0_1)
TASK = _param("task", "query", "the session name (sessname)", {"type": "string"}, required=True)
KEY = _param("key", "query", "the session key (sesskey); or the X-Session-Key header", {"type": "string"})
SESSION_ID = _param("session_id", "path", "the session name (sessname)", {"type": "string"}, required=True)
UNAUTHORIZED = {"401": _error("an API key is needed (keys are set) and none or a wrong one came")}
DEEPSTACK_ERRORS = {
    "400": _error("not an image, or min_confidence outside 0..1", "DeepStackError"),
    "401": _error("a wrong or missing API key, where keys are set", "DeepStackError"),
    "503": _error("the queue is full or no worker answered in time", "DeepStackError"),
}
DEEPSTACK_FORM = {
    "min_confidence": {**NUMBER_0_1, "default": 0.4},
    "api_key": {"type": "string", "description": "the API key, where keys are set"},
}


def _op(tag: str, summary: str, responses: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """One operation: ``fields`` are ``parameters``, ``requestBody`` and ``security`` where it has them."""
    return {"tags": [tag], "summary": summary, **fields, "responses": responses}


def _legacy(job: str, upload: str, result: str, input_image: str, output_image: str | None) -> dict[str, Any]:
    tag, read = "original routes", [TASK, KEY]
    gone = _error("no such session (or not complete, for the annotated image)")
    paths = {
        upload: {
            "post": _op(
                tag,
                f"Upload a photo for {job} (answers at once; poll the result)",
                {"200": _answer("the session was created", "LegacyCreated"), **UNAUTHORIZED},
                parameters=[MODEL] + ([MIN_SCORE] if output_image else []),
                requestBody=_upload("photo"),
                security=KEYED,
            )
        },
        f"{upload}/{result}": {
            "get": _op(
                tag,
                "A session's state and result",
                {"200": _answer("the session", "Session"), "403": _error("wrong key"), "404": gone},
                parameters=read,
            )
        },
        f"{upload}/{result}/{input_image}": {
            "get": _op(tag, "The uploaded photo", {"200": _image("the upload as sent"), "404": gone}, parameters=read)
        },
    }
    if output_image:
        paths[f"{upload}/{result}/{output_image}"] = {
            "get": _op(tag, "The photo with its boxes drawn", {"200": _image("a PNG"), "404": gone}, parameters=read)
        }
    return paths


def _deepstack(summary: str, answer: dict[str, Any], **fields: Any) -> dict[str, Any]:
    responses = {"200": answer, **DEEPSTACK_ERRORS}
    return {"post": _op("DeepStack / CodeProject.AI", summary, responses, security=KEYED, **fields)}


def _session_read(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]]) -> dict[str, Any]:
    errors = {"403": _error("a wrong or missing session key"), "404": _error("no such session (or cleaned away)")}
    return {"get": _op("/api/v1", summary, {**responses, **errors}, parameters=parameters, security=SESSION_KEYED)}


def _face_paths() -> dict[str, Any]:
    """The face routes: one image each, several for register (any field names), two for match."""
    form = {"image": {"type": "string", "contentMediaType": "application/octet-stream"}}
    confident = {"min_confidence": NUMBER_0_1, "api_key": DEEPSTACK_FORM["api_key"]}
    one = _upload("image", confident)
    person = {"userid": {**STRING, "maxLength": 100}, "api_key": DEEPSTACK_FORM["api_key"]}
    several = {"required": True, "content": {"multipart/form-data": {"schema": _object(["userid"], **form, **person)}}}
    named = {"required": True, "content": {"multipart/form-data": {"schema": _object(["userid"], **person)}}}
    return {
        "/v1/vision/face": _deepstack("Find faces", _answer("the faces, most confident first", "DeepStackFaces"),
                                      requestBody=one),
        "/v1/vision/face/recognize": _deepstack(
            "Who is in the photo (unknown below min_confidence, 0.67 by default)",
            _answer("each face with its userid", "DeepStackFaces"), requestBody=one,
        ),
        "/v1/vision/face/register": _deepstack(
            "Add one or more photos' faces to a person (earlier photos are kept)",
            _answer("the faces the person has now", "DeepStackRegistered"), requestBody=several,
        ),
        "/v1/vision/face/list": _deepstack("The registered people", _answer("userids", "DeepStackFaceList")),
        "/v1/vision/face/delete": _deepstack("Forget a person", _answer("done", "DeepStackDone"), requestBody=named),
        "/v1/vision/face/match": _deepstack(
            "How alike the faces of two photos are", _answer("the similarity", "DeepStackMatch"),
            requestBody={"required": True, "content": {"multipart/form-data": {"schema": _object([], **form)}}},
        ),
    }  # fmt: skip


def _page(tag: str, summary: str, description: str, content: str = "text/html") -> dict[str, Any]:
    body = {"description": description, "content": {content: {"schema": {"type": "string"}}}}
    return {"get": _op(tag, summary, {"200": body})}


def paths() -> dict[str, Any]:
    detections = _answer("the objects found, best first", "DeepStackDetection")
    deepstack_upload = _upload("image", DEEPSTACK_FORM)
    return {
        "/api/v1/{kind}": {
            "post": _op(
                "/api/v1",
                "Classify a photo or detect objects in it",
                {
                    "200": _answer("complete", "Session"),
                    "202": _answer("still queued or processing: follow links.self", "Session"),
                    "400": _error("not an image, an unknown model or a bad parameter"),
                    **UNAUTHORIZED,
                    "413": _error("larger than the upload or pixel limit"),
                    "422": _answer("the model failed on this image", "Session"),
                    "503": _error("the queue is full (see Retry-After) or the store does not answer"),
                    "507": _error("the server's disk is full"),
                },
                parameters=[
                    _param("kind", "path", "the job kind", {"enum": ["classify", "detect"]}, required=True),
                    MODEL,
                    WAIT,
                    MIN_SCORE,
                ],
                requestBody=_upload("photo"),
                security=KEYED,
            )
        },
        "/api/v1/models": {
            "get": _op(
                "/api/v1",
                "The configured models of each job kind",
                {"200": _answer("model names by job kind", "Models"), **UNAUTHORIZED},
                security=KEYED,
            )
        },
        "/api/v1/sessions/{session_id}": _session_read(
            "A session's state; waits for a change with wait=",
            {
                "200": _answer("complete", "Session"),
                "202": _answer("still queued or processing", "Session"),
                "422": _answer("the model failed on this image", "Session"),
            },
            [SESSION_ID, WAIT, _param("changed_from", "query", "answer once the state is not this", STRING)],
        ),
        "/api/v1/sessions/{session_id}/input": _session_read(
            "The uploaded photo", {"200": _image("the upload as sent")}, [SESSION_ID]
        ),
        "/api/v1/sessions/{session_id}/output": _session_read(
            "A detection's annotated PNG (404 until complete)", {"200": _image("a PNG")}, [SESSION_ID]
        ),
        **_legacy("classification", "/imageclassification", "imgclassres", "iciptimg", None),
        **_legacy("object detection", "/objectdetection", "odres", "odiptimg", "odresimg"),
        "/v1/vision/detection": _deepstack(
            "Detect objects (the COCO detector where installed)", detections, requestBody=deepstack_upload
        ),
        "/v1/vision/custom/{model}": _deepstack(
            "Detect objects with a named detection model",
            detections,
            parameters=[_param("model", "path", "a detection section", {"type": "string"}, required=True)],
            requestBody=deepstack_upload,
        ),
        "/v1/vision/custom/list": _deepstack(
            "The detection models /v1/vision/custom/{model} takes", _answer("model names", "DeepStackModels")
        ),
        "/v1/vision/scene": _deepstack(
            "The best label of the default classification model",
            _answer("the label", "DeepStackScene"),
            requestBody=deepstack_upload,
        ),
        **_face_paths(),
        "/v1/status/updateavailable": {
            "get": _op(
                "DeepStack / CodeProject.AI",
                "CodeProject.AI's update check: SCAI updates through its repository",
                {"200": _answer("never an update here", "UpdateAvailable")},
            )
        },
        "/healthz": {
            "get": _op(
                "operations",
                "Whether uploads of every configured job kind will be answered",
                {"200": _answer("healthy", "Health"), "503": _answer("why not", "Health")},
            )
        },
        "/metrics": _page("operations", "Prometheus metrics", "the text exposition format", "text/plain"),
        "/openapi.json": {"get": _op("operations", "This document", {"200": _answer("OpenAPI 3.1", OBJECT)})},
        "/": _page("pages", "The demo page", "HTML"),
        "/docs": _page("pages", "API examples", "HTML"),
        "/static/{filename}": {
            "get": _op(
                "pages",
                "The pages' scripts, styles and icon",
                {"200": {"description": "the file"}, "404": {"description": "no such file"}},
                parameters=[_param("filename", "path", "a file of static/", {"type": "string"}, required=True)],
            )
        },
    }


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


PIXEL_BOX = _object(["xmin", "ymin", "xmax", "ymax"], xmin=INTEGER, ymin=INTEGER, xmax=INTEGER, ymax=INTEGER)

SCHEMAS = {
    "Error": _object(["error", "message", "status"], error=STRING, message=STRING, status=INTEGER),
    "DeepStackError": _object(["success", "error"], success={"const": False}, error=STRING, code=INTEGER),
    "LegacyCreated": _object(
        ["status", "sessname", "sesskey"],
        status=STRING,
        filename=STRING,
        datetime=STRING,
        sessname=STRING,
        sesskey=STRING,
    ),
    "Session": _object(
        ["sessname", "state"],
        sessname=STRING,
        sesskey=STRING,
        state={"enum": ["initialization", "processing", "complete", "failure"]},
        job=STRING,
        model=STRING,
        message=STRING,
        result={"type": ["object", "null"], "additionalProperties": STRING},
        result_image={"type": ["string", "null"]},
        predictions={"type": "array", "items": _object(["label", "score"], label=STRING, score=NUMBER)},
        detections={
            "type": "array",
            "items": _object(
                ["label", "score", "box"],
                label=STRING,
                class_id=INTEGER,
                score=NUMBER,
                box=PIXEL_BOX,
                box_normalized={"type": "object"},
            ),
        },
        image_size=_object(["width", "height"], width=INTEGER, height=INTEGER),
        created=STRING,
        updated=STRING,
        links={"type": "object", "additionalProperties": STRING},
    ),
    "Models": {"type": "object", "additionalProperties": {"type": "array", "items": STRING}},
    "DeepStackDetection": _object(
        ["success", "predictions"],
        success={"const": True},
        predictions={
            "type": "array",
            "items": _object(
                ["label", "confidence", "x_min", "y_min", "x_max", "y_max"],
                label=STRING,
                confidence=NUMBER,
                x_min=INTEGER,
                y_min=INTEGER,
                x_max=INTEGER,
                y_max=INTEGER,
            ),
        },
        count=INTEGER,
        message=STRING,
        inferenceMs=INTEGER,
        processMs=INTEGER,
        moduleId=STRING,
        code=INTEGER,
    ),
    "DeepStackFaces": _object(
        ["success", "predictions"],
        success={"const": True},
        predictions={
            "type": "array",
            "items": _object(
                ["confidence", "x_min", "y_min", "x_max", "y_max"],
                confidence=NUMBER,
                userid=STRING,
                x_min=INTEGER,
                y_min=INTEGER,
                x_max=INTEGER,
                y_max=INTEGER,
            ),
        },
        count=INTEGER,
        message=STRING,
    ),  # fmt: skip
    "DeepStackRegistered": _object(
        ["success", "message"], success={"const": True}, message=STRING, userid=STRING, added=INTEGER, faces=INTEGER
    ),
    "DeepStackFaceList": _object(
        ["success", "faces"], success={"const": True}, faces={"type": "array", "items": STRING}
    ),
    "DeepStackDone": _object(["success"], success={"const": True}, message=STRING),
    "DeepStackMatch": _object(["success", "similarity"], success={"const": True}, similarity=NUMBER),
    "DeepStackScene": _object(
        ["success", "label", "confidence"], success={"const": True}, label=STRING, confidence=NUMBER
    ),
    "DeepStackModels": _object(
        ["success", "models"], success={"const": True}, models={"type": "array", "items": STRING}
    ),
    "UpdateAvailable": _object(
        ["success", "updateAvailable"], success=BOOLEAN, updateAvailable=BOOLEAN, current=STRING, latest=STRING
    ),
    "Health": _object(["status", "jobs"], status=STRING, jobs={"type": "object"}, free_disk_mb=INTEGER),
}

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (SCAI_API_KEYS, usr/api_keys)"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same key"},
    "sessionKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Session-Key",
        "description": "a session's sesskey",
    },
    "sessionKeyQuery": {"type": "apiKey", "in": "query", "name": "key", "description": "a session's sesskey"},
}


def document(server: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SCAI",
            "version": __version__,
            "description": "Self-hosted image classification and object detection. API keys are needed only "
            "where the server sets them (the form field api_key also works on the DeepStack routes).",
        },
        "servers": [{"url": server}],
        "paths": paths(),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document(request.script_root or "/"))
