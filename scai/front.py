"""``scai serve``'s front: each request is taken whole, within a deadline, before the portal sees it.

uwsgi gives a connection one of its threads from accept() on, and its socket timeout bounds each
read, not the request: a client that sends a byte every few seconds holds a thread for as long as
it likes, and a few dozen of them (32 threads on two cores) stall every upload and ``/healthz``.
Here the headers and the body (up to the upload limit) are read on an event loop, where a slow
client costs a socket, not a thread, and one that has not sent its whole request within
``Settings.client_timeout`` seconds is answered 408. Only whole requests reach uwsgi, over a Unix
socket, each behind a PROXY line carrying the client's address (uwsgi's
``--enable-proxy-protocol``, for its log); the answer is passed back as uwsgi writes it, never
waiting on the client, so a slow reader holds no thread either. Behind nginx (``deploy/``) nginx
does this job and the portal's socket takes uwsgi's own protocol instead.

One request per connection, as uwsgi answers (``Connection: close``). A body over the upload
limit is not read: the headers go on alone and the portal answers 413 from their Content-Length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
from http import HTTPStatus
from typing import Any

import uvloop

from scai import config
from scai.config import Settings

log = logging.getLogger("scai.front")

#: Longest request head, uwsgi's ``--buffer-size``: the portal's bound before there was a front.
MAX_HEAD = 32768
#: A connection's first buffer: most heads fit, and an idle connection costs no more than this.
FIRST_BUFFER = 4096
#: Connections the front holds at once; more are answered 503 and closed (at 4 KB each, 40 MB).
MAX_CONNECTIONS = 10_000
HEAD_END = b"\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Where the bytes a refused client still sends go (see ``Connection.refuse``).
DISCARDED = bytearray(65536)


class BadRequest(ValueError):
    """A request head the front cannot forward as it is (a malformed Content-Length)."""


def header_values(head: bytes, name: bytes) -> list[bytes]:
    """The values of every header ``name`` (lower case) in a request head."""
    prefix = name + b":"
    lines = head.split(b"\r\n")[1:]
    return [line[len(prefix) :].strip() for line in lines if line[: len(prefix)].lower() == prefix]


def content_length(head: bytes) -> int:
    """The body's length the head announces: 0 without one; ``BadRequest`` when malformed or given
    twice with different values (which body would the portal read?)."""
    values = set(header_values(head, b"content-length"))
    if not values:
        return 0
    value = values.pop()
    if values or not value.isdigit():
        raise BadRequest("the Content-Length header is not one whole number")
    return int(value)


def is_chunked(head: bytes) -> bool:
    """A chunked body (``Transfer-Encoding: chunked``), whose end only its last chunk tells."""
    return any(b"chunked" in value.lower() for value in header_values(head, b"transfer-encoding"))


def expects_continue(head: bytes) -> bool:
    """``Expect: 100-continue``: curl waits a second for the 100 before sending a body over 1 MB."""
    return any(value.lower() == b"100-continue" for value in header_values(head, b"expect"))


def chunk_size(line: bytes) -> int | None:
    """The size a chunk's first line announces (hexadecimal, maybe with extensions); None if none."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        return None


class ChunkedEnd:
    """Where a chunked body ends, found in the request's buffer as its bytes come: after its last
    chunk and trailers, or where the portal will refuse it (a chunk size that is not one, a chunk
    over the upload limit, which uwsgi's ``--chunked-input-limit`` refuses, or the chunk that takes
    the body over it, Werkzeug's 413). uwsgi decodes the chunks itself, and meets the end of what
    it is given there (``write_eof``), so it never waits on the client."""

    def __init__(self, start: int, max_body: int) -> None:
        self.position, self.max_body, self.total, self.trailers = start, max_body, 0, False

    def find(self, data: bytearray, size: int) -> int | None:
        """The end, once it is in ``data[:size]``."""
        while (line_end := data.find(b"\r\n", self.position, size)) >= 0:
            after = line_end + 2
            if self.trailers:  # after the last chunk: trailers, up to an empty line
                if line_end == self.position:
                    return after
            elif (chunk := chunk_size(data[self.position : line_end])) is None or chunk > self.max_body:
                return after
            elif chunk == 0:
                self.trailers = True
            elif (after := after + chunk + 2) > size:
                return None  # the chunk is not all here yet
            else:
                self.total += chunk
                if self.total > self.max_body:
                    return after
            self.position = after
        return None


