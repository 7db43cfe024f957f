"""A one-folder inotify watch for waiting on a session without polling (Linux).

The portal's synchronous ``wait=`` needs one event: "process.json was replaced". A watchdog
observer per request would start a thread and, worse, hold every rename event back for its
0.5 s move-pairing delay; a bare inotify descriptor and ``select`` wake within microseconds.
"""

from __future__ import annotations

import ctypes
import os
import select
from pathlib import Path

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x08, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

_libc = ctypes.CDLL(None, use_errno=True)


class FolderWatch:
    """Wakes ``wait`` when a file in ``folder`` is created, written and closed, or renamed in."""

    def __init__(self, folder: Path) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if _libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            error = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(error, os.strerror(error), str(folder))

    def wait(self, timeout: float) -> bool:
        """True if something changed within ``timeout`` seconds (events are drained)."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass
        return bool(ready)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
