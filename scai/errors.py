"""SCAI's one family of errors a user should see.

Each carries what it means to the two front ends: ``exit_code`` for the command line (which
prints ``scai: <message>`` and exits with it) and ``http_status`` for the portal (which answers
``{"error", "message", "status"}`` with it). Code raises the right class with a message fit for a
user and nothing else translates it. A second built-in base (``ValueError``) keeps callers that
caught the built-in working, as redis-py's ``LockError`` does.

Exit code 2 means "restarting will not help" (a broken configuration): the supervisor stops
restarting a worker that exits with it.
"""

from __future__ import annotations

#: A worker or command that exits with this code would fail again the same way if restarted.
EXIT_CONFIG = 2


class ScaiError(Exception):
    """Something a user can act on; the message says what and why."""

    exit_code = 1
    http_status = 500

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__doc__ or ""


class ConfigError(ScaiError, ValueError):
    """A setting or model section that cannot be used; the message names it."""

    exit_code = EXIT_CONFIG
    http_status = 400


class Unauthorized(ScaiError):
    """An upload or model list without a valid API key, where keys are set (see ``apikeys``)."""

    http_status = 401


class KeyFileUnreadable(ScaiError):
    """The API key file exists but cannot be read: keyed requests are refused until it is fixed."""

    http_status = 503


class BrokenConfig(ConfigError):
    """A model config file that cannot be parsed: the server's fault, not the request's (503)."""

    http_status = 503


class SessionNotFound(ScaiError):
    """No session with that id exists (or it was cleaned away)."""

    http_status = 404


class InvalidImage(ScaiError, ValueError):
    """The bytes are not an image SCAI can read, or not one it accepts."""

    http_status = 400


class ImageTooLarge(InvalidImage):
    """More pixels than the configured limit (a decompression-bomb guard)."""

    http_status = 413


class StorageFull(ScaiError, OSError):
    """The session store's disk is full: nothing was half-written, and it works again once
    space is freed."""

    http_status = 507


class StoreUnavailable(ScaiError):
    """The session store (Redis) or its blob store (S3) does not answer; the request may be
    tried again (Retry-After: such outages are restarts and network blips, seconds long)."""

    http_status = 503
    retry_after = 5


class QueueFull(ScaiError):
    """Too many sessions already wait for a worker of this job kind."""

    http_status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DownloadError(ScaiError):
    """A model file that could not be fetched, or is not the pinned file; nothing was installed."""


class Interrupted(ScaiError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped a command after it cleaned up; it exits with
    128 + the signal's number, as a shell reports a process a signal ended."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class DatasetError(ConfigError):
    """A training or evaluation folder that cannot be used."""


class RenderError(ConfigError):
    """Deployment files that cannot be rendered from the given options."""


class LabelMapError(ConfigError):
    """A label map that cannot be read; the message says where."""
