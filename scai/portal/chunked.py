"""Chunked request bodies (``Transfer-Encoding: chunked``, which some HTTP clients and proxies
send when they do not know the length in advance).

Werkzeug reads a body without a ``Content-Length`` only where the server says that it ends the
stream itself (``wsgi.input_terminated``), and then stops at ``MAX_CONTENT_LENGTH`` with a 413.
uwsgi serving HTTP itself (``scai serve``) neither says so nor puts the body in ``wsgi.input``: it
hands the decoded chunks out one at a time through ``uwsgi.chunked_read()``. ``terminate_chunked``
gives Werkzeug that body as a terminated stream, read a chunk at a time, so the size limit holds
as the bytes arrive and nothing past it is read. Other servers that pass a chunked request on
have decoded it into ``wsgi.input`` (Werkzeug's and gunicorn's say so; Flask's test client does
not). Behind nginx none of this happens: nginx reads the whole body and passes its length.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import BadRequest

#: The message for a chunked body uwsgi could not decode (it gives no reason).
UNREADABLE = (
    "the chunked body could not be read: a malformed chunk, a chunk larger than the upload limit, "
    "or a pause too long between chunks"
)


class ChunkedBody(io.RawIOBase):
    """The chunks of one request as a readable stream, holding at most one chunk at a time."""

    def __init__(self, read_chunk: Callable[[], bytes]) -> None:
        super().__init__()
        self.read_chunk = read_chunk
        self.pending = memoryview(b"")
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.pending and not self.ended:
            self._next_chunk()
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

    def _next_chunk(self) -> None:
        try:
            chunk = self.read_chunk()
        except OSError:  # uwsgi: "unable to receive chunked part", whatever the cause
            raise BadRequest(UNREADABLE) from None
        self.ended = not chunk  # the last chunk is empty
        self.pending = memoryview(chunk)


def is_chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def uwsgi_chunk() -> bytes:
    """The next decoded chunk of this request (empty at the end); ``OSError`` when uwsgi cannot
    read one. Imported here: the module exists only inside uwsgi."""
    import uwsgi  # type: ignore[import-not-found]

    return uwsgi.chunked_read()


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def terminate_chunked(app: WsgiApp) -> WsgiApp:
    """WSGI middleware: a chunked body becomes a terminated ``wsgi.input`` (see the module)."""

    def with_chunked_input(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if is_chunked(environ) and "wsgi.input_terminated" not in environ:
            if "uwsgi.version" in environ:
                environ["wsgi.input"] = ChunkedBody(uwsgi_chunk)
            environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return with_chunked_input
