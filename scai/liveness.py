"""Telling a live worker from a dead one by its name.

A worker's heartbeat is named ``host-pid-start-place``: its host name (for people), its process
id, the tick its process started at (``/proc/<pid>/stat``, so a recycled pid is not mistaken for
it) and a short digest of the kernel's boot id and the process's pid namespace (where that pid
means that process). Whoever shares the place checks the process itself: a worker killed a moment
ago is dead now, not when its heartbeat goes stale (``/healthz`` counted killed workers beside
their replacements for seconds). Workers elsewhere, on other hosts or in other containers, are
judged by the age of their heartbeat alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path


def _start_tick(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    return None if fields[0] in ("Z", "X") else fields[19]


@functools.cache
def _place() -> str:
    """This process's kernel boot and pid namespace, as 8 hex digits."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:8]


def own_name() -> str:
    """The heartbeat name of this process."""
    return f"{socket.gethostname()}-{os.getpid()}-{_start_tick(os.getpid())}-{_place()}"


def local_alive(name: str) -> bool | None:
    """True or False for a worker of this place (by its process), None for any other name (a
    worker elsewhere, or an older name without pid and start): its heartbeat's age decides."""
    parts = name.rsplit("-", 3)
    if len(parts) != 4 or parts[3] != _place() or _place() == "unknown" or not parts[1].isdigit():
        return None
    return _start_tick(int(parts[1])) == parts[2]
