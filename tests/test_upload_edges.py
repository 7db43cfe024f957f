"""The edges of an upload in process (Flask's test client, fake models): chunked bodies, long part
headers, the error shape of every answer under ``/v1/``, and API keys with spaces around them.
Chunked bodies through a real ``scai serve`` (uwsgi) are in test_chunked_serve.py."""

from __future__ import annotations

import io

import pytest
from fakes import tiny_png
from flask import Request
from test_deepstack_fast import make_settings, post, running_workers
from test_multipart import body, parsed

from scai.portal import UploadRequest, create_app

BOUNDARY = "b0und4ry"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def post_chunked(client, route: str, data: bytes, **environ: object):
    """As a client that sends ``Transfer-Encoding: chunked``: the server hands the app the decoded
    body, and no length (the test client's ``Content-Length`` is ignored beside that header)."""
    return client.post(
        route,
        data=data,
        content_type=MULTIPART,
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides=environ,
    )


@pytest.fixture
def small(tmp_path):
    """A portal with a 1 MB upload limit, and workers with fake models."""
    settings = make_settings(tmp_path, max_upload_mb=1)
    with running_workers(settings):
        yield create_app(settings).test_client()


# -- 7. chunked uploads -------------------------------------------------------------------------------


def test_a_chunked_upload_is_accepted_on_every_route(small) -> None:
    photo = tiny_png((1, 2, 3))
    answered = post_chunked(small, "/api/v1/classify?wait=20", body(BOUNDARY, ("photo", "a.png", photo)))
    assert answered.status_code == 200, answered.json
    assert answered.json["predictions"] == [{"label": "#010203", "score": 1.0}]
    session, key = answered.json["sessname"], answered.json["sesskey"]
    assert small.get(f"/api/v1/sessions/{session}/input", headers={"X-Session-Key": key}).data == photo
    legacy = post_chunked(small, "/imageclassification", body(BOUNDARY, ("photo", "a.png", photo)))
    assert legacy.status_code == 200 and legacy.json["status"] == "success"
    deepstack = post_chunked(small, "/v1/vision/detection", body(BOUNDARY, ("image", "image", photo)))
    assert deepstack.status_code == 200 and deepstack.json["success"] is True


def test_a_chunked_body_over_the_limit_is_413(small) -> None:
    photo = tiny_png() + b"\0" * (1024 * 1024)
    refused = post_chunked(small, "/api/v1/classify", body(BOUNDARY, ("photo", "a.png", photo)))
    assert refused.status_code == 413 and "1 MB" in refused.json["message"]
    deepstack = post_chunked(small, "/v1/vision/detection", body(BOUNDARY, ("image", "image", photo)))
    assert deepstack.status_code == 413 and deepstack.json["success"] is False and "1 MB" in deepstack.json["error"]


#: What the test client is given where the body comes through ``uwsgi.chunked_read`` (it encodes a
#: form of its own, with another boundary, for an empty body).
IN_CHUNKS = b"(in chunks)"


class Chunks:
    """uwsgi's ``chunked_read`` for one body, counting what was handed out."""

    def __init__(self, data: bytes, size: int) -> None:
        self.pieces = [data[i : i + size] for i in range(0, len(data), size)]
        self.handed = 0

    def __call__(self) -> bytes:
        piece = self.pieces.pop(0) if self.pieces else b""
        self.handed += len(piece)
        return piece


def test_under_uwsgi_the_chunks_are_read_one_by_one_and_no_further_than_the_limit(small, monkeypatch) -> None:
    """uwsgi gives no body in ``wsgi.input``, only chunks through ``uwsgi.chunked_read``."""
    from scai.portal import chunked

    photo = tiny_png((4, 5, 6))
    chunks = Chunks(body(BOUNDARY, ("photo", "a.png", photo)), 7)
    monkeypatch.setattr(chunked, "uwsgi_chunk", chunks)
    uwsgi = {"uwsgi.version": b"2.0", "wsgi.input": io.BytesIO()}  # the body comes in chunks
    answered = post_chunked(small, "/api/v1/classify?wait=20", IN_CHUNKS, **uwsgi)
    assert answered.status_code == 200 and answered.json["predictions"][0]["label"] == "#040506"

    endless = Chunks(body(BOUNDARY, ("photo", "a.png", b"\0" * (50 * 1024 * 1024))), 64 * 1024)
    monkeypatch.setattr(chunked, "uwsgi_chunk", endless)
    refused = post_chunked(small, "/api/v1/classify", IN_CHUNKS, **uwsgi)
    assert refused.status_code == 413 and "1 MB" in refused.json["message"]
    assert endless.handed <= 1024 * 1024 + 64 * 1024, "read past the limit"


