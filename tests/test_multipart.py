"""The portal's multipart parser gives what Werkzeug's gives, and keeps its limits. No models."""

from __future__ import annotations

import pytest
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder

from scai.portal import UploadRequest

PHOTO = bytes(range(256)) * 300 + b"\r\n--not-the-boundary\r\n" + b"\xff\xd9"


def body(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def parsed(cls: type[Request], data: bytes, boundary: str = "b0und4ry", **limits: int) -> tuple[dict, dict]:
    environ = EnvironBuilder(
        method="POST", data=data, content_type=f"multipart/form-data; boundary={boundary}"
    ).get_environ()
    request = cls(environ)
    for name, value in limits.items():
        setattr(request, name, value)
    files = {name: (f.filename, f.read()) for name, f in request.files.items()}
    return dict(request.form), files


@pytest.mark.parametrize(
    "parts",
    [
        [("photo", "cat.jpg", PHOTO)],
        [("image", "image", PHOTO), ("api_key", None, b"secret"), ("min_confidence", None, b"0.4")],
        [("photo", "caf\u00e9 \u263a.jpg", PHOTO), ("note", None, "\u00e9t\u00e9".encode())],
        [("photo", "", b""), ("photo", "second.png", b"\x89PNG")],
    ],
)
def test_same_fields_and_files_as_werkzeug(parts: list) -> None:
    data = body("b0und4ry", *parts)
    assert parsed(UploadRequest, data) == parsed(Request, data)
    assert parsed(UploadRequest, data)[1], "the upload was found"


def test_a_cut_off_body_has_no_file() -> None:
    data = body("b0und4ry", ("photo", "cat.jpg", PHOTO))
    assert parsed(UploadRequest, data[: len(data) // 2]) == ({}, {})
    assert parsed(UploadRequest, b"not multipart at all") == ({}, {})


def test_limits_are_kept() -> None:
    big_field = body("b0und4ry", ("note", None, b"x" * 2000))
    with pytest.raises(RequestEntityTooLarge, match="form field is larger than 1000 bytes"):
        parsed(UploadRequest, big_field, max_form_memory_size=1000)
    many = body("b0und4ry", *[(f"f{i}", None, b"1") for i in range(20)])
    with pytest.raises(RequestEntityTooLarge, match="more than 10 parts"):  # not "larger than 20 MB"
        parsed(UploadRequest, many, max_form_parts=10)
    big_file = body("b0und4ry", ("photo", "cat.jpg", PHOTO))
    assert parsed(UploadRequest, big_file, max_form_memory_size=1000)[1], "files are not form fields"
