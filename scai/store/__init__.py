"""Where sessions live, behind one interface: the session folder (``folder``, the default, one
machine) or Redis Streams (``redis_streams``, several machines), chosen by ``SCAI_STORE`` /
``--store`` and opened by ``open_store``.

Everything outside this package speaks only this module: the state names, ``Claim``, the id and
key helpers, the store errors and the ``SessionStore`` protocol. So the portal, the workers,
health, metrics and ``scai clean`` run unchanged on either store, and a third store is one more
module here, not a change to its callers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from scai.config import Settings
from scai.errors import ConfigError, SessionNotFound, StoreUnavailable

__all__ = [
    "COMPLETE", "FAILURE", "FINAL_STATES", "IMAGE", "INITIALIZATION", "MAX_DELIVERIES", "PROCESSING",
    "REDIS_SCHEMES", "SERVER", "SESSION_ID_RE", "Claim", "ClaimQueue", "JobModeStore", "SessionNotFound",
    "SessionStore", "StoreUnavailable", "initial_state", "is_session_id", "key_digest", "key_matches",
    "new_key", "new_session_id", "now_iso", "open_store", "poisoned", "settled", "taken",
]  # fmt: skip

# -- a session's states (its ``state`` field), the same words on every store and in every answer --
INITIALIZATION, PROCESSING, COMPLETE, FAILURE = "initialization", "processing", "complete", "failure"
FINAL_STATES = (COMPLETE, FAILURE)
#: Whose fault a failed session was (its ``fault`` field): the image's, or the server's (a model
#: that cannot load, an internal error); the DeepStack routes answer 400 or 500 by it.
IMAGE, SERVER = "image", "server"

#: A session handed to this many workers that all died (or hung) with it is failed, not retried.
MAX_DELIVERIES = 3

SESSION_ID_RE = re.compile(r"d-\d{8}-[0-9a-f]{32}")

#: The URL schemes of a Redis store in ``SCAI_STORE`` (``scai deploy`` checks them too).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def poisoned(deliveries: int) -> dict[str, Any]:
    """The final fields of a session that stopped ``deliveries`` workers (both stores)."""
    message = f"failed: the image stopped {MAX_DELIVERIES} workers (delivered {deliveries} times)"
    return {"state": FAILURE, "message": message}


# -- ids and keys: the same on every store, so a client cannot tell which one holds its session --
def new_session_id() -> str:
    """An id that is unguessable (128 random bits) and safe as a path component."""
    return f"d-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(16)}"


def is_session_id(value: str) -> bool:
    return bool(SESSION_ID_RE.fullmatch(value or ""))  # "$" would accept a trailing newline


def new_key() -> str:
    return secrets.token_urlsafe(24)


def key_digest(key: str) -> str:
    """Only a digest of the access key is stored, so reading the store does not reveal keys."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(state: dict[str, Any], key: str | None) -> bool:
    return hmac.compare_digest(state.get("key_sha256", ""), key_digest(key or ""))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- a session's state: the same fields, written and read the same way, on every store ----------
def initial_state(job: str, model: str, input_name: str, filename: str, options: dict | None, key: str) -> dict:
    """A new session's fields, as ``create`` stores them."""
    stamp = now_iso()
    return {
        "state": INITIALIZATION, "job": job, "model": model, "message": "waiting for a worker",
        "result": None, "result_image": None, "input": input_name, "filename": filename,
        "options": options or {}, "created": stamp, "updated": stamp, "key_sha256": key_digest(key),
    }  # fmt: skip


