"""Sessions in Redis (or Valkey), for portals and workers on several machines.

The folder store's protocol (flock, rename, inotify) holds only on one file system. Here the same
contract rests on Redis 6.2-level commands, used directly through redis-py:

    scai:session:<id>             a hash: ``state`` (process.json's JSON), ``completions`` (count)
    scai:session:<id>:blob:<name> the upload and other files of the session (in S3 instead, with
                                  ``SCAI_BLOBS``: ``scai.store.s3``)
    scai:session:<id>:events      a pub/sub channel: "the state changed"
    scai:pool:<job>               a stream, one entry per queued session; consumer group ``workers``
    scai:workers:<job>            a sorted set: worker name -> last heartbeat (unix time)

Every session key expires with the session (``keep_seconds``), so Redis cleans itself; `clean`
removes what is older than a shorter keep time. A worker claims entries with XREADGROUP (COUNT N,
BLOCK); it completes one through a Lua fence that writes the result, publishes the change and
XACKs and XDELs the entry only if this consumer still owns it, so a worker that stalled and lost
its entry to a recovery cannot complete it a second time. Recovery is XAUTOCLAIM past
``lease_seconds`` of idleness (longer than the slowest batch or model load); an entry delivered
more than ``MAX_DELIVERIES`` times fails its session (an image that kills every worker). A wait
subscribes before it reads the state, so no change is missed. Job streams are never trimmed
(no MAXLEN): the server must run with ``maxmemory-policy noeviction``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from scai import liveness
from scai.files import json_bytes
from scai.store import (
    MAX_DELIVERIES,
    PROCESSING,
    SessionNotFound,
    StoreUnavailable,
    initial_state,
    is_session_id,
    new_key,
    new_session_id,
    now_iso,
    poisoned,
    settled,
    taken,
)

log = logging.getLogger("scai.store")

GROUP = "workers"
#: A Redis that does not answer (down, or cut off: packets dropped, not refused) fails a call
#: within CONNECT or READ seconds, never retried after a timeout (measured with a portal cut off
#: from Redis: a retry after the timeout held clients 9.3 s instead of 5.4): the portal answers
#: 503 and a worker waits and tries again, rather than hanging until TCP gives up. READ is above
#: the longest blocking read (a worker's XREADGROUP waits up to its heartbeat, 2 s). Connections
#: idle past HEALTH_CHECK are pinged before use: one broken while the network was away is replaced.
CONNECT_SECONDS, READ_SECONDS, HEALTH_CHECK_SECONDS = 2.0, 5.0, 15
#: Blob reads a worker makes at once for a batch (the worker's batch is at most 8 by default).
PREFETCH_THREADS = 8
#: The key ``problem`` writes to find out whether Redis takes writes.
HEALTH_KEY = "scai:health"
#: A worker (heartbeat, stream consumer) silent this long is forgotten.
FORGET_SECONDS = 3600.0


#: KEYS: stream, session hash, events channel. ARGV: group, entry id, consumer, state JSON.
#: Writes the final state only while ``consumer`` owns the entry; returns 1 if it did, 0 if the
#: entry is another's, 2 if the session is gone (the entry is dropped, nothing written).
FENCE = """
local owner = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #owner == 0 or owner[1][2] ~= ARGV[3] then
    return 0
end
local written = 2
if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HSET', KEYS[2], 'state', ARGV[4])
    redis.call('HINCRBY', KEYS[2], 'completions', 1)
    redis.call('PUBLISH', KEYS[3], 'final')
    written = 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return written
"""


class RedisBlobs:
    """A session's files (the upload, the annotated image) in Redis, expiring with the session.
    The seam for another blob store (``scai.store.s3.S3Blobs`` answers the same calls): ``inline``
    says these calls may ride the store's own transactions and pipelines (``pipe``)."""

    inline = True

    def __init__(self, client: redis.Redis, keep_seconds: int, session_key: Callable[[str], str]) -> None:
        """``session_key``: the store's own name for a session's hash; its files sit beside it."""
        self.redis, self.keep, self.session_key = client, keep_seconds, session_key

    def key(self, session_id: str, name: str) -> str:
        return f"{self.session_key(session_id)}:blob:{name}"

    def get(self, session_id: str, name: str, pipe: Any = None) -> bytes | None:
        """The file's bytes (None if absent); ``pipe``: queued in the claim's round trip."""
        return (pipe or self.redis).get(self.key(session_id, name))

    def put(self, session_id: str, name: str, data: bytes, pipe: Any = None) -> None:
        """Stored with the session's lifetime; ``pipe``: inside the transaction that creates it."""
        (pipe or self.redis).set(self.key(session_id, name), data, ex=self.keep)

    def delete(self, session_id: str, names: list[str]) -> None:
        """Delete the session's named files (the names its state records: no scan of the keyspace)."""
        if names:
            self.redis.delete(*(self.key(session_id, name) for name in names))

    def sweep(self, older_than_seconds: float) -> int:
        """Nothing to do: each file expires with its session."""
        return 0

    def problem(self) -> str | None:
        return None


