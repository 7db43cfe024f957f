"""multipart/form-data for the portal, parsed by python-multipart instead of Werkzeug.

Werkzeug's parser compiles two regular expressions for every request, because each names its own
boundary: about a quarter of a millisecond of a 9 ms classification, before the worker can start.
python-multipart (the parser Starlette uses) finds the boundary with a plain search. The rules stay
Werkzeug's: a part with a filename is a file and every other part a form field; a field, and a
header line of a part, may hold at most ``max_form_memory_size`` bytes and a body at most
``max_form_parts`` parts (413 beyond, saying which); only parts that end properly count, so a
cut-off body yields no file and the view says what is missing. (python-multipart's own header
limits, 4 KB a line and 8 lines a part, are off: it reports them as a malformed body, which
Werkzeug's form parser drops in silence, so a file name of 8,000 characters became "no image".)
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from python_multipart.multipart import MultipartParser
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

CHUNK = 64 * 1024


@dataclass
class Part:
    headers: Headers = field(default_factory=Headers)
    name: str = ""
    filename: str | None = None
    data: list[bytes] = field(default_factory=list)
    size: int = 0


class Parts:
    """The python-multipart callbacks: collect each part's headers and bytes."""

    def __init__(self, max_parts: int | None, max_field_bytes: int | None) -> None:
        self.max_parts = max_parts
        self.max_field_bytes = max_field_bytes  # a field's value, and a header line
        self.done: list[Part] = []
        self.part = Part()
        self.header = [b"", b""]

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda data, start, end: self._header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._header(1, data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.data,
            "on_part_end": lambda: self.done.append(self.part),
        }

    def begin(self) -> None:
        if self.max_parts is not None and len(self.done) >= self.max_parts:
            raise RequestEntityTooLarge(f"the form has more than {self.max_parts} parts")
        self.part = Part()

    def _header(self, index: int, data: bytes) -> None:
        self.header[index] += data
        size = len(self.header[0]) + len(self.header[1])
        if self.max_field_bytes is not None and size > self.max_field_bytes:
            raise RequestEntityTooLarge(f"a header of a form part is larger than {self.max_field_bytes} bytes")

    def header_end(self) -> None:
        # UTF-8, as Werkzeug reads them (browsers send a file's name so)
        self.part.headers.add(self.header[0].decode(errors="replace"), self.header[1].decode(errors="replace").strip())
        self.header = [b"", b""]

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get("content-disposition"))
        self.part.name = options.get("name", "")
        self.part.filename = options.get("filename")

    def data(self, data: bytes, start: int, end: int) -> None:
        self.part.size += end - start
        if self.part.filename is None and self.max_field_bytes is not None and self.part.size > self.max_field_bytes:
            raise RequestEntityTooLarge(f"a form field is larger than {self.max_field_bytes} bytes")
        # A chunk wholly inside the part is kept as it is (bytes do not change): not copied
        self.part.data.append(data if start == 0 and end == len(data) else data[start:end])


class UploadFormParser(FormDataParser):
    """Werkzeug's form parser with python-multipart for multipart bodies."""

    def _parse_multipart(
        self, stream: IO[bytes], mimetype: str, content_length: int | None, options: dict[str, str]
    ) -> tuple[IO[bytes], Any, Any]:
        boundary = options.get("boundary", "").encode("latin-1")
        if not boundary:
            raise ValueError("Missing boundary")
        parts = Parts(self.max_form_parts, self.max_form_memory_size)
        parser = MultipartParser(boundary, parts.callbacks(), max_header_count=sys.maxsize, max_header_size=sys.maxsize)
        while chunk := stream.read(CHUNK):
            parser.write(chunk)
        parser.finalize()
        fields, files = [], []
        for part in parts.done:
            data = b"".join(part.data)
            if part.filename is None:
                fields.append((part.name, data.decode("utf-8", "replace")))
            else:
                upload = FileStorage(io.BytesIO(data), part.filename, part.name, headers=part.headers)
                files.append((part.name, upload))
        return stream, self.cls(fields), self.cls(files)
