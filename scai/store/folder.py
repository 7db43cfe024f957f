"""The session folder store: sessions as folders on one file system, shared by the portal, the
workers and ``scai clean`` of one machine (the interface it answers is ``scai.store``'s).

Layout under the session root::

    <root>/<id>/input.<ext>          the upload, named by us, never by the client
    <root>/<id>/process.json         state, job, model, message, result, timestamps
    <root>/<id>/output.png           the annotated image (detection)
    <root>/pool/<job>/<id>           a pending marker: "this session waits for a worker"
    <root>/pool/<job>/.claimed/<id>  a marker a worker has taken
    <root>/pool/<job>/.workers/<who> a live worker's heartbeat (touched every few seconds)
    <root>/pool/<job>/.slots/<n>     job mode: a process runs only while it holds one (flock)

A worker writes ``process.json`` to a temporary name and renames it into place, so a reader never
sees half of it. The portal writes a new session's files in place: nobody reads them before the
marker exists (every file operation counts: on an ext4 disk each costs about 0.1 ms). A worker does not
rewrite ``process.json`` when it starts on a session: the claimed marker already says so, and
``state`` reports such a session as ``processing``.

A worker claims a marker by locking it (``flock``) and renaming it into ``.claimed``; the
lock lives exactly as long as the worker's process, so a marker whose lock can be taken belongs to
a worker that died and goes back to the pool. Two workers never take the same marker: the second
either fails to lock it or finds it already renamed away.

Each claim appends a line naming itself to the marker, so the marker counts its deliveries, as a
Redis stream entry does. A worker that gives a session back on purpose (a full disk, a store
error) takes its line off again; one that dies leaves it. A session whose marker comes back from
``MAX_DELIVERIES`` dead workers is failed ("the image stopped 3 workers") instead of killing a
fourth: one upload cannot take a job kind down. A marker still locked after ``lease`` seconds
belongs to a hung worker (stopped, or stuck in a model): recovery takes it over, appending
``REVOKED``, and the hung worker's ``finish`` finds its line no longer last and writes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scai import liveness
from scai.config import Settings
from scai.errors import SessionNotFound, StorageFull
from scai.files import atomic_write, atomic_write_json, write_json, write_new
from scai.inotify import IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, FolderWatch, session_waits
from scai.store import (
    FINAL_STATES,
    INITIALIZATION,
    MAX_DELIVERIES,
    PROCESSING,
    initial_state,
    is_session_id,
    new_key,
    new_session_id,
    now_iso,
    poisoned,
    settled,
    taken,
)

PROCESS_FILE = "process.json"
POOL = "pool"
CLAIMED = ".claimed"
WORKERS = ".workers"
SLOTS = ".slots"
#: The line a recovery appends to a hung worker's marker when it takes the session over.
REVOKED = b"revoked\n"
#: A hung worker's marker, renamed away while its session goes back to the pool: ``.<id>.revoked``.
REVOKED_SUFFIX = ".revoked"
#: A heartbeat silent this long belongs to a worker that is gone: its file is removed.
FORGET_SECONDS = 3600.0
#: A folder without a readable ``process.json`` is a session the portal is creating right now (or
#: the leftover of a crash): ``clean`` removes it only once it is at least this old, whatever the
#: keep time.
UNFINISHED_GRACE_SECONDS = 3600.0


@dataclass
class FolderClaim:
    """A marker this process holds: the open, locked file keeps other workers away."""

    job: str
    session_id: str
    path: Path
    fd: int
    #: Dropped or released: its descriptor is closed (and its number may belong to another file).
    done: bool = False
    #: The line this claim appended to the marker (None: it could not, on a full disk).
    line: bytes | None = None

    @property
    def deliveries(self) -> int:
        """Which delivery of the session this claim is (1 for the first worker to take it), read
        from the marker when asked: a claim costs one write, nothing more."""
        return 1 if self.line is None else _deliveries(_marker_text(self.fd))


class FolderStore:
    """Paths and operations on one session root; every id is checked before it touches a path.
    ``lease``: seconds after which a claim still locked is a hung worker's (see the module)."""

    def __init__(self, root: Path, lease: float = Settings.default("claim_lease_seconds")) -> None:
        self.root = Path(root)
        self.lease = lease
        self._claims = 0
        self._pools: set[str] = set()  # job kinds whose pool this process has made sure of

    # -- paths -------------------------------------------------------------------------------
    def path(self, session_id: str) -> Path:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        return self.root / session_id

    def pool(self, job: str) -> Path:
        return self.root / POOL / job

    def claimed(self, job: str) -> Path:
        return self.pool(job) / CLAIMED

    def ensure_pool(self, job: str) -> None:
        self.claimed(job).mkdir(parents=True, exist_ok=True)

    # -- the portal's side ---------------------------------------------------------------------
    def create(
        self, job: str, model: str, image: bytes, ext: str, filename: str, options: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """Store an upload as a new session, then queue it; returns (id, key)."""
        session_id, key = new_session_id(), new_key()
        folder = self.path(session_id)
        try:
            folder.mkdir(parents=True)
            self._fill(folder, job, model, image, ext, filename, options, key)
            self.enqueue(job, session_id)
        except OSError as error:  # nothing half-made stays behind: no folder without a marker
            shutil.rmtree(folder, ignore_errors=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server's disk is full: the upload was not stored; try again later") from None
            raise
        return session_id, key

    def _fill(
        self, folder: Path, job: str, model: str, image: bytes, ext: str, filename: str, options: dict | None, key: str
    ) -> None:
        input_name = f"input.{ext}"
        write_new(folder / input_name, image)
        # a new folder: nobody reads it before the marker exists, so no rename needed
        write_json(folder / PROCESS_FILE, initial_state(job, model, input_name, filename, options, key))

    def enqueue(self, job: str, session_id: str) -> None:
        """Drop a pending marker into the pool.

        A marker is empty, so creating it in place is already atomic; a rename would also delay
        the watchers' event (watchdog holds renames back to pair them).
        """
        marker = self.pool(job) / session_id
        if job not in self._pools:  # once a process, not a mkdir on every upload
            self.ensure_pool(job)
            self._pools.add(job)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the pool was removed since (by hand): made again
            self.ensure_pool(job)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)

    def state(self, session_id: str) -> dict[str, Any]:
        """What ``process.json`` says, with a waiting session a worker has claimed as ``processing``
        (its marker is looked for only while it waits)."""
        state = self._stored(session_id)
        if state.get("state") == INITIALIZATION and (self.claimed(state.get("job", "")) / session_id).exists():
            return taken(state)
        return state

    def _stored(self, session_id: str) -> dict[str, Any]:
        """``process.json`` as written (a session a worker has taken still reads as waiting)."""
        try:
            return json.loads((self.path(session_id) / PROCESS_FILE).read_bytes())
        except FileNotFoundError:
            raise SessionNotFound(session_id) from None

    def read_blob(self, session_id: str, name: str) -> bytes:
        """A file of the session (the upload, the annotated image); SessionNotFound if either is gone."""
        try:
            return (self.path(session_id) / _blob_name(name)).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise SessionNotFound(session_id) from None

    def write_blob(self, session_id: str, name: str, data: bytes) -> None:
        try:
            atomic_write(self.path(session_id) / _blob_name(name), data)
        except FileNotFoundError:
            raise SessionNotFound(session_id) from None

    def wait(self, session_id: str, timeout: float, changed_from: str | None = None) -> dict[str, Any]:
        """See ``wait_until_final``."""
        return wait_until_final(self, session_id, timeout, changed_from)

    # -- the worker's side ---------------------------------------------------------------------
    def update(self, session_id: str, known: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Change fields of ``process.json``; only the worker holding the claim calls this.
        ``known`` is the session's state as the caller already read it (saves reading it again)."""
        state = dict(known) if known is not None else self.state(session_id)
        state.update(fields, updated=now_iso())
        try:
            atomic_write_json(self.path(session_id) / PROCESS_FILE, state)
        except FileNotFoundError:  # cleaned away while the worker had it
            raise SessionNotFound(session_id) from None
        return state

    def problem(self) -> str | None:
        """Why uploads cannot be stored now, or None (a full disk: see ``health``)."""
        return None if self.root.is_dir() and os.access(self.root, os.W_OK) else "session folder not writable"

    def pending(self, job: str) -> list[str]:
        """Pending session ids, oldest marker first."""
        try:
            entries = [e for e in os.scandir(self.pool(job)) if is_session_id(e.name) and e.is_file()]
        except FileNotFoundError:
            return []
        return [e.name for e in sorted(entries, key=_mtime_or_zero)]

    # -- workers' heartbeats ---------------------------------------------------------------------
    def beat(self, job: str, worker: str) -> None:
        """Say that ``worker`` (host-pid) serves ``job`` now."""
        folder = self.pool(job) / WORKERS
        path = folder / worker
        try:
            os.utime(path)
        except FileNotFoundError:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.touch()
            except OSError:  # a full disk: the worker still works; health will say it looks gone
                pass

    def retire(self, job: str, worker: str) -> None:
        """A worker that stops takes its heartbeat with it."""
        with suppress(FileNotFoundError):
            os.unlink(self.pool(job) / WORKERS / worker)

    def live_workers(self, job: str, within: float) -> int:
        """Workers of ``job`` alive with a heartbeat at most ``within`` seconds old. A worker of
        this machine is alive only while its process is (see ``liveness``); heartbeats of dead
        workers, and any silent for ``FORGET_SECONDS``, are removed."""
        now, live = time.time(), 0
        try:
            with os.scandir(self.pool(job) / WORKERS) as entries:
                for entry in entries:
                    alive, age = liveness.local_alive(entry.name), now - _mtime_or_zero(entry)
                    if alive is False or age > FORGET_SECONDS:
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                    live += alive is not False and age <= within
        except FileNotFoundError:
            return 0
        return live

    def oldest_wait(self, job: str, look_at: int = 1000) -> float:
        """Seconds the oldest of (up to ``look_at``) waiting sessions has waited; 0 if none."""
        oldest = None
        try:
            with os.scandir(self.pool(job)) as entries:
                for count, entry in enumerate(e for e in entries if is_session_id(e.name)):
                    stamp = _mtime_or_zero(entry)
                    oldest = stamp if oldest is None or (stamp and stamp < oldest) else oldest
                    if count + 1 >= look_at:
                        break
        except FileNotFoundError:
            return 0.0
        return max(0.0, time.time() - oldest) if oldest else 0.0

    def queue_depth(self, job: str, stop_at: int | None = None) -> int:
        """How many sessions wait for a worker (counting stops at ``stop_at``: a full pool is not
        listed whole for every upload)."""
        return _count_markers(self.pool(job), stop_at)

    def holder(self, job: str, session_id: str) -> int | None:
        """The pid of the process whose lock holds a session's claim on this machine, from
        /proc/locks (None: nobody holds it). For fault tests and operators: which worker to look at."""
        try:
            inode = str((self.claimed(job) / session_id).stat().st_ino)
        except (FileNotFoundError, SessionNotFound):
            return None
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == inode:
                return int(fields[4])
        return None

    def pending_claims(self, job: str) -> int:
        """Sessions claimed by workers and not yet finished (markers in ``claimed/``)."""
        return _count_markers(self.claimed(job))

    def claim(self, job: str, session_id: str) -> FolderClaim | None:
        """Take a pending marker for this process, or ``None`` if another worker has it."""
        if not is_session_id(session_id):
            return None
        source = self.pool(job) / session_id
        try:
            fd = _open_marker(source)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            target = self.claimed(job) / session_id
            os.rename(source, target)  # fails if another worker renamed it first
            claim = FolderClaim(job, session_id, target, fd)
            self._sign(claim)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except BaseException:  # no lock may outlive the attempt
            os.close(fd)
            raise
        return claim

    def _sign(self, claim: FolderClaim) -> None:
        """Append this claim's line to its marker and count the deliveries. On a full disk (or a
        marker this process may not write) the claim goes on uncounted and unfenced."""
        self._claims += 1
        line = f"{os.getpid()}.{self._claims} {now_iso()}\n".encode()
        try:
            os.write(claim.fd, line)  # O_APPEND; also restarts the lease (the marker's mtime)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EBADF):
                raise
            return
        claim.line = line

    def owns(self, claim: FolderClaim) -> bool:
        """Whether ``claim`` is still this worker's: no recovery took the session over since
        (its line is the marker's last)."""
        return claim.line is None or _marker_text(claim.fd).endswith(claim.line)

    def take_slot(self, job: str, slots: int, only: int | None = None) -> int | None:
        """Job mode's bound on processes: lock one of ``slots`` slot files of ``job`` (or slot
        ``only``) and return its descriptor (the slot is held until it is closed, or the process
        dies), or None when every slot is held."""
        folder = self.pool(job) / SLOTS
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(slots) if only is None else (only,):
            fd = os.open(folder / str(number), os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        return None

    @staticmethod
    def slot_number(fd: int) -> int | None:
        """Which slot a descriptor from ``take_slot`` (or handed over by the portal) locks."""
        try:
            return int(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        except (OSError, ValueError):
            return None

    def drop(self, claim: FolderClaim) -> None:
        """Drop a marker whose session needs no more work, then let go of its lock (a marker
        taken over meanwhile is the new holder's: left alone)."""
        if self.owns(claim):
            with suppress(FileNotFoundError):
                os.unlink(claim.path)
        self._let_go(claim)

    def finish(self, claim: FolderClaim, fields: dict[str, Any], known: dict[str, Any] | None = None) -> bool:
        """Write a claimed session's final ``fields`` and drop its marker; False if the session
        vanished meanwhile. A write that fails (a full disk) raises, the claim still held."""
        if not self.owns(claim):  # taken over while this worker hung: the new holder writes
            self._let_go(claim)
            return False
        completions = (known or {}).get("completions", 0) + 1  # read under this claim: current
        try:
            self.update(claim.session_id, known, **fields, completions=completions)
            written = True
        except SessionNotFound:
            written = False
        self.drop(claim)
        return written

    def claimed_state(self, claim: FolderClaim) -> dict[str, Any]:
        """A claimed session's state (the Redis store reads it with the claim): the claim is
        this worker's, so a waiting session is ``processing`` without looking for its marker."""
        return taken(self._stored(claim.session_id))

    def claimed_upload(self, claim: FolderClaim, name: str) -> bytes:
        """A claimed session's upload (the Redis store reads it with the claim)."""
        return self.read_blob(claim.session_id, name)

    def completions(self, session_id: str) -> int:
        """How often a final state was written: 1 for every session, or exactly-once failed."""
        return int(self.state(session_id).get("completions", 0))

    def queue(self, job: str, watch: bool = True) -> FolderQueue:
        """A worker's view of ``job``'s pool (see ``FolderQueue``)."""
        return FolderQueue(self, job, watch)

    def release(self, claim: FolderClaim) -> None:
        """Let go of a claim without finishing it: the next ``recover`` returns it to the pool.
        Given back on purpose, it takes its delivery off the count. A claim already let go is
        left alone."""
        if not claim.done and claim.line is not None:
            text = _marker_text(claim.fd)
            if text.endswith(claim.line):  # still this worker's (see ``owns``): its line comes off
                with suppress(OSError):  # uncounted is the worst that can happen
                    os.ftruncate(claim.fd, len(text) - len(claim.line))
        self._let_go(claim)

    def _let_go(self, claim: FolderClaim) -> None:
        if not claim.done:
            claim.done = True
            os.close(claim.fd)

    def recover(self, job: str) -> list[str]:
        """Put markers held by dead workers, or locked past the lease by hung ones, back in the
        pool; returns their ids. A session that stopped ``MAX_DELIVERIES`` workers is failed."""
        recovered = []
        try:
            entries = list(os.scandir(self.claimed(job)))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.endswith(REVOKED_SUFFIX):
                self._settle_takeover(job, entry.name.removesuffix(REVOKED_SUFFIX)[1:])
            if not is_session_id(entry.name):
                continue
            try:
                fd = _open_marker(entry.path)
            except FileNotFoundError:
                continue
            try:
                if self._take_back(job, entry.name, fd):
                    recovered.append(entry.name)
            except FileNotFoundError:
                pass  # finished meanwhile
            finally:
                os.close(fd)
        return recovered

    def _take_back(self, job: str, session_id: str, fd: int) -> bool:
        """Return one claimed marker to the pool if its worker died or hangs; True if returned."""
        path = self.claimed(job) / session_id
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            hung = False
        except BlockingIOError:  # a live worker holds it: within its lease, or hung
            if time.time() - os.fstat(fd).st_mtime < self.lease:
                return False
            try:
                os.write(fd, REVOKED)  # the hung worker's finish writes nothing now
            except OSError:  # a marker this process may not write, a full disk: not now
                return False
            hung = True
        text = _marker_text(fd)
        deliveries = _deliveries(text)
        if deliveries >= MAX_DELIVERIES:
            self._fail_poisoned(session_id, path, deliveries)
            return False
        if hung:  # its lock stays on that file wherever it goes: the pool gets a new one
            os.rename(path, path.with_name(f".{session_id}{REVOKED_SUFFIX}"))
            self._settle_takeover(job, session_id, text)
        else:
            os.rename(path, self.pool(job) / session_id)
        return True

    def _settle_takeover(self, job: str, session_id: str, lines: bytes | None = None) -> None:
        """Put a new marker for a session taken from a hung worker in the pool, then remove the
        hung worker's (also what a recovery does with one left by a takeover that died midway)."""
        revoked = self.claimed(job) / f".{session_id}{REVOKED_SUFFIX}"
        marker, held = self.pool(job) / session_id, self.claimed(job) / session_id
        if is_session_id(session_id) and not marker.exists() and not held.exists():
            with suppress(FileNotFoundError):
                lines = revoked.read_bytes() if lines is None else lines
                atomic_write(marker, lines)
        with suppress(FileNotFoundError):
            os.unlink(revoked)

    def _fail_poisoned(self, session_id: str, marker: Path, deliveries: int) -> None:
        """Fail a session every worker that took it died (or hung) with; never hand it out again."""
        with suppress(SessionNotFound):
            state = self.state(session_id)
            if state.get("state") not in FINAL_STATES:
                self.update(session_id, state, **poisoned(deliveries), completions=state.get("completions", 0) + 1)
        os.unlink(marker)

    # -- cleaning ------------------------------------------------------------------------------
    def clean(self, keep_seconds: float) -> tuple[list[str], int]:
        """Remove sessions older than ``keep_seconds`` with their markers, never one a worker is
        processing; returns (removed, kept)."""
        removed, kept = [], 0
        for session_id in self.sessions():
            folder = self.path(session_id)
            try:
                state = self.state(session_id)
                keep = keep_seconds
            except (SessionNotFound, ValueError):
                state, keep = {}, max(keep_seconds, UNFINISHED_GRACE_SECONDS)  # judged by the folder's age
            try:
                age = age_seconds(state, folder)
            except FileNotFoundError:
                continue  # removed meanwhile (an answered DeepStack request, another cleaner)
            if age < keep or state.get("state") == PROCESSING:
                kept += 1
            elif self.remove(session_id):
                removed.append(session_id)
            else:
                kept += 1  # a worker holds it right now
        return removed, kept

    def sessions(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root) if is_session_id(e.name) and e.is_dir())
        except FileNotFoundError:
            return []

    def is_claimed(self, session_id: str) -> bool:
        return any((self.claimed(job) / session_id).exists() for job in self._jobs())

    def remove(self, session_id: str, state: dict[str, Any] | None = None) -> bool:
        """Delete a session and its pending markers unless a worker holds it; True if removed.

        The pending marker is unlinked first, so no worker can claim the session afterwards;
        the claim check after it catches a worker that took the marker in the meantime.
        ``state``, as the caller read it: a final one needs no claim check (its worker has
        written the result and only has to let go of its marker, which it does gone or not).
        """
        held = (state or {}).get("state") not in FINAL_STATES
        if held and self.is_claimed(session_id):
            return False
        for job in self._jobs():
            with suppress(FileNotFoundError):
                os.unlink(self.pool(job) / session_id)
        if held and self.is_claimed(session_id):
            return False
        shutil.rmtree(self.path(session_id), ignore_errors=True)
        return True

    def _jobs(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.root / POOL) if e.is_dir()]
        except FileNotFoundError:
            return []


class FolderQueue:
    """Where a worker's next sessions come from: the names inotify reports for new markers (a
    claim needs no scan of the pool), or, without a watch (job mode, burst mode), a listing.
    ``recover`` takes back dead workers' markers and lists the pool again."""

    def __init__(self, store: FolderStore, job: str, watch: bool) -> None:
        self.store, self.job = store, job
        self.candidates: deque[str] = deque()
        store.ensure_pool(job)
        # Markers are created in place and closed (IN_CLOSE_WRITE), or renamed back by a recovery
        # (IN_MOVED_TO); a claim renames one away, which needs no wake-up.
        self.watch = FolderWatch(store.pool(job), IN_CLOSE_WRITE | IN_MOVED_TO) if watch else None

    def __enter__(self) -> FolderQueue:
        return self

    def __exit__(self, *_: object) -> None:
        if self.watch is not None:
            self.watch.close()

    def recover(self) -> int:
        recovered = self.store.recover(self.job)
        self.candidates = deque(self.store.pending(self.job))
        return len(recovered)

    def waiting(self) -> bool:
        """Whether more sessions are known to wait (the batch in hand may not take every core)."""
        return bool(self.candidates)

    def take(self, limit: int, block: float = 0.0, wake: tuple[int, ...] = ()) -> list[FolderClaim]:
        """Claim up to ``limit`` waiting sessions, waiting up to ``block`` seconds (or until a
        ``wake`` descriptor is readable) for the first."""
        if self.watch is None:
            if not self.candidates:
                self.candidates.extend(self.store.pending(self.job))
        else:
            if self.watch.overflowed:  # the kernel dropped names: list the pool
                self.watch.overflowed = False
                self.candidates = deque(self.store.pending(self.job))
            self.candidates.extend(self.watch.names(0 if self.candidates else max(0.0, block), also=wake))
        claims: list[FolderClaim] = []
        try:
            while self.candidates and len(claims) < limit:
                claim = self.store.claim(self.job, self.candidates.popleft())
                if claim:
                    claims.append(claim)
        except BaseException:  # let go of what was taken: the next recovery hands it out again
            for claim in claims:
                self.store.release(claim)
            raise
        return claims


def _open_marker(path: Path | str) -> int:
    """A marker opened to be locked and appended to (read only where this process may not write
    it: its claims then go uncounted)."""
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _marker_text(fd: int) -> bytes:
    """A marker's lines: one per delivery, and ``REVOKED`` after each takeover (a few dozen bytes)."""
    return os.pread(fd, 4096, 0)


def _deliveries(text: bytes) -> int:
    return sum(1 for line in text.splitlines(keepends=True) if line != REVOKED)


def _count_markers(folder: Path, stop_at: int | None = None) -> int:
    count = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                count += is_session_id(entry.name)
                if stop_at is not None and count >= stop_at:
                    break
    except FileNotFoundError:
        return 0
    return count


def _blob_name(name: str) -> str:
    """A session file's name as the store made it (``input.jpg``, ``output.png``), never a path."""
    if not name or "/" in name or name.startswith("."):
        raise SessionNotFound(name)
    return name


def _mtime_or_zero(entry: os.DirEntry) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def age_seconds(state: dict[str, Any], folder: Path) -> float:
    """A session's age, from its creation stamp (or the folder's time if the stamp is unreadable)."""
    try:
        created = datetime.fromisoformat(state["created"]).timestamp()
    except (KeyError, TypeError, ValueError):
        created = folder.stat().st_mtime
    return time.time() - created


def wait_until_final(
    store: FolderStore, session_id: str, timeout: float, changed_from: str | None = None
) -> dict[str, Any]:
    """The session's state once it is complete or failed (or, with ``changed_from``, once its state
    is another), or as it is when ``timeout`` runs out.

    Woken by inotify when the worker replaces ``process.json``: no polling interval to wait out.
    """

    if timeout <= 0:
        return store.state(session_id)
    deadline = time.monotonic() + timeout
    waits = session_waits()
    changed = threading.Event()
    watches = [(store.path(session_id), PROCESS_FILE, IN_MOVED_TO)]
    if changed_from is not None:  # a worker taking the session (or giving it back) changes nothing else
        job = store.state(session_id).get("job", "")
        watches.append((store.claimed(job), session_id, IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE))
    held = []
    try:
        for folder, name, mask in watches:
            held.append((waits.watch(folder, name, mask, changed), name))
        while True:
            changed.clear()
            state = store.state(session_id)  # read after the watches start: no change is missed
            remaining = deadline - time.monotonic()
            if settled(state, changed_from) or remaining <= 0:
                return state
            changed.wait(remaining)
    except FileNotFoundError:
        raise SessionNotFound(session_id) from None
    finally:
        for wd, name in held:
            waits.unwatch(wd, name, changed)
