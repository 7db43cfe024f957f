"""``scai clean`` / ``clean.py``: remove old sessions, never one a worker is processing."""

from __future__ import annotations

import logging
from pathlib import Path

from scai.sessions import PROCESSING, SessionNotFound, SessionStore, age_seconds

log = logging.getLogger("scai.clean")


def clean(root: Path, keep_seconds: float) -> tuple[list[str], int]:
    """Remove sessions older than ``keep_seconds`` with their markers; returns (removed, kept)."""
    store = SessionStore(root)
    removed, kept = [], 0
    for session_id in store.sessions():
        folder = store.path(session_id)
        try:
            state = store.state(session_id)
        except (SessionNotFound, ValueError):
            state = {}  # no readable process.json: judged by the folder's age
        if age_seconds(state, folder) < keep_seconds or state.get("state") == PROCESSING:
            kept += 1
        elif store.remove(session_id):
            removed.append(session_id)
        else:
            kept += 1  # a worker holds it right now
    return removed, kept