def taken(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` of a session a worker has taken: one still waiting reads as ``processing`` (no
    store rewrites the state when a worker starts; the claim itself says so)."""
    if state.get("state") == INITIALIZATION:
        state.update(state=PROCESSING, message="processing")
    return state


def settled(state: dict[str, Any], changed_from: str | None = None) -> bool:
    """Whether a wait on this state is over: it is final, or (``changed_from``) it is another."""
    current = state.get("state")
    return current in FINAL_STATES or (changed_from is not None and current != changed_from)


class Claim(Protocol):
    """A session a worker has taken, as the worker sees it on any store. Each store's claim holds
    more that only that store reads (the folder's a locked marker, Redis's a stream entry), so a
    store takes back only the claims it handed out."""

    job: str
    session_id: str

    @property
    def deliveries(self) -> int:
        """Which delivery of the session this is: 1 for the first worker to take it."""
        ...


class ClaimQueue(Protocol):
    """A worker's source of claims for one job kind (``SessionStore.queue``), open while the
    worker serves (a context manager: the folder's holds an inotify watch)."""

    def __enter__(self) -> ClaimQueue: ...

    def __exit__(self, *_: object) -> None: ...

    def recover(self) -> int:
        """Take back the claims of workers that died or hang; returns how many."""
        ...

    def waiting(self) -> bool:
        """Whether more sessions are known to wait (the batch in hand may not take every core)."""
        ...

    def take(self, limit: int, block: float = 0.0, wake: tuple[int, ...] = ()) -> Sequence[Claim]:
        """Claim up to ``limit`` waiting sessions, waiting up to ``block`` seconds for the first
        (the folder's wait also ends when a ``wake`` descriptor is readable)."""
        ...


class SessionStore(Protocol):
    """The calls both stores answer, speaking only ids, fields and bytes. A store raises
    ``SessionNotFound`` for an id it does not hold (or one that is no session id at all) and
    ``StoreUnavailable`` when it cannot answer now (503: try again)."""

    # -- the portal's side ---------------------------------------------------------------------
    def create(
        self, job: str, model: str, image: bytes, ext: str, filename: str, options: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """Store an upload as a new session and queue it for ``job``'s workers; returns (id, key)."""
        ...

    def state(self, session_id: str) -> dict[str, Any]:
        """The session's fields; a waiting session a worker has taken reads as ``processing``."""
        ...

    def wait(self, session_id: str, timeout: float, changed_from: str | None = None) -> dict[str, Any]:
        """The state once final (or, with ``changed_from``, once it is another), or as it is when
        ``timeout`` runs out; woken by the change, not by polling."""
        ...

    def read_blob(self, session_id: str, name: str) -> bytes:
        """A file of the session (the upload, the annotated image)."""
        ...

    def write_blob(self, session_id: str, name: str, data: bytes) -> None: ...

    def queue_depth(self, job: str, stop_at: int | None = None) -> int:
        """Sessions queued and not yet handed to a worker (counting may stop at ``stop_at``)."""
        ...

    def remove(self, session_id: str, state: dict[str, Any] | None = None) -> bool:
        """Delete a session unless a worker holds it; True if it is gone. ``state``: as the
        caller read it."""
        ...

    # -- the worker's side ---------------------------------------------------------------------
    def queue(self, job: str, watch: bool = True) -> ClaimQueue:
        """A worker's view of ``job``'s queue (``watch``: the folder's inotify watch; job and
        burst mode list the pool instead)."""
        ...

    def claimed_state(self, claim: Claim) -> dict[str, Any]:
        """A claimed session's state (Redis read it with the claim)."""
        ...

    def claimed_upload(self, claim: Claim, name: str) -> bytes:
        """A claimed session's upload (Redis read it with the claim)."""
        ...

    def finish(self, claim: Claim, fields: dict[str, Any], known: dict[str, Any] | None = None) -> bool:
        """Write the session's final ``fields`` and let go of the claim, only while it is still
        this worker's; False (nothing written) if it was taken over or the session is gone.
        ``known``: the state as the caller read it. A write that fails (a full disk) raises."""
        ...

    def drop(self, claim: Claim) -> None:
        """Let go of a claim whose session needs no more work (gone, or final already)."""
        ...

    def release(self, claim: Claim) -> None:
        """Give a claim up without finishing it: a later recovery hands it out again."""
        ...

    def beat(self, job: str, worker: str) -> None:
        """Say that ``worker`` (its ``liveness`` name) serves ``job`` now."""
        ...

    def retire(self, job: str, worker: str) -> None:
        """A worker that stops takes its heartbeat with it."""
        ...

    # -- health, metrics, tests and ``scai clean`` ---------------------------------------------
    def live_workers(self, job: str, within: float) -> int:
        """Workers of ``job`` with a heartbeat at most ``within`` seconds old (and, on this
        machine, a live process)."""
        ...

    def oldest_wait(self, job: str) -> float:
        """Seconds the oldest session not yet handed to a worker has waited; 0 if none."""
        ...

    def pending_claims(self, job: str) -> int:
        """Sessions handed to workers and not yet finished."""
        ...

    def completions(self, session_id: str) -> int:
        """How often a final state was written: 1 for a finished session (exactly once)."""
        ...

    def clean(self, keep_seconds: float) -> tuple[list[str], int]:
        """Remove sessions older than ``keep_seconds``, never one a worker holds; returns
        (removed ids, how many were kept)."""
        ...

    def problem(self) -> str | None:
        """Why uploads cannot be stored now, or None."""
        ...


class JobModeStore(SessionStore, Protocol):
    """What job mode asks beyond the shared calls: slots bounding its processes (a lock the
    portal hands to the process it starts), and the pool taken without a queue. Only the folder
    store answers it: ``open_store`` refuses job mode on Redis, so a job-mode caller's store is
    always one."""

    def take_slot(self, job: str, slots: int, only: int | None = None) -> int | None: ...

    @staticmethod
    def slot_number(fd: int) -> int | None: ...

    def pending(self, job: str) -> list[str]: ...

    def claim(self, job: str, session_id: str) -> Claim | None: ...

    def recover(self, job: str) -> list[str]: ...


def open_store(settings: Settings) -> SessionStore:
    """The store ``settings.store`` names: empty for the session folder, or a Redis URL. Each is
    imported only here, so a process loads only the store it uses (Redis's client library only
    where it is asked for)."""
    url, blobs = settings.store.strip(), settings.blobs.strip()
    if not url:
        if blobs:
            raise ConfigError("SCAI_BLOBS needs a Redis store (SCAI_STORE=redis://...): the folder keeps its own files")
        from scai.store.folder import FolderStore

        return FolderStore(settings.session_dir, settings.claim_lease_seconds)
    if url.startswith(REDIS_SCHEMES):
        if settings.running_mode == "job":
            raise ConfigError("job mode needs the session folder; use runtime mode with a Redis store")
        from scai.store.redis_streams import RedisStore

        return RedisStore(url, settings.keep_seconds, settings.claim_lease_seconds, blobs=blobs)
    raise ConfigError(f"SCAI_STORE must be empty (the session folder) or a redis:// URL, not {url!r}")
