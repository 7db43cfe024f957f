"""Settings and the model registry, in one place.

Every knob has a default here, can be set from the environment (``SCAI_*``) and, for the
commands that take it, from a flag. Model sections come from ``usr/<job>.config`` INI files that
keep the original SCAI keys, so configs written for the original service still load.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLASSIFICATION = "image_classification"
DETECTION = "object_detection"
JOBS = (CLASSIFICATION, DETECTION)
#: The short names the command line uses for each job kind.
JOB_ALIASES = {"classify": CLASSIFICATION, "detect": DETECTION}

DEFAULT_MODEL = "default"
#: Threads of each portal (uwsgi) process: a request that waits for its result (wait=) holds one.
PORTAL_THREADS = 16
#: Connections the kernel queues for the portal while every thread is busy (uwsgi's default, 100,
#: refuses the 101st client of a burst).
LISTEN_BACKLOG = 1024


#: uwsgi's request log line without the query string, which may carry a session key (``?key=``).
UWSGI_LOG_FORMAT = '%(addr) [%(ctime)] "%(method) %(var.PATH_INFO)" %(status) %(size) bytes in %(msecs) ms'


def listen_backlog() -> int:
    """``LISTEN_BACKLOG``, or the kernel's limit where that is lower (uwsgi refuses to start
    with a queue over net.core.somaxconn)."""
    try:
        return min(LISTEN_BACKLOG, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    except (OSError, ValueError):
        return 128


class ConfigError(Exception):
    """A model section or setting that cannot be used; the message says which and why."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


#: ``auto`` never starts more processes than this per job kind or for the portal: on a large
#: machine each worker then takes several interpreter threads instead, which saves a model's
#: memory per core and stays far below the kernel's default of 128 inotify instances per user.
MAX_AUTO_PROCESSES = 8


def cpu_count() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_processes() -> int:
    return min(cpu_count(), MAX_AUTO_PROCESSES)


