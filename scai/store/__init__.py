"""Where sessions live: the session folder (``scai.sessions``, the default, one machine) or Redis
Streams (``redis_streams``, several machines), chosen by ``SCAI_STORE`` / ``--store``.

Both answer the same calls, speaking only ids and bytes: ``create``, ``state``, ``wait``,
``read_blob``/``write_blob``, ``queue(job)`` (a worker's ``take``/``recover``/``waiting``),
``finish`` (False when the claim was lost: nothing written), ``drop``, ``release``,
``beat``/``retire``/``live_workers``, ``queue_depth``, ``oldest_wait``, ``healthy``.
"""

from __future__ import annotations

from typing import Any

from scai.config import Settings
from scai.errors import ConfigError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(settings: Settings) -> Any:
    """The store ``settings.store`` names: empty for the session folder, or a Redis URL."""
    url = settings.store.strip()
    if not url:
        from scai.sessions import SessionStore

        return SessionStore(settings.session_dir, settings.claim_lease_seconds)
    if url.startswith(REDIS_SCHEMES):
        if settings.running_mode == "job":
            raise ConfigError("job mode needs the session folder; use runtime mode with a Redis store")
        from scai.store.redis_streams import RedisStore

        return RedisStore(url, settings.keep_seconds, settings.claim_lease_seconds)
    raise ConfigError(f"SCAI_STORE must be empty (the session folder) or a redis:// URL, not {url!r}")
