"""Optional API keys for uploads and model lists.

Keys come from ``SCAI_API_KEYS`` (comma-separated) and from ``usr/api_keys`` (one a line, ``#``
comments), read again when that file changes, so a key is added or revoked without a restart. A
key file that cannot be read refuses every keyed request (503) rather than opening the service.
With neither set the service is open, as before. A client presents its key as
``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or the DeepStack form field ``api_key``.

Only SHA-256 digests are kept, and a presented key is compared with every one of them with
``hmac.compare_digest``: how long a check takes says nothing about how much of a key was right,
nor which key matched. Keys never appear in a log line or an error message. Session keys are
separate: they still guard each session's reads.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from flask import current_app, request

from scai.config import file_stamp
from scai.errors import KeyFileUnreadable, Unauthorized

log = logging.getLogger("scai.apikeys")

#: The file under ``usr/`` that holds keys, one a line.
KEYS_FILE = "api_keys"
#: The header a client may send its key in (besides ``Authorization: Bearer``).
KEY_HEADER = "X-API-Key"
#: The DeepStack clients' form field.
FORM_FIELD = "api_key"

_file_cache: dict[Path, tuple[tuple[int, ...], frozenset[bytes]]] = {}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@functools.lru_cache(maxsize=16)  # asked on every keyed request, with the same few texts
def parse(text: str) -> frozenset[bytes]:
    """Digests of the keys in ``text``: words split by commas, spaces or lines (``SCAI_API_KEYS``)."""
    return frozenset(_digest(word) for word in re.split(r"[,\s]+", text) if word)


def parse_file(text: str) -> frozenset[bytes]:
    """The same for the key file, where ``#`` starts a comment."""
    return parse("\n".join(line.split("#", 1)[0] for line in text.splitlines()))


def file_keys(usr_dir: Path) -> frozenset[bytes]:
    """The keys in ``usr/api_keys``, read again only when the file changes. A file that is
    there but cannot be read, or holds no key (emptied, all comments, a link to nothing),
    refuses every keyed request (503) until it is fixed: only its absence opens the service."""
    path = Path(usr_dir) / KEYS_FILE
    try:
        stamp = file_stamp(path)
        if stamp is None:
            if os.path.lexists(path):  # a link to nothing: a secret that was not mounted
                raise FileNotFoundError(f"{path} links to nothing")
            return frozenset()
        cached = _file_cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = _file_cache[path] = (stamp, parse_file(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as error:
        log.error("the API key file %s cannot be read: %s", path, error)
        raise KeyFileUnreadable(f"the server's API key file cannot be read ({error.__class__.__name__})") from None
    if not cached[1]:
        log.error("the API key file %s holds no key: remove it to open the service", path)
        raise KeyFileUnreadable("the server's API key file holds no key")
    return cached[1]


def configured(settings: Any) -> frozenset[bytes]:
    """Every key this installation accepts (none: the service is open)."""
    return parse(settings.api_keys) | file_keys(settings.usr_dir)


def presented() -> str | None:
    """The key this request carries: the Bearer header, ``X-API-Key``, or the form field (read
    last, so that a request with a header key is never parsed for it). Each is trimmed alike:
    keys hold no spaces, and clients pad them (a key pasted with its line break)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.headers.get(KEY_HEADER, "").strip():
        return request.headers[KEY_HEADER].strip()
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return request.form.get(FORM_FIELD, "").strip() or None
    return None


def matches(key: str | None, keys: frozenset[bytes]) -> bool:
    """True if ``key`` is one of ``keys``, compared with each in constant time."""
    if key is None:
        return False
    digest, found = _digest(key), False
    for known in keys:
        found |= hmac.compare_digest(digest, known)
    return found


def check() -> None:
    """Raise ``Unauthorized`` unless keys are off or the request carries one of them."""
    keys = configured(current_app.extensions["scai"])
    if keys and not matches(presented(), keys):
        raise Unauthorized(
            "this server needs an API key: send it as 'Authorization: Bearer KEY', "
            f"'{KEY_HEADER}: KEY' or the form field '{FORM_FIELD}'"
        )


def required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view that only answers requests with a valid key (when keys are set)."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check()
        return view(*args, **kwargs)

    guarded.api_key_required = True  # type: ignore[attr-defined]  (the OpenAPI test reads it)
    return guarded