def test_a_chunk_uwsgi_cannot_read_is_400_saying_so(small, monkeypatch) -> None:
    from scai.portal import chunked

    def broken() -> bytes:
        raise OSError("unable to receive chunked part")

    monkeypatch.setattr(chunked, "uwsgi_chunk", broken)
    refused = post_chunked(small, "/api/v1/classify", IN_CHUNKS, **{"uwsgi.version": b"2.0"})
    assert refused.status_code == 400 and refused.json["message"] == chunked.UNREADABLE


# -- 8. long part headers ------------------------------------------------------------------------------


def test_a_long_file_name_is_parsed_as_werkzeug_parses_it() -> None:
    data = body(BOUNDARY, ("photo", "a" * 8000 + ".jpg", b"\xff\xd8 photo"))
    assert parsed(UploadRequest, data) == parsed(Request, data)
    assert parsed(UploadRequest, data)[1]["photo"][0] == "a" * 8000 + ".jpg"


def test_a_long_file_name_is_accepted_and_kept_short(small) -> None:
    name = "a" * 8000 + ".png"
    answered = small.post("/api/v1/classify?wait=20", data={"photo": (io.BytesIO(tiny_png()), name)})
    assert answered.status_code == 200, answered.json
    legacy = small.post("/imageclassification", data={"photo": (io.BytesIO(tiny_png()), name)})
    assert legacy.status_code == 200
    assert legacy.json["filename"] == "a" * 251 + ".png"
    deepstack = small.post("/v1/vision/detection", data={"image": (io.BytesIO(tiny_png()), name)})
    assert deepstack.status_code == 200 and deepstack.json["success"] is True


def test_a_part_header_over_the_field_limit_is_413_saying_so(small) -> None:
    data = body(BOUNDARY, ("photo", "a" * 600_000 + ".png", tiny_png()))
    refused = small.post("/api/v1/classify", data=data, content_type=MULTIPART)
    assert refused.status_code == 413 and "header of a form part" in refused.json["message"]
    deepstack = small.post("/v1/vision/detection", data=data, content_type=MULTIPART)
    assert deepstack.status_code == 413 and "header of a form part" in deepstack.json["error"]


# -- 11. DeepStack's error shape for every answer under /v1/ --------------------------------------------


@pytest.mark.parametrize(
    ("method", "route", "status"),
    [
        ("post", "/v1/vision/custom/", 404),  # no model name
        ("post", "/v1/vision/custom/a%2fb", 404),  # a slash in it
        ("get", "/v1/vision/detection", 405),
        ("post", "/v1/vision/nothing", 404),
    ],
)
def test_routing_errors_under_v1_have_deepstacks_shape(small, method: str, route: str, status: int) -> None:
    answer = getattr(small, method)(route)
    assert answer.status_code == status
    assert answer.json == {"success": False, "error": answer.json["error"], "code": status}
    assert answer.json["error"]


def test_the_413_under_v1_has_deepstacks_shape_and_names_the_limit(small) -> None:
    big = post(small, "/v1/vision/detection", tiny_png() + b"\0" * (2 * 1024 * 1024))
    assert big.status_code == 413
    assert big.json == {"success": False, "error": "the upload is larger than the limit of 1 MB", "code": 413}


def test_errors_elsewhere_keep_scais_shape(small) -> None:
    for answer in (small.get("/api/v1/nothing"), small.get("/api/v1/classify"), small.get("/v1x")):
        assert set(answer.json) == {"error", "message", "status"}


# -- 12. API keys with spaces around them ------------------------------------------------------------


def test_a_key_with_spaces_around_it_is_let_in_from_all_three_places(tmp_path) -> None:
    settings = make_settings(tmp_path, api_keys="first-key")
    with running_workers(settings):
        client = create_app(settings).test_client()
        assert post(client, "/v1/vision/detection", tiny_png(), api_key=" first-key\n").status_code == 200
        assert client.get("/api/v1/models", headers={"X-API-Key": " first-key "}).status_code == 200
        assert client.get("/api/v1/models", headers={"Authorization": "Bearer  first-key "}).status_code == 200
        blank = post(client, "/v1/vision/detection", tiny_png(), api_key="  ")
        assert blank.status_code == 401 and blank.json["code"] == 401