def parse_count(value: str | int, what: str) -> int | None:
    """``auto`` (None: decide from the cores) or a positive whole number."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{what} must be 'auto' or a positive number, not {value!r}")
    return count


@dataclass(frozen=True)
class Threads:
    """Interpreter threads of one worker process: ``busy`` while other sessions wait (the sibling
    processes use the other cores), ``lone`` for a request that has the machine to itself."""

    busy: int
    lone: int


@dataclass
class Settings:
    """What the portal, the workers and the clean command agree on."""

    session_dir: Path = field(default_factory=lambda: Path(os.environ.get("SCAI_SESSION_DIR", ROOT / "session")))
    usr_dir: Path = field(default_factory=lambda: Path(os.environ.get("SCAI_USR_DIR", ROOT / "usr")))
    #: Largest accepted upload body, in bytes (HTTP 413 above it).
    max_upload_bytes: int = field(default_factory=lambda: _env_int("SCAI_MAX_UPLOAD_MB", 20) * 1024 * 1024)
    #: Largest accepted image, in pixels: a guard against decompression bombs.
    max_pixels: int = field(default_factory=lambda: _env_int("SCAI_MAX_PIXELS", 50_000_000))
    #: ``runtime``: long-running workers; ``job``: the portal starts one worker per upload.
    running_mode: str = field(default_factory=lambda: os.environ.get("SCAI_RUNNING_MODE", "runtime"))
    #: Longest synchronous wait the API grants (``wait=`` is clipped to it).
    max_wait_seconds: float = 60.0
    #: How many pending sessions a worker runs through its model at once.
    batch_size: int = field(default_factory=lambda: _env_int("SCAI_BATCH_SIZE", 8))
    #: Seconds between the worker's safety-net rescans of the pool.
    rescan_seconds: float = 5.0
    top_k: int = 5
    #: Decode large JPEGs at a reduced scale for the model (see ``imaging``); off decodes whole.
    draft_decode: bool = field(default_factory=lambda: _env_flag("SCAI_DRAFT_DECODE", True))
    #: Worker processes per job kind: ``auto`` (one per core for TFLite models, else one) or N.
    workers: str = field(default_factory=lambda: os.environ.get("SCAI_WORKERS", "auto"))
    #: Interpreter threads of each worker process; 0 decides from the cores and the processes.
    threads: int = field(default_factory=lambda: _env_int("SCAI_THREADS", 0))
    #: Sessions that may wait for a worker per job kind before uploads get 503 (0: no limit).
    queue_limit: int = field(default_factory=lambda: _env_int("SCAI_QUEUE_LIMIT", 1000))
    #: Seconds a client refused by a full queue is told to wait (Retry-After).
    retry_after_seconds: int = 5

    def __post_init__(self) -> None:
        self.session_dir = Path(self.session_dir).resolve()
        self.usr_dir = Path(self.usr_dir).resolve()
        if self.running_mode not in ("runtime", "job"):
            raise ConfigError(f"running mode must be 'runtime' or 'job', not {self.running_mode!r}")
        parse_count(self.workers, "workers")

    def worker_processes(self, job: str) -> int:
        """How many worker processes serve ``job``: as set, or one per core (up to
        ``MAX_AUTO_PROCESSES``) where every model of the job is TFLite (small, one thread each),
        else one (TensorFlow spreads over the cores itself, and each such process holds several
        hundred MB)."""
        count = parse_count(self.workers, "workers")
        if count is not None:
            return count
        models = load_models(self.usr_dir, job).values()
        lite = models and all(spec.path.suffix == ".tflite" for spec in models)
        return auto_processes() if lite else 1

    def interpreter_threads(self, processes: int) -> Threads:
        """Threads for one of ``processes`` sibling workers: together they fit the cores, and a
        request that is alone may use them all. SCAI_THREADS fixes both."""
        if self.threads > 0:
            return Threads(self.threads, self.threads)
        cores = cpu_count()
        return Threads(max(1, cores // max(1, processes)), cores)


@dataclass(frozen=True)
class ModelSpec:
    """One section of a ``usr/<job>.config`` file, with paths resolved."""

    name: str
    job: str
    path: Path
    labels: Path | None = None
    #: A classification head on the backbone's features (``scai train`` makes these).
    head: Path | None = None
    input_layer: str | None = None
    output_layer: str | None = None
    input_size: tuple[int, int] | None = None  # (height, width)
    input_mean: float | None = None
    input_std: float | None = None
    #: The whole section, lower-cased keys, for the options a single engine reads.
    options: dict[str, str] = field(default_factory=dict)


def resolve_path(value: str, base: Path) -> Path:
    """Resolve a model path: absolute, relative to the usr folder, or ``package:pkg/file``.

    ``package:`` names a file shipped inside an installed Python package (the default models),
    found without importing the package, whose own imports may not be installed.
    """
    value = value.strip()
    if value.startswith("package:"):
        package, _, inner = value[len("package:") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"package {package!r} is not installed (needed for {value})")
        return Path(list(spec.submodule_search_locations)[0]) / inner
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _parse_size(value: str) -> tuple[int, int]:
    parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ConfigError(f"INPUT_SIZE must be 'N' or 'H,W', not {value!r}")


def _first(section: configparser.SectionProxy, *keys: str) -> str | None:
    for key in keys:
        if section.get(key):
            return section.get(key)
    return None


def spec_from_section(name: str, job: str, section: configparser.SectionProxy, base: Path) -> ModelSpec:
    """Build a spec from the original keys (``GRAPH``/``PATH_TO_CKPT`` and friends)."""
    model = _first(section, "graph", "path_to_ckpt", "model")
    if not model:
        raise ConfigError(f"section [{name}] of {job}.config names no model (GRAPH or PATH_TO_CKPT)")
    labels = _first(section, "labels", "path_to_labels")
    size = section.get("input_size")
    mean, std = section.get("input_mean"), section.get("input_std")
    return ModelSpec(
        name=name,
        job=job,
        path=resolve_path(model, base),
        labels=resolve_path(labels, base) if labels else None,
        head=resolve_path(section["head"], base) if section.get("head") else None,
        input_layer=section.get("input_layer") or None,
        output_layer=section.get("output_layer") or None,
        input_size=_parse_size(size) if size else None,
        input_mean=float(mean) if mean else None,
        input_std=float(std) if std else None,
        options={key: value for key, value in section.items()},
    )


#: (config file) -> (its stamp, its sections): every upload asks which models exist.
_parsed: dict[Path, tuple[tuple[int, ...], dict[str, ModelSpec]]] = {}


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """What changes whenever a file is written or replaced (None: there is no such file)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def load_models(usr_dir: Path, job: str) -> dict[str, ModelSpec]:
    """All model sections of one job kind, by name; an absent file means no models.

    Parsed again only when the file changes (``file_stamp``), not on every request.
    """
    path = Path(usr_dir) / f"{job}.config"
    stamp = file_stamp(path)
    if stamp is None:
        return {}
    cached = _parsed.get(path)
    if cached is None or cached[0] != stamp:
        parser = configparser.ConfigParser(interpolation=None, default_section="__defaults__")
        parser.read(path, encoding="utf-8")
        models = {name: spec_from_section(name, job, parser[name], path.parent) for name in parser.sections()}
        _parsed[path] = cached = (stamp, models)
    return dict(cached[1])


def pick_model(models: dict[str, ModelSpec], name: str | None) -> ModelSpec:
    """The section a request names, or ``default``; unknown names raise ``ConfigError``."""
    name = name or DEFAULT_MODEL
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ConfigError(f"unknown model {name!r} (configured: {known})")
    return models[name]


def write_section(path: Path, name: str, keys: dict[str, str]) -> None:
    """Add section ``[name]`` to an INI file, or replace it, keeping every other line (and the
    comments that document the file) as it was. Written atomically."""
    from scai.sessions import atomic_write

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    block = [f"[{name}]", *(f"{key} = {value}" for key, value in keys.items())]
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{name}]"), None)
    if start is None:
        lines = [*lines, *([""] if lines and lines[-1].strip() else []), *block]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1  # comments just above the next section belong to it
        lines = [*lines[:start], *block, *lines[end:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
