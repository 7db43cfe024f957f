"""``scai clean`` / ``clean.py``: remove old sessions, never one a worker is processing."""

from __future__ import annotations

import logging
from pathlib import Path

from scai.sessions import PROCESSING, SessionNotFound, SessionStore, age_seconds

log = logging.getLogger("scai.clean")

#: A folder without a readable ``process.json`` is a session the portal is creating right now (or
#: the leftover of a crash): it is removed only once it is at least this old, whatever the keep time.
UNFINISHED_GRACE_SECONDS = 3600.0


def clean(root: Path, keep_seconds: float) -> tuple[list[str], int]:
    """Remove sessions older than ``keep_seconds`` with their markers; returns (removed, kept)."""
    store = SessionStore(root)
    removed, kept = [], 0
    for session_id in store.sessions():
        folder = store.path(session_id)
        try:
            state = store.state(session_id)
            keep = keep_seconds
        except (SessionNotFound, ValueError):
            state, keep = {}, max(keep_seconds, UNFINISHED_GRACE_SECONDS)  # judged by the folder's age
        try:
            age = age_seconds(state, folder)
        except FileNotFoundError:
            continue  # removed meanwhile (an answered DeepStack request, another cleaner)
        if age < keep or state.get("state") == PROCESSING:
            kept += 1
        elif store.remove(session_id):
            removed.append(session_id)
        else:
            kept += 1  # a worker holds it right now
    return removed, kept
