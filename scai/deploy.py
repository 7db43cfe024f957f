"""``scai deploy render``: the files in ``deploy/`` filled in for one installation.

The files in ``deploy/`` are templates whose ``@NAME@`` marks are replaced here, so a user never
edits paths by hand. One worker unit template serves both job kinds.
"""

from __future__ import annotations

import grp
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from scai.config import (
    JOB_ALIASES,
    PORTAL_THREADS,
    ROOT,
    UWSGI_LOG_FORMAT,
    ConfigError,
    auto_processes,
    listen_backlog,
    parse_count,
)
from scai.errors import RenderError
from scai.store import REDIS_SCHEMES

DEPLOY = ROOT / "deploy"
#: template in deploy/ -> file written under --out (and the extra marks it gets)
FILES: list[tuple[str, str, dict[str, str]]] = [
    ("nginx/scai.conf", "nginx/scai.conf", {}),
    ("nginx/scai-subpath.conf", "nginx/scai-subpath.conf", {}),
    ("nginx/scai-log-format.conf", "nginx/scai-log-format.conf", {}),
    ("uwsgi/scai.ini", "uwsgi/scai.ini", {}),
    ("systemd/scai.service", "systemd/scai.service", {}),
    *[("systemd/scai-worker.service", f"systemd/scai-{kind}.service", {"KIND": kind}) for kind in JOB_ALIASES],
    ("cron/scai-clean", "cron/scai-clean", {}),
    ("prometheus/scai.yml", "prometheus/scai.yml", {}),
]
SYSTEM_RUN_DIR = Path("/run/scai")


@dataclass
class Installation:
    """Where one SCAI installation lives and how it is reached."""

    prefix: Path
    user: str
    port: int
    group: str | None = None
    host: str = ""
    session_dir: Path | None = None
    usr_dir: Path | None = None
    run_dir: Path = SYSTEM_RUN_DIR
    log_dir: Path = Path("/var/log/scai")
    max_upload_mb: int = 20
    #: worker processes per job kind, ``auto`` deciding on the machine at start (see Settings)
    workers: str = "auto"
    #: uwsgi processes of the portal; ``auto`` is one per core of the machine it runs on
    portal_processes: str = "auto"
    #: empty for the session folder, or the Redis URL every portal and worker unit shares
    store: str = ""

    def marks(self, config_dir: Path) -> dict[str, str]:
        prefix = self.prefix.resolve()
        try:
            group = self.group or grp.getgrgid(pwd.getpwnam(self.user).pw_gid).gr_name
        except KeyError:
            raise RenderError(f"no user {self.user!r} on this machine (create it first: useradd --system)") from None
        # Metrics live on a memory file system shared by every unit (written through mmap: on a
        # full disk a process would die of SIGBUS), kept across restarts until the next boot.
        if self.run_dir == SYSTEM_RUN_DIR:
            metrics_dir = Path("/run/scai-metrics")
            runtime = "RuntimeDirectory=scai scai-metrics\nRuntimeDirectoryPreserve=yes"
            metrics_runtime = "RuntimeDirectory=scai-metrics\nRuntimeDirectoryPreserve=yes"
        else:
            metrics_dir = self.run_dir / "metrics"
            runtime = f"ReadWritePaths={self.run_dir}"
            metrics_runtime = f"ReadWritePaths=-{metrics_dir}"
        return {
            "PREFIX": str(prefix),
            "VENV": str(prefix / ".venv"),
            "USER": self.user,
            "GROUP": group,
            "LISTEN": f"{self.host}:{self.port}" if self.host else str(self.port),
            "PORT": str(self.port),
            "SESSION_DIR": str((self.session_dir or prefix / "session").resolve()),
            "USR_DIR": str((self.usr_dir or prefix / "usr").resolve()),
            "RUN_DIR": str(self.run_dir),
            "LOG_DIR": str(self.log_dir),
            "MAX_UPLOAD_MB": str(self.max_upload_mb),
            "CONFIG_DIR": str(config_dir.resolve()),
            "RUNTIME_DIRECTORY": runtime,
            "METRICS_DIR": str(metrics_dir),
            "METRICS_RUNTIME_DIRECTORY": metrics_runtime,
            "WORKERS": str(self.workers),
            "PORTAL_PROCESSES": str(parse_count(self.portal_processes, "--portal-processes") or auto_processes()),
            "PORTAL_THREADS": str(PORTAL_THREADS),
            "LISTEN_BACKLOG": str(listen_backlog()),
            "UWSGI_LOG_FORMAT": UWSGI_LOG_FORMAT,
            "STORE": self.store,
        }


def check_sizing(installation: Installation) -> None:
    try:
        parse_count(installation.workers, "--workers")
        parse_count(installation.portal_processes, "--portal-processes")
    except ConfigError as error:
        raise RenderError(str(error)) from None
    if installation.store and not installation.store.startswith(REDIS_SCHEMES):
        raise RenderError(f"--store must be a redis:// URL, not {installation.store!r}")


def fill(text: str, marks: dict[str, str], name: str) -> str:
    """Replace every ``@NAME@``; a mark without a value is an error, not a silent hole."""

    def value(match: re.Match) -> str:
        if match.group(1) not in marks:
            raise RenderError(f"{name}: no value for @{match.group(1)}@")
        return marks[match.group(1)]

    return re.sub(r"@([A-Z_]+)@", value, text)


def render(installation: Installation, out: Path) -> list[Path]:
    """Write every deployment file for ``installation`` under ``out``; returns their paths."""
    check_sizing(installation)
    marks = installation.marks(out)
    written = []
    for source, target, extra in FILES:
        path = out / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fill((DEPLOY / source).read_text(encoding="utf-8"), {**marks, **extra}, source))
        written.append(path)
    return written
