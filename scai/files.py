"""Writing files so that a reader never sees half of one: model configs, catalogues, converted
models, the face database and the session folder all write through here.

Kept apart from the session stores because nothing here knows about sessions.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, as every stored state is written."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, json_bytes(value))


def write_json(path: Path, value: Any) -> None:
    """A new file, written in place (each rename costs a journal write on ext4)."""
    with open(path, "xb") as handle:
        handle.write(json_bytes(value))
