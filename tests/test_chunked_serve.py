"""Chunked uploads (``Transfer-Encoding: chunked``) through a real ``scai serve``: uwsgi speaking
HTTP itself hands such a body out only through ``uwsgi.chunked_read``. Raw requests on a socket,
so that the chunks are exactly the test's. The portal's side is in test_upload_edges.py."""

from __future__ import annotations

import io
import json
import os
import socket

import pytest
import requests
from conftest import IMAGES, Server, needs_assets
from PIL import Image

pytestmark = needs_assets

BOUNDARY = "chunkyb0undary"
#: ``scai serve``'s default upload limit (``SCAI_MAX_UPLOAD_MB``).
LIMIT = 20 * 1024 * 1024


def multipart(field: str, filename: str, data: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def send_chunked(server: Server, route: str, pieces: list[bytes], last: bool = True) -> socket.socket:
    """A POST with the body in ``pieces``, one chunk each, and (``last``) the empty last chunk.
    Sending stops early where the server has answered and closed the connection already."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    framed = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces] + ([b"0\r\n\r\n"] if last else [])
    try:
        for data in [head.encode(), *framed]:
            connection.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered early: the answer says why
    return connection


def answer(connection: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the response (the server closes the connection after it)."""
    received = b""
    with connection:
        try:
            while data := connection.recv(65536):
                received += data
        except ConnectionResetError:  # closed with part of our body unread: the answer came first
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), received[:200]
    return int(head.split()[1]), json.loads(body)


def test_a_chunked_upload_is_classified(server: Server) -> None:
    body = multipart("photo", "parrot.jpg", (IMAGES / "parrot.jpg").read_bytes())
    status, result = answer(send_chunked(server, "/api/v1/classify?wait=30&model=mobilenet_v2", chunks(body, 1000)))
    assert status == 200, result
    assert result["predictions"][0]["label"] == "macaw"


def noise_png(megabytes: int) -> bytes:
    """A PNG of random pixels: it cannot be compressed, so it is as large as its pixels."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5) + 1
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG", compress_level=0)
    return out.getvalue()


@pytest.mark.parametrize("chunk_size", [64 * 1024, None], ids=["64KB-chunks", "one-chunk"])
def test_a_13_mb_chunked_upload_arrives_whole(server: Server, chunk_size: int | None) -> None:
    photo = noise_png(13)
    assert len(photo) > 13 * 1024 * 1024
    body = multipart("photo", "noise.png", photo)
    status, created = answer(send_chunked(server, "/imageclassification", chunks(body, chunk_size or len(body))))
    assert status == 200, created
    stored = requests.get(
        f"{server.url}/api/v1/sessions/{created['sessname']}/input",
        headers={"X-Session-Key": created["sesskey"]},
        timeout=60,
    )
    assert stored.status_code == 200 and stored.content == photo


@pytest.mark.parametrize(
    ("route", "message"), [("/api/v1/classify", "message"), ("/v1/vision/detection", "error")], ids=["api", "deepstack"]
)
def test_a_chunked_body_over_the_limit_is_413_before_it_ends(server: Server, route: str, message: str) -> None:
    """The body goes past the limit by two chunks and then stops, without its last chunk: the
    server answers 413 having read no further than the limit, not waiting for the rest."""
    pieces = chunks(multipart("image", "image", b"\0" * (LIMIT + 128 * 1024)), 64 * 1024)
    status, refused = answer(send_chunked(server, route, pieces[: LIMIT // (64 * 1024) + 2], last=False))
    assert status == 413 and "20 MB" in refused[message], refused
