"""Writing files so that a reader never sees half of one: model configs, catalogues, converted
models, the face database and the session folder all write through here.

Kept apart from the session stores because nothing here knows about sessions.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

#: Numbers the temporary files of this process (``next`` on a count is atomic under the GIL).
_temporaries = itertools.count()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.
    The temporary name is this process's and this call's, a random one only where that is taken
    (a worker writes one per session: ``mkstemp`` drew and tried a random name every time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_temporaries)}.tmp")
    try:
        try:
            write_new(tmp, data, 0o600)  # as mkstemp made them: a face database is nobody else's
        except FileExistsError:  # another process with this pid (a container's, on a shared volume)
            tmp = tmp.with_name(f"{tmp.name}.{secrets.token_hex(8)}")
            write_new(tmp, data, 0o600)
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
    write_new(path, json_bytes(value))


def write_new(path: Path, data: bytes, mode: int = 0o666) -> None:
    """A file that must not exist yet (``FileExistsError``), written with bare system calls;
    ``mode`` before the umask, as ``open`` takes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