def proxy_line(transport: asyncio.BaseTransport) -> bytes:
    """The PROXY protocol v1 line naming the client (uwsgi's log shows its address, not ours)."""
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if ":" in peer[0] else "TCP4"
    return f"PROXY {family} {peer[0]} {local[0]} {peer[1]} {local[1]}\r\n".encode()


def error_answer(status: int, message: str) -> bytes:
    """A whole HTTP answer in the portal's error JSON (``{"error", "message", "status"}``)."""
    reason = HTTPStatus(status).phrase
    body = json.dumps({"error": reason, "message": message, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Front:
    """What every connection needs: where the portal is, how long a client may take, the upload
    limit."""

    def __init__(self, backend: str, client_timeout: float, max_body: int) -> None:
        self.backend = backend
        self.client_timeout = client_timeout
        self.max_body = max_body
        self.open = 0

    def connection(self) -> Connection:
        return Connection(self)


class Connection(asyncio.BufferedProtocol):
    """One client: its request read into one buffer (the kernel writes into it) until it is whole,
    the head and then the body it announces, or answered 408 at the deadline; then passed to the
    portal (``Portal``), whose answer comes back as uwsgi writes it, never at the client's pace,
    so a slow reader holds no thread either."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.data = bytearray(FIRST_BUFFER)
        #: Buffers filled before ``data`` (a body of known length: see ``grow``), and their bytes.
        self.pieces: list[bytearray] = []
        self.before = 0
        self.size = 0  # received, in ``pieces`` and ``data``
        self.head_end: int | None = None
        self.end: int | None = None  # of the request, once known
        self.chunked: ChunkedEnd | None = None
        self.transport: asyncio.Transport | None = None
        self.portal: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(self.front.client_timeout, self.too_slow)
        self.front.open += 1
        if self.front.open > MAX_CONNECTIONS:  # a flood of connections: each would hold a socket
            self.transport.write(error_answer(503, "the server holds too many connections; try again"))
            self.transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.data is DISCARDED:
            return memoryview(DISCARDED)
        if self.size == self.before + len(self.data):
            self.grow()
        return memoryview(self.data)[self.size - self.before :]

    def grow(self) -> None:
        """Room for more of the request: as much again as it holds, up to the body's end where it
        is known. The room grows with what the client has sent, never to what it announces: a
        head that claims 20 MB and sends nothing costs 32 KB, not 20 MB (a few hundred such would
        be GBs). A body of known length goes on in a buffer of its own, the full ones kept as
        they are: a 12 MP upload is not copied nine times on its way in. A chunked body stays in
        one buffer, where its chunks are found."""
        held = self.before + len(self.data)
        if self.head_end is None:  # the head, up to its limit (a longer one is refused: 431)
            room = min(held, MAX_HEAD - held)
        else:
            room = held if self.end is None else min(held, self.end - held)
        if self.end is not None and self.chunked is None:
            self.pieces.append(self.data)
            self.before, self.data = held, bytearray(room)
        else:  # a new buffer: the kernel may still hold a view of the old
            self.data = self.data + bytes(room)

    def buffer_updated(self, nbytes: int) -> None:
        if self.data is DISCARDED:
            return
        self.size += nbytes
        if self.head_end is None:
            self.head_end = self.data.find(HEAD_END, max(0, self.size - nbytes - 3), self.size)
            if self.head_end < 0:
                self.head_end = None
                if self.size >= MAX_HEAD:
                    self.refuse(431, f"the request's headers are longer than {MAX_HEAD // 1024} KB")
                return
            self.head_end += len(HEAD_END)
            if not self.read_head():
                return
        if self.chunked and self.end is None:
            self.end = self.chunked.find(self.data, self.size)
            if self.end is None and self.size > 2 * self.front.max_body:  # chunk lines at most double a body
                self.end = self.size  # uwsgi refuses what ends here
        if self.end is not None and self.size >= self.end:
            self.whole()

    def read_head(self) -> bool:
        """What the head says of the body: its end, the room for it; False once refused."""
        head = bytes(self.data[: self.head_end])
        chunked = is_chunked(head)
        try:
            length = 0 if chunked else content_length(head)
        except BadRequest as error:
            self.refuse(400, str(error))
            return False
        if chunked:
            self.chunked = ChunkedEnd(self.head_end, self.front.max_body)
        elif length > self.front.max_body:  # the portal answers 413 from the head alone
            self.end = self.head_end
        else:
            self.end = self.head_end + length
        if (self.chunked or self.end > self.size) and expects_continue(head):
            self.transport.write(CONTINUE)
        return True

    def whole(self) -> None:
        """The request is here: on to the portal, reading no more from the client."""
        self.timer.cancel()
        self.transport.pause_reading()
        request = [proxy_line(self.transport), *self.pieces, memoryview(self.data)[: self.end - self.before]]
        asyncio.ensure_future(self.relay(request))

    async def relay(self, request: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.portal, _ = await loop.create_unix_connection(lambda: Portal(self, request), self.front.backend)
        except OSError:
            self.refuse(502, "the portal is not running (starting or restarting)")

    def too_slow(self) -> None:
        self.refuse(408, f"the request was not sent within {self.front.client_timeout:g} s")

    def refuse(self, status: int, message: str) -> None:
        """Answer with an error and end the answer (``write_eof``), then drop what the client still
        sends until it closes, or the deadline: closing with its bytes unread would reset the
        connection, and the answer could be lost with it."""
        self.transport.write(error_answer(status, message))
        self.transport.write_eof()
        self.data, self.size, self.end = DISCARDED, 0, None  # nothing more is kept
        self.pieces, self.before = [], 0
        self.transport.resume_reading()
        self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.front.client_timeout, self.transport.abort)

    def finish(self) -> None:
        """Close once the client has taken what was written, or at the deadline in any case."""
        self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.front.client_timeout, self.transport.abort)
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # a client that stops sending before its request is whole is gone: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.front.open -= 1
        if self.portal is not None:
            self.portal.close()  # the answer has nobody to go to


class Portal(asyncio.Protocol):
    """The portal's side of one request: the whole request written at once, then the answer
    passed to the client as it comes."""

    def __init__(self, client: Connection, request: list[Any]) -> None:
        self.client = client
        self.request = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.writelines(self.request)  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        self.request = []

    def data_received(self, data: bytes) -> None:
        if not self.client.transport.is_closing():  # else the client is gone
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.finish()


def raise_open_files_limit() -> None:
    """Every connection is an open file: take the hard limit, not the soft one (often 1024)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(front: Front, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(front.connection, host, port, backlog=config.listen_backlog(), reuse_address=True)
    async with server:
        await server.serve_forever()


def command(backend: str, host: str, port: int) -> list[str]:
    """How ``scai serve`` starts the front (settings come from its environment)."""
    from scai.launcher import python_executable

    return [python_executable(), "-m", "scai.front", "--host", host, "--port", str(port), "--backend", backend]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="scai serve's front (started by scai serve)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the portal's Unix socket (uwsgi --http-socket)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    settings = Settings.from_env()
    raise_open_files_limit()
    front = Front(args.backend, settings.client_timeout, settings.max_upload_bytes)
    uvloop.run(serve(front, args.host, args.port))


if __name__ == "__main__":
    main()