#: A wait looks at its session again at least this often, should a message have been lost while
#: the subscription reconnected.
SAFETY_NET_SECONDS = 5.0


class SessionEvents:
    """One pattern subscription (PSUBSCRIBE) shared by every wait of a process, read by one
    thread that wakes the waits on the session that changed. Subscribing per wait costs a
    connection and two round trips; this costs a dictionary entry."""

    def __init__(self, client: redis.Redis, pattern: str) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[bytes, set[threading.Event]] = {}
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(pattern)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # subscribed before any wait reads a state
            message = self.pubsub.get_message(timeout=1.0)
            if message and message["type"] == "psubscribe":
                break
        self.thread = threading.Thread(target=self._listen, name="scai-session-events", daemon=True)
        self.thread.start()

    def watch(self, channel: bytes) -> threading.Event:
        event = threading.Event()
        with self.lock:
            self.waiters.setdefault(channel, set()).add(event)
        return event

    def unwatch(self, channel: bytes, event: threading.Event) -> None:
        with self.lock:
            events = self.waiters.get(channel)
            if events is not None:
                events.discard(event)
                if not events:
                    del self.waiters[channel]

    def _listen(self) -> None:
        while True:
            try:
                message = self.pubsub.get_message(timeout=1.0)
            except redis.RedisError:  # the server went away or stalls: every wait looks again; reconnect
                self._wake_all()
                time.sleep(0.5)
                continue
            except (ValueError, AttributeError, OSError):  # the client was closed: nothing to listen to
                self._wake_all()
                return
            if message and message["type"] == "pmessage":
                with self.lock:
                    events = list(self.waiters.get(message["channel"], ()))
                for event in events:
                    event.set()

    def _wake_all(self) -> None:
        with self.lock:
            events = [event for events in self.waiters.values() for event in events]
        for event in events:
            event.set()


#: KEYS: session hash, events channel. Marks a session taken (never recreating an expired one)
#: and returns its state JSON (nil if it is gone), saving the worker a round trip to read it.
MARK = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then
    redis.call('HSET', KEYS[1], 'phase', 'processing')
    redis.call('PUBLISH', KEYS[2], 'processing')
end
return state
"""


@dataclass
class StreamClaim:
    """A session a worker took from its job's stream, with its state and upload as they were
    read in the claim's round trip (None: read them when needed, as after a recovery)."""

    job: str
    session_id: str
    entry: str
    deliveries: int = 1
    input: str | None = None
    state: dict[str, Any] | None = None
    upload: bytes | None = None


def _as_state(raw: bytes, processing: bool) -> dict[str, Any]:
    """process.json's fields from the session hash; a waiting session a worker has taken
    (``processing``) reads as processing."""
    state = json.loads(raw)
    return taken(state) if processing else state


