"""inotify without polling (Linux): a worker's watch on its pool, and the portal's session waits.

Two costs shaped this module. A watchdog observer runs threads and holds every rename event back
for its 0.5 s move-pairing delay; a bare descriptor and ``select`` wake within microseconds. And
closing an inotify descriptor waits for the kernel to retire its marks (about 8 ms, measured), so
the portal never closes one per request: each process keeps one descriptor for all its waits
(``SessionWaits``) and only adds and removes watches, which is cheap.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE_SELF, IN_IGNORED = 0x08, 0x80, 0x100, 0x400, 0x8000
IN_Q_OVERFLOW, IN_MOVED_FROM, IN_DELETE = 0x4000, 0x40, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
#: A file created, written and closed, or renamed in: every way a session's files change.
CHANGES = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(None, use_errno=True)


def _new_descriptor() -> int:
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    return fd


def _add_watch(fd: int, folder: Path, mask: int) -> int:
    wd = _libc.inotify_add_watch(fd, os.fsencode(folder), mask)
    if wd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(folder))
    return wd


def read_events(fd: int) -> list[tuple[int, int, str]]:
    """Every queued event as (watch, mask, name), without blocking."""
    events = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return events
        offset = 0
        while offset < len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset : offset + length].rstrip(b"\0").decode("utf-8", "replace")
            offset += length
            events.append((wd, mask, name))


class FolderWatch:
    """Names of the files created, written or renamed into one folder; for a worker's pool."""

    def __init__(self, folder: Path, mask: int = CHANGES) -> None:
        #: Set when the kernel's event queue overflowed: names were lost, the folder needs a rescan.
        self.overflowed = False
        self.fd = _new_descriptor()
        try:
            _add_watch(self.fd, folder, mask)
        except OSError:
            os.close(self.fd)
            raise

    def names(self, timeout: float, also: tuple[int, ...] = ()) -> list[str]:
        """Names changed within ``timeout`` seconds (all queued ones, at once when some are);
        a readable descriptor in ``also`` ends the wait early (a stop request)."""
        ready, _, _ = select.select([self.fd, *also], [], [], max(timeout, 0))
        if not ready:
            return []
        events = read_events(self.fd)
        self.overflowed = self.overflowed or any(mask & IN_Q_OVERFLOW for _, mask, _ in events)
        return [name for _, mask, name in events if name and not mask & IN_IGNORED]

    def wait(self, timeout: float) -> bool:
        """True if something changed within ``timeout`` seconds (events are drained)."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if ready:
            read_events(self.fd)
        return bool(ready)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SessionWaits:
    """One inotify descriptor per process, shared by every request waiting on a session.

    A waiter names a folder and a file in it; a thread reads the events and wakes the waiters of
    that name in that folder (a worker renaming a session's ``process.json`` into place, or its
    claim marker in or out of the claimed folder), and every waiter of a folder that is deleted.
    Other files wake nobody. Watches are counted: the last waiter of a folder removes its watch.
    """

    def __init__(self) -> None:
        self.fd = _new_descriptor()
        self.lock = threading.Lock()
        self.waiters: dict[int, dict[str, set[threading.Event]]] = {}
        threading.Thread(target=self._dispatch, name="scai-session-waits", daemon=True).start()

    def watch(self, folder: Path, name: str, mask: int, event: threading.Event) -> int:
        """Set ``event`` on each change of ``name`` in ``folder`` until ``unwatch``; a folder is
        always watched with the same ``mask`` (a new mask replaces the old one)."""
        with self.lock:
            wd = _add_watch(self.fd, folder, mask | IN_DELETE_SELF)
            self.waiters.setdefault(wd, {}).setdefault(name, set()).add(event)
        return wd

    def unwatch(self, wd: int, name: str, event: threading.Event) -> None:
        with self.lock:
            names = self.waiters.get(wd)
            if names is None:
                return
            names.get(name, set()).discard(event)
            if not names.get(name, True):
                del names[name]
            if not names:
                del self.waiters[wd]
                _libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if the folder is gone

    def _dispatch(self) -> None:
        while True:
            select.select([self.fd], [], [])
            events = read_events(self.fd)
            with self.lock:
                for wd, mask, name in events:
                    if mask & IN_Q_OVERFLOW:  # events were lost: every waiter looks again
                        self._wake(
                            event for names in self.waiters.values() for group in names.values() for event in group
                        )
                    elif mask & IN_IGNORED:  # the folder is gone: the kernel dropped the watch
                        self._wake(event for group in self.waiters.pop(wd, {}).values() for event in group)
                    else:
                        self._wake(self.waiters.get(wd, {}).get(name, ()))

    @staticmethod
    def _wake(events: Iterable[threading.Event]) -> None:
        for event in list(events):
            event.set()


_shared: tuple[int, SessionWaits] | None = None
_shared_lock = threading.Lock()


def session_waits() -> SessionWaits:
    """This process's ``SessionWaits``, made on first use (after uwsgi has forked the process)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), SessionWaits())
        return _shared[1]
