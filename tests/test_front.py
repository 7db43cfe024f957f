"""``scai serve``'s front (``scai.front``): requests reach the portal whole, within a deadline.

The front runs in this process against a stand-in portal on a Unix socket, which records what
reaches it. ``test_slow_clients`` runs a real ``scai serve`` under a trickle attack."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import free_port

from scai.front import Connection, Front, serve

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
LIMIT = 1000


async def exchange(tmp_path: Path, sent: list[bytes], timeout: float = 5.0, portal: bool = True) -> tuple[bytes, bytes]:
    """(what the client got back, what reached the portal) for a client that sends ``sent``, one
    part at a time, then waits for the answer."""
    received = bytearray()

    async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # up to the front's write_eof
        writer.write(ANSWER)
        writer.close()

    socket_path = str(tmp_path / "portal.sock")
    backend = await asyncio.start_unix_server(stand_in, socket_path) if portal else None
    front = Front(socket_path, client_timeout=timeout, max_body=LIMIT)
    server = asyncio.ensure_future(serve(front, "127.0.0.1", port := free_port()))
    try:
        reader, writer = await wait_connect(port)
        for part in sent:
            writer.write(part)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer, bytes(received)
    finally:
        server.cancel()
        if backend:
            backend.close()


async def wait_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + 5
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def error_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_whole_request_reaches_the_portal_with_the_clients_address(tmp_path: Path) -> None:
    head = b"POST /api/v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    answer, received = run(exchange(tmp_path, [head, b"he", b"llo"]))
    assert answer == ANSWER
    assert received.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
    assert received.split(b"\r\n", 1)[1] == head + b"hello"


def test_a_chunked_body_goes_on_as_sent_up_to_its_end(tmp_path: Path) -> None:
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = [b"5\r\nhello\r\n", b"3;ext=1\r\nabc\r\n", b"0\r\n", b"X-Trailer: 1\r\n\r\n"]
    answer, received = run(exchange(tmp_path, [head, *body]))
    assert answer == ANSWER
    assert received.split(b"\r\n", 1)[1] == head + b"".join(body)


@pytest.mark.parametrize(
    "body",
    [b"%x\r\n" % (LIMIT + 1), b"zz\r\n", b"%x\r\n%s\r\n%x\r\n%s\r\n" % (600, b"a" * 600, 600, b"b" * 600)],
    ids=["chunk over the limit", "not a chunk size", "body over the limit"],
)
def test_a_chunked_body_the_portal_refuses_goes_on_without_waiting_for_more(tmp_path: Path, body: bytes) -> None:
    """The client sends nothing after this part: the portal gets it at once (and answers)."""
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer, received = run(exchange(tmp_path, [head + body], timeout=30))
    assert answer == ANSWER
    assert received.split(b"\r\n", 1)[1] == head + body


def test_an_upload_over_the_limit_goes_on_as_its_head_alone(tmp_path: Path) -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
    answer, received = run(exchange(tmp_path, [head], timeout=30))
    assert answer == ANSWER
    assert received.split(b"\r\n", 1)[1] == head


def test_a_client_too_slow_is_answered_408_at_the_deadline(tmp_path: Path) -> None:
    began = time.monotonic()
    answer, received = run(exchange(tmp_path, [b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"], timeout=0.3))
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert error_of(answer) == {
        "error": "Request Timeout",
        "message": "the request was not sent within 0.3 s",
        "status": 408,
    }
    assert received == b""
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ],
    ids=["headers over 32 KB", "Content-Length not a number", "two Content-Lengths"],
)
def test_a_head_the_portal_cannot_take_is_answered_in_json(tmp_path: Path, head: bytes, status: int) -> None:
    answer, received = run(exchange(tmp_path, [head]))
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert error_of(answer)["status"] == status
    assert received == b""


def test_without_the_portal_the_answer_is_502(tmp_path: Path) -> None:
    answer, _ = run(exchange(tmp_path, [b"GET /healthz HTTP/1.1\r\n\r\n"], portal=False))
    assert answer.startswith(b"HTTP/1.1 502 ")


def test_expect_100_continue_is_answered_before_the_body(tmp_path: Path) -> None:
    async def client() -> bytes:
        async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()
            writer.write(ANSWER)
            writer.close()

        backend = await asyncio.start_unix_server(stand_in, str(tmp_path / "portal.sock"))
        front = Front(str(tmp_path / "portal.sock"), client_timeout=5, max_body=LIMIT)
        server = asyncio.ensure_future(serve(front, "127.0.0.1", port := free_port()))
        try:
            reader, writer = await wait_connect(port)
            writer.write(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"hi")
            return interim + await asyncio.wait_for(reader.read(), 5)
        finally:
            server.cancel()
            backend.close()

    assert run(client()) == b"HTTP/1.1 100 Continue\r\n\r\n" + ANSWER


def test_a_body_larger_than_the_first_buffer_arrives_whole(tmp_path: Path) -> None:
    body = bytes(range(256)) * 800  # 200 KB: the buffer grows as it comes
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    received = bytearray()

    async def go() -> bytes:
        async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.extend(await reader.read())
            writer.write(ANSWER)
            writer.close()

        backend = await asyncio.start_unix_server(stand_in, str(tmp_path / "portal.sock"))
        front = Front(str(tmp_path / "portal.sock"), client_timeout=10, max_body=len(body))
        server = asyncio.ensure_future(serve(front, "127.0.0.1", port := free_port()))
        try:
            reader, writer = await wait_connect(port)
            for start in range(0, len(body), 7000):
                writer.write((head if start == 0 else b"") + body[start : start + 7000])
                await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            server.cancel()
            backend.close()

    assert run(go()) == ANSWER
    assert received.split(b"\r\n", 1)[1] == head + body


def test_a_head_that_announces_a_large_body_costs_what_was_sent_not_what_it_announces() -> None:
    """30 clients announcing 50 MB each and sending nothing: a buffer sized by the announcement
    would hold 1.5 GB."""

    class Watched(Front):  # keeps its connections, to see when their heads were read
        def connection(self) -> Connection:
            self.made.append(super().connection())
            return self.made[-1]

    async def go() -> int:
        front = Watched("/nonexistent", client_timeout=30, max_body=50 * 2**20)
        front.made = []
        server = asyncio.ensure_future(serve(front, "127.0.0.1", port := free_port()))
        try:
            await wait_connect(port)
            tracemalloc.start()
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
            for _, writer in clients:
                writer.write(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (50 * 2**20))
                await writer.drain()
            deadline = time.monotonic() + 10
            while sum(c.head_end is not None for c in front.made) < 30:  # every head read
                assert time.monotonic() < deadline, "the front did not read the heads"
                await asyncio.sleep(0.01)  # the front's loop is this one: yield to it
            peak = tracemalloc.get_traced_memory()[1]
            for _, writer in clients:
                writer.close()
            return peak
        finally:
            tracemalloc.stop()
            server.cancel()

    assert run(go()) < 20 * 2**20


def test_connections_past_the_limit_are_answered_503_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("scai.front.MAX_CONNECTIONS", 3)

    async def go() -> bytes:
        front = Front("/nonexistent", client_timeout=30, max_body=LIMIT)
        server = asyncio.ensure_future(serve(front, "127.0.0.1", port := free_port()))
        try:
            held = [await wait_connect(port) for _ in range(3)]
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            answer = await asyncio.wait_for(reader.read(), 10)
            for _, writer in held:
                writer.close()
            return answer
        finally:
            server.cancel()

    answer = run(go())
    assert answer.startswith(b"HTTP/1.1 503 ") and "too many connections" in error_of(answer)["message"]