def _waiting(length: int, pending: dict[str, Any]) -> int:
    """Sessions waiting in a stream, from its length and its pending summary (``_count_waiting``)."""
    return max(0, int(length) - int(pending["pending"]))


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RedisStore:
    """The session store on one Redis database; ``prefix`` keeps several installations apart."""

    def __init__(
        self, url: str, keep_seconds: float, lease_seconds: float = 60.0, prefix: str = "scai:", blobs: str = ""
    ) -> None:
        """``blobs``: an ``s3://`` URL for the files (``scai.store.s3``), else they stay in Redis."""
        self.redis = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_SECONDS, socket_timeout=READ_SECONDS,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )  # fmt: skip
        self.keep = max(1, int(keep_seconds))
        self.lease_ms = int(lease_seconds * 1000)
        self.prefix = prefix
        self.consumer = consumer_name()
        if blobs:
            from scai.store.s3 import S3Blobs

            self.blobs: RedisBlobs | S3Blobs = S3Blobs(blobs)
        else:
            self.blobs = RedisBlobs(self.redis, self.keep, self._session)
        self._fence = self.redis.register_script(FENCE)
        self._mark = self.redis.register_script(MARK)
        self._groups: set[str] = set()
        self._events_lock = threading.Lock()
        self._events_listener: SessionEvents | None = None
        self._readers: ThreadPoolExecutor | None = None

    # -- names ---------------------------------------------------------------------------------
    def _session(self, session_id: str) -> str:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        return f"{self.prefix}session:{session_id}"

    def _events(self, session_id: str) -> str:
        return f"{self._session(session_id)}:events"

    def _pool(self, job: str) -> str:
        return f"{self.prefix}pool:{job}"

    def _workers(self, job: str) -> str:
        """The sorted set of ``job``'s workers by their last heartbeat."""
        return f"{self.prefix}workers:{job}"

    def _ensure_group(self, job: str) -> None:
        if job not in self._groups:
            try:
                self._run(self.redis.xgroup_create, self._pool(job), GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
            self._groups.add(job)

    # -- the portal's side ---------------------------------------------------------------------
    def create(
        self, job: str, model: str, image: bytes, ext: str, filename: str, options: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """Store an upload as a new session and queue it, in one transaction; returns (id, key)."""
        session_id, key = new_session_id(), new_key()
        state = initial_state(job, model, f"input.{ext}", filename, options, key)
        self._ensure_group(job)
        if not self.blobs.inline:  # stored before the session is queued: no worker finds it missing
            self.blobs.put(session_id, state["input"], image)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._session(session_id), mapping={"state": json_bytes(state), "completions": 0})
            pipe.expire(self._session(session_id), self.keep)
            if self.blobs.inline:
                self.blobs.put(session_id, state["input"], image, pipe)
            pipe.xadd(self._pool(job), {"id": session_id, "input": state["input"]})
            self._run(pipe.execute)
        return session_id, key

    def state(self, session_id: str) -> dict[str, Any]:
        """process.json's fields; a waiting session a worker has taken reads as ``processing``
        (the worker marks ``phase`` rather than rewriting the state, as the folder's claim marker)."""
        raw, phase = self._run(self.redis.hmget, self._session(session_id), ["state", "phase"])
        if raw is None:
            raise SessionNotFound(session_id)
        return _as_state(raw, processing=phase == b"processing")

    def read_blob(self, session_id: str, name: str) -> bytes:
        self._session(session_id)  # a malformed id is not found, before any lookup
        data = self._run(self.blobs.get, session_id, name)
        if data is None:
            raise SessionNotFound(session_id)
        return data

    def write_blob(self, session_id: str, name: str, data: bytes) -> None:
        self._session(session_id)
        self._run(self.blobs.put, session_id, name, data)

    def wait(self, session_id: str, timeout: float, changed_from: str | None = None) -> dict[str, Any]:
        """The state once final (or, with ``changed_from``, different), or as it is at the deadline.
        Subscribed before the state is read: a change between the two still wakes the wait."""
        if timeout <= 0:
            return self.state(session_id)
        deadline = time.monotonic() + timeout
        channel = self._events(session_id).encode()
        changed = self._run(self._session_events).watch(channel)  # a Redis that is down: 503, not 500
        try:
            while True:
                changed.clear()
                state = self.state(session_id)  # read after the watch starts: no change is missed
                remaining = deadline - time.monotonic()
                if settled(state, changed_from) or remaining <= 0:
                    return state
                changed.wait(min(remaining, SAFETY_NET_SECONDS))
        finally:
            self._session_events().unwatch(channel, changed)

    def _session_events(self) -> SessionEvents:
        """This process's one subscription to every session's channel, made on first use (after
        uwsgi forked its workers)."""
        with self._events_lock:
            if self._events_listener is None or not self._events_listener.thread.is_alive():
                self._events_listener = SessionEvents(self.redis, f"{self.prefix}session:*:events")
            return self._events_listener

    # -- the worker's side ---------------------------------------------------------------------
    def claim(self, job: str, limit: int, block_seconds: float = 0) -> list[StreamClaim]:
        """Up to ``limit`` new sessions of ``job`` for this worker, waiting up to ``block_seconds``
        for the first; each is marked ``processing``."""
        return self.claim_counted(job, limit, block_seconds)[0]

    def claim_counted(self, job: str, limit: int, block_seconds: float = 0) -> tuple[list[StreamClaim], int]:
        """``claim``, and how many sessions still wait after it. The count comes in the same round
        trip as the read: it tells the worker whether its batch may take every core (a worker
        that thought itself alone under load ran as many threads as there are cores, beside a
        sibling that did the same)."""
        self._ensure_group(job)
        pool = self._pool(job)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xreadgroup(GROUP, self.consumer, {pool: ">"}, limit)
            self._count_waiting(pipe, job)
            reply, *counts = self._run(pipe.execute)
        waiting = _waiting(*counts)
        if not reply and block_seconds > 0:  # none yet: wait for the first (BLOCK 0 is forever)
            block = max(1, math.ceil(block_seconds * 1000))
            reply, waiting = self._run(self.redis.xreadgroup, GROUP, self.consumer, {pool: ">"}, limit, block), 0
        claims = [
            StreamClaim(job, fields[b"id"].decode(), entry.decode(), input=_text(fields.get(b"input")))
            for _, entries in reply or []
            for entry, fields in entries
        ]
        if claims:
            self.mark_processing(claims)
        return claims, waiting

    def mark_processing(self, claims: list[StreamClaim]) -> None:
        """Say that these sessions are being worked on, and read their states and uploads, in one
        round trip for the batch."""
        inline = self.blobs.inline  # else each upload is read when its turn comes (claimed_upload)
        with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                self._mark(keys=[self._session(claim.session_id), self._events(claim.session_id)], client=pipe)
                if claim.input and inline:
                    self.blobs.get(claim.session_id, claim.input, pipe)
            replies = iter(self._run(pipe.execute))
        for claim in claims:
            raw, claim.upload = next(replies), next(replies) if claim.input and inline else None
            try:
                claim.state = _as_state(raw, processing=True) if raw is not None else None
            except (ValueError, TypeError, AttributeError):  # read again by the worker, which fails it alone
                claim.state = None
        if not inline:
            self._prefetch([claim for claim in claims if claim.input and claim.state is not None])

    def _prefetch(self, claims: list[StreamClaim]) -> None:
        """A batch's uploads from the blob store at once, not one round trip after another (a
        burst through one worker with S3: 374 -> 576 items/s); one that fails is read again, and
        fails then, when its turn comes."""
        if len(claims) < 2:
            return
        if self._readers is None:
            self._readers = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="scai-blob-read")

        def read(claim: StreamClaim) -> bytes | None:
            try:
                return self.blobs.get(claim.session_id, str(claim.input))
            except StoreUnavailable:
                return None

        for claim, upload in zip(claims, self._readers.map(read, claims), strict=True):
            claim.upload = upload

    def claimed_state(self, claim: StreamClaim) -> dict[str, Any]:
        """A claimed session's state: as the claim read it, else read now."""
        return claim.state if claim.state is not None else self.state(claim.session_id)

    def claimed_upload(self, claim: StreamClaim, name: str) -> bytes:
        """A claimed session's upload: as the claim read it (handed over once), else read now."""
        upload, claim.upload = claim.upload, None
        return upload if upload is not None and name == claim.input else self.read_blob(claim.session_id, name)

    def finish(self, claim: StreamClaim, fields: dict[str, Any], known: dict[str, Any] | None = None) -> bool:
        """Write the session's final ``fields`` and drop its entry, if this worker still owns
        it; False (nothing written) if a recovery gave it to another worker meanwhile.
        ``known``: the state as the caller read it (saves reading it again)."""
        try:
            state = known if known is not None else self.state(claim.session_id)
        except SessionNotFound:
            state = {}
        except ValueError:  # an unreadable state: the final fields alone replace it
            state = {}
        payload = json_bytes({**state, **fields, "updated": now_iso()})
        keys = [self._pool(claim.job), self._session(claim.session_id), self._events(claim.session_id)]
        return self._run(self._fence, keys=keys, args=[GROUP, claim.entry, self.consumer, payload]) == 1

    def drop(self, claim: StreamClaim) -> None:
        """An entry whose session needs no more work (gone, or final already)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._pool(claim.job), GROUP, claim.entry)
            pipe.xdel(self._pool(claim.job), claim.entry)
            self._run(pipe.execute)

    def release(self, claim: StreamClaim) -> None:
        """Give a claim up without finishing it: it stays pending, and a recovery hands it out
        again once it has been idle for the lease."""

    def queue(self, job: str, watch: bool = True) -> StreamQueue:
        """A worker's view of ``job``'s stream (see ``StreamQueue``); ``watch`` is the folder's."""
        return StreamQueue(self, job)

    def recover(self, job: str, count: int = 8) -> list[StreamClaim]:
        """Take over up to ``count`` entries of workers idle for longer than the lease (they died
        or hang): no more than this worker runs before its next recovery, so none of them sits
        here past the lease and is taken over again. An entry delivered more than
        ``MAX_DELIVERIES`` times fails its session instead."""
        self._ensure_group(job)
        reply = self._run(self.redis.xautoclaim, self._pool(job), GROUP, self.consumer, self.lease_ms, "0-0", count)
        claims = [
            StreamClaim(job, fields[b"id"].decode(), entry.decode()) for entry, fields in reply[1] if fields is not None
        ]
        for claim in claims:
            detail = self._run(self.redis.xpending_range, self._pool(job), GROUP, claim.entry, claim.entry, 1)
            claim.deliveries = detail[0]["times_delivered"] if detail else 1
        self._forget_consumers(job)
        stopped = [c for c in claims if c.deliveries > MAX_DELIVERIES]
        for claim in stopped:
            self.finish(claim, poisoned(claim.deliveries))
        return [c for c in claims if c not in stopped]

    def beat(self, job: str, worker: str) -> None:
        """Say that ``worker`` serves ``job`` now; forget workers silent for ``FORGET_SECONDS``
        (each restart is a new name: killed workers would pile up)."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._workers(job), {worker: now})
            pipe.zremrangebyscore(self._workers(job), "-inf", now - FORGET_SECONDS)
            self._run(pipe.execute)

    def _forget_consumers(self, job: str) -> None:
        """Delete consumers that hold nothing and were idle ``FORGET_SECONDS`` (dead workers)."""
        for consumer in self._run(self.redis.xinfo_consumers, self._pool(job), GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > FORGET_SECONDS * 1000:
                self._run(self.redis.xgroup_delconsumer, self._pool(job), GROUP, consumer["name"])

    def retire(self, job: str, worker: str) -> None:
        self._run(self.redis.zrem, self._workers(job), worker)

    def live_workers(self, job: str, within: float) -> int:
        """Workers with a heartbeat at most ``within`` seconds old; those of this machine only
        while their process lives (see ``liveness``): a dead one's heartbeat is removed."""
        names = self._run(self.redis.zrangebyscore, self._workers(job), time.time() - within, "+inf")
        dead = [name for name in names if liveness.local_alive(name.decode()) is False]
        if dead:
            self._run(self.redis.zrem, self._workers(job), *dead)
        return len(names) - len(dead)

    def queue_depth(self, job: str, stop_at: int | None = None) -> int:
        """Sessions queued and not yet handed to a worker (``stop_at``: the folder's; Redis
        counts in constant time)."""
        self._ensure_group(job)
        with self.redis.pipeline(transaction=False) as pipe:
            self._count_waiting(pipe, job)
            return _waiting(*self._run(pipe.execute))

    def _count_waiting(self, pipe: Any, job: str) -> None:
        """Queue on ``pipe`` the two reads ``_waiting`` turns into how many sessions wait: entries
        leave the stream when finished, so what is in it and not pending waits (XINFO's ``lag``
        would say so too, but only from Redis 7)."""
        pipe.xlen(self._pool(job))
        pipe.xpending(self._pool(job), GROUP)

    def oldest_wait(self, job: str) -> float:
        """Seconds the oldest session not yet handed to a worker has waited; 0 if none."""
        after = self._group(job).get("last-delivered-id") or b"0-0"
        after = after.decode() if isinstance(after, bytes) else after
        entries = self._run(self.redis.xrange, self._pool(job), f"({after}", "+", 1)
        if not entries:
            return 0.0
        millis = int(entries[0][0].decode().split("-")[0])
        return max(0.0, time.time() - millis / 1000)

    def _group(self, job: str) -> dict[str, Any]:
        self._ensure_group(job)
        groups = self._run(self.redis.xinfo_groups, self._pool(job))
        return next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), {})

    def pending_claims(self, job: str) -> int:
        """Entries handed to workers and not yet finished (the pending entries list)."""
        self._ensure_group(job)
        return int(self._run(self.redis.xpending, self._pool(job), GROUP)["pending"])

    def completions(self, session_id: str) -> int:
        """How often the fence completed this session (the scale-out test counts on it)."""
        return int(self._run(self.redis.hget, self._session(session_id), "completions") or 0)

    def clean(self, keep_seconds: float) -> tuple[list[str], int]:
        """Remove sessions older than ``keep_seconds`` (sooner than their expiry), never one a
        worker is processing; returns (removed, kept). Their stream entries, if still queued, are
        let go by the worker that takes them (the session is gone)."""
        removed, kept = [], 0
        marker = f"{self.prefix}session:"
        for key in self._run(lambda: list(self.redis.scan_iter(match=f"{marker}*", count=500))):
            session_id = key.decode()[len(marker) :]
            if not is_session_id(session_id):
                continue  # a blob or an events key
            try:
                state = self.state(session_id)
            except SessionNotFound:
                continue
            created = datetime.fromisoformat(state.get("created", now_iso())).timestamp()
            if time.time() - created < keep_seconds or not self.remove(session_id, state):
                kept += 1
                continue
            removed.append(session_id)
        swept = self._run(self.blobs.sweep, keep_seconds)  # files whose sessions Redis expired
        if swept:
            log.info("removed %d files of expired sessions from the blob store", swept)
        return removed, kept

    def remove(self, session_id: str, state: dict[str, Any] | None = None) -> bool:
        """Delete a session and its files now, unless a worker is processing it; True if it is gone."""
        try:
            state = state if state is not None else self.state(session_id)
        except SessionNotFound:
            return True
        if state.get("state") == PROCESSING:
            return False
        names = [str(state[field]) for field in ("input", "result_image") if state.get(field)]
        self._run(self.blobs.delete, session_id, names)
        self._run(self.redis.delete, self._session(session_id))
        return True

    def healthy(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why uploads cannot be stored now, or None. A write, not a PING: a Redis out of
        memory still answers PING while it refuses every upload."""
        try:
            self.redis.set(HEALTH_KEY, b"1", ex=60)
        except (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError):
            return "session store refuses writes (out of memory or read-only)"
        except redis.RedisError:
            return "session store does not answer"
        return self.blobs.problem()

    def _run(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """A Redis call whose connection failures become ``StoreUnavailable`` (503, retry). Its
        message reaches clients, so it names no address, command or key: the log has those."""
        try:
            return call(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise unavailable("it does not answer", error) from None
        except (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError) as error:
            raise unavailable("it refuses writes", error) from None
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self._groups.clear()  # Redis lost the stream (restarted empty, flushed): make it again
            raise unavailable("it lost its queue", error) from None


def unavailable(why: str, error: redis.RedisError) -> StoreUnavailable:
    """``StoreUnavailable`` for a client, the Redis error's text (address, command, key) in the log."""
    log.warning("the session store is unavailable: %s", error)
    return StoreUnavailable(f"the session store is unavailable ({why}); try again shortly")


class StreamQueue:
    """Where a worker's next sessions come from: entries it recovered from dead workers first,
    then new ones (XREADGROUP, blocking up to the time the worker's loop can wait)."""

    def __init__(self, store: RedisStore, job: str) -> None:
        self.store, self.job = store, job
        self.backlog: deque[StreamClaim] = deque()
        #: Sessions still in the stream after the last read (see ``RedisStore.claim``).
        self.queued = 0

    def __enter__(self) -> StreamQueue:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def recover(self) -> int:
        if self.backlog:  # what was taken over last time comes first; those entries stay ours
            return 0
        recovered = self.store.recover(self.job)
        self.backlog.extend(recovered)
        return len(recovered)

    def waiting(self) -> bool:
        return bool(self.backlog) or self.queued > 0

    def take(self, limit: int, block: float = 0.0, wake: tuple[int, ...] = ()) -> list[StreamClaim]:
        if self.backlog:
            return [self.backlog.popleft() for _ in range(min(limit, len(self.backlog)))]
        claims, self.queued = self.store.claim_counted(self.job, limit, block)
        return claims
