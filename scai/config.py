"""Settings and the model registry, in one place.

Every knob has a default here, can be set from the environment (``SCAI_*``) and, for the
commands that take it, from a flag. Model sections come from ``usr/<job>.config`` INI files that
keep the original SCAI keys, so configs written for the original service still load.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from scai.errors import BrokenConfig, ConfigError
from scai.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
#: The memory file system the default metrics folder lives on.
SHARED_MEMORY = Path("/dev/shm")

CLASSIFICATION = "image_classification"
DETECTION = "object_detection"
#: Faces: found, and embedded for recognition (the DeepStack face routes; ``facedb`` keeps who is who).
FACES = "face_recognition"
JOBS = (CLASSIFICATION, DETECTION, FACES)
#: The short names the command line uses for each job kind.
JOB_ALIASES = {"classify": CLASSIFICATION, "detect": DETECTION, "face": FACES}
#: Job kind -> its alias (``image_classification`` -> ``classify``).
ALIAS_OF_JOB = {job: alias for alias, job in JOB_ALIASES.items()}

DEFAULT_MODEL = "default"
#: Float models get (pixel - mean) / std; [-1, 1] is what MobileNet and EfficientNet expect.
DEFAULT_MEAN, DEFAULT_STD = 127.5, 127.5
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


#: Model files that run on their own light runtime (LiteRT, ONNX Runtime, dlib), with the threads they are given.
LIGHT_FORMATS = (".tflite", ".onnx", ".dat")
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


def setting(default: Any, env: str | None = None, help: str = "", guard: bool = False) -> Any:
    """A field of ``Settings``: its default, the ``SCAI_*`` variable that sets it, what it does.

    Defaults live only here: flags default to None and override only when given. ``guard``: a
    security setting, whose variable set but blank stops the service (``from_env``) instead of
    reading as unset: a blank secret is a mistake (an empty template, a missing secret), never
    a wish to run open."""
    metadata = {"env": env, "help": help, "guard": guard}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _parse_flag(value: str) -> bool:
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


#: How a variable's text becomes a field's value, by the field's declared type.
_PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _parse_flag, "Path": Path, "str": str}


@dataclass
class Settings:
    """What the portal, the workers and the commands agree on; built once per process
    (``from_env``) and passed down. ``Settings()`` alone is the defaults, environment ignored."""

    session_dir: Path = setting(lambda: ROOT / "session", "SCAI_SESSION_DIR", "session folder")
    usr_dir: Path = setting(lambda: ROOT / "usr", "SCAI_USR_DIR", "model config folder")
    max_upload_mb: int = setting(20, "SCAI_MAX_UPLOAD_MB", "largest accepted upload body (HTTP 413 above it)")
    max_pixels: int = setting(50_000_000, "SCAI_MAX_PIXELS", "largest accepted image, a decompression-bomb guard")
    running_mode: str = setting("runtime", "SCAI_RUNNING_MODE", "runtime: workers stay; job: one per upload")
    max_wait_seconds: float = setting(60.0, help="longest synchronous wait the API grants (wait= is clipped)")
    batch_size: int = setting(8, "SCAI_BATCH_SIZE", "sessions a worker runs through a batching model at once")
    rescan_seconds: float = setting(5.0, "SCAI_RESCAN_SECONDS", "seconds between a worker's rescans and recoveries")
    top_k: int = setting(5, help="labels a classification returns")
    draft_decode: bool = setting(True, "SCAI_DRAFT_DECODE", "decode large JPEGs at a reduced scale (see imaging)")
    workers: str = setting("auto", "SCAI_WORKERS", "worker processes per job kind: auto or N")
    threads: int = setting(0, "SCAI_THREADS", "interpreter threads of each worker (0: from the cores)")
    queue_limit: int = setting(1000, "SCAI_QUEUE_LIMIT", "sessions that may wait per job kind before 503 (0: none)")
    retry_after_seconds: int = setting(5, help="Retry-After of a 503 for a full queue")
    claim_lease_seconds: float = setting(
        60.0, "SCAI_CLAIM_LEASE_SECONDS", "a claim held this long is a hung or dead worker's (above the slowest batch)"
    )
    store: str = setting("", "SCAI_STORE", "redis://host:port/db: sessions in Redis (default: the session folder)")
    blobs: str = setting(
        "", "SCAI_BLOBS", "s3://BUCKET/PREFIX?endpoint=URL: uploads and result images in S3 (with a Redis store)",
        guard=True,
    )  # fmt: skip
    public_url: str = setting(
        "", "SCAI_PUBLIC_URL", "the address clients use, for /docs examples (e.g. https://ai.example)"
    )
    api_keys: str = setting("", "SCAI_API_KEYS", "keys that uploads and model lists need, comma-separated", guard=True)
    deepstack_model: str = setting(
        "", "SCAI_DEEPSTACK_MODEL", "detection section of /v1/vision/detection (default: the best COCO detector pulled)"
    )
    metrics_dir: str = setting(
        "", "SCAI_METRICS_DIR", "folder the processes share metrics in (default: one in /dev/shm per session folder)"
    )
    keep_seconds: float = setting(86400.0, "SCAI_KEEP_SECONDS", "scai clean removes sessions older than this")
    client_timeout: float = setting(
        60.0, "SCAI_CLIENT_TIMEOUT", "scai serve: seconds a client has to send a whole request (408 after)"
    )

    def __post_init__(self) -> None:
        self.session_dir = Path(self.session_dir).resolve()
        self.usr_dir = Path(self.usr_dir).resolve()
        if self.running_mode not in ("runtime", "job"):
            raise ConfigError(f"running mode must be 'runtime' or 'job', not {self.running_mode!r}")
        parse_count(self.workers, "workers")
        if min(self.batch_size, self.max_upload_mb, self.max_pixels) < 1:
            raise ConfigError("the batch size, the upload limit and the pixel limit must be at least 1")
        if not 0 < self.rescan_seconds < float("inf") or not 0 <= self.keep_seconds < float("inf"):
            raise ConfigError("the rescan time must be above 0 s and the keep time at least 0 s")
        if not 0 < self.claim_lease_seconds < float("inf"):
            raise ConfigError("the claim lease must be above 0 s")
        if not 0 < self.client_timeout < float("inf"):
            raise ConfigError("the client timeout must be above 0 s")
        if self.api_keys and not self.api_keys.replace(",", " ").split():
            raise ConfigError("SCAI_API_KEYS is set but holds no key (keys are separated by commas)")
        if min(self.queue_limit, self.threads) < 0:
            raise ConfigError("the queue limit and the thread count must be 0 or more")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The defaults, then ``SCAI_*`` variables, then ``overrides`` that are not None (flags).
        A variable that does not parse raises ``ConfigError`` naming it."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            name = item.metadata.get("env") or ""
            raw = environ.get(name, "").strip()
            if not raw and name in environ and item.metadata["guard"]:
                raise ConfigError(f"{name} is set but blank: unset it to turn it off")
            if raw:
                try:
                    values[item.name] = _PARSERS[str(item.type)](raw)
                except ValueError as error:
                    raise ConfigError(f"{item.metadata['env']}={raw!r} is not valid: {error}") from None
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as ``SCAI_*`` variables, for a child process that reads its own."""
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("env") and (value or not item.metadata["guard"]):  # unset stays unset
                out[item.metadata["env"]] = str(int(value)) if isinstance(value, bool) else str(value)
        return out

    @property
    def metrics_folder(self) -> Path:
        """``metrics_dir``, else a folder of this installation on the memory file system
        (/dev/shm): metrics files are written through mmap, and a page of one on a full disk
        kills the process (SIGBUS). Without /dev/shm, ``.metrics`` in the session folder."""
        if self.metrics_dir:
            return Path(self.metrics_dir)
        if os.access(SHARED_MEMORY, os.W_OK):
            return SHARED_MEMORY / f"scai-metrics-{os.getuid()}-{folder_tag(self.session_dir)}"
        return self.session_dir / ".metrics"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default, for help texts and flags that show it."""
        item = next(f for f in fields(cls) if f.name == name)
        return item.default_factory() if callable(item.default_factory) else item.default

    def worker_processes(self, job: str) -> int:
        """How many worker processes serve ``job``: as set, or one per core (up to
        ``MAX_AUTO_PROCESSES``) where every model of the job is TFLite or ONNX (small, one thread each),
        else one (TensorFlow spreads over the cores itself, and each such process holds several
        hundred MB)."""
        count = parse_count(self.workers, "workers")
        if count is not None:
            return count
        models = [spec for spec in load_models(self.usr_dir, job).values() if spec.problem is None]
        lite = models and all(spec.path.suffix.lower() in LIGHT_FORMATS for spec in models)
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
    #: One number, or one a channel (R, G, B): (pixel x INPUT_SCALE - mean) / std.
    input_mean: float | tuple[float, ...] | None = None
    input_std: float | tuple[float, ...] | None = None
    #: The whole section, lower-cased keys, for the options a single engine reads.
    options: dict[str, str] = field(default_factory=dict)
    #: Why the section cannot be served (a bad key, no model named), or None. Such a section
    #: still exists: its sessions fail with the reason and ``/healthz`` names it, while the other
    #: sections of the file serve (``load_models``).
    problem: str | None = None

    def check(self) -> None:
        """Raise ``ConfigError`` with the section's problem, before anything tries to load it."""
        if self.problem is not None:
            raise ConfigError(self.problem)

    @property
    def mean(self) -> float | tuple[float, ...]:
        """Float inputs get (pixel - mean) / std: INPUT_MEAN, else DEFAULT_MEAN."""
        return DEFAULT_MEAN if self.input_mean is None else self.input_mean

    @property
    def std(self) -> float | tuple[float, ...]:
        return DEFAULT_STD if self.input_std is None else self.input_std

    @property
    def explicit_normalisation(self) -> bool:
        """The section sets INPUT_MEAN or INPUT_STD (quantised models then normalise too)."""
        return self.input_mean is not None or self.input_std is not None


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
    try:
        parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ConfigError(f"INPUT_SIZE must be 'N' or 'H,W', not {value!r}")


def _parse_number(value: str | None, key: str, name: str, job: str) -> float | tuple[float, ...] | None:
    """One number, or three (one a channel, comma-separated); none of them zero for INPUT_STD."""
    if not value:
        return None
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) not in (1, 3) or (key == "INPUT_STD" and 0.0 in numbers):
        allowed = "a number or three (R,G,B)" + (", none of them 0" if key == "INPUT_STD" else "")
        raise ConfigError(f"section [{name}] of {job}.config: {key} must be {allowed}, not {value!r}") from None
    return numbers[0] if len(numbers) == 1 else numbers


def _first(section: configparser.SectionProxy, *keys: str) -> str | None:
    for key in keys:
        if section.get(key):
            return section.get(key)
    return None


#: Keys an engine reads as numbers (detection thresholds, TFLite threads), checked when the
#: section is read so that ``/healthz`` names a bad one before a worker trips over it.
NUMBER_KEYS: dict[str, Callable[[str], float]] = {
    "min_score_thresh": float,
    "max_boxes_to_draw": int,
    "line_thickness": int,
    "first_class_id": int,
    "num_threads": int,
}
ACTIVATIONS = ("auto", "softmax", "none")
#: Keys of a section that name a further file (resolved as GRAPH is): a face model's landmarks.
PATH_OPTIONS = ("landmarks",)
#: How a detector's input may be resized (``engines.base.RESIZES`` holds the functions).
RESIZE_CHOICES = ("bilinear", "tensorflow")


def _check_options(name: str, job: str, section: configparser.SectionProxy) -> None:
    where = f"section [{name}] of {job}.config"
    for key, parse in NUMBER_KEYS.items():
        value = section.get(key)
        if value:
            try:
                parse(value)
            except ValueError:
                kind = "a whole number" if parse is int else "a number"
                raise ConfigError(f"{where}: {key.upper()} must be {kind}, not {value!r}") from None
    activation = section.get("output_activation", "auto").lower()
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: OUTPUT_ACTIVATION must be {', '.join(ACTIVATIONS)}, not {activation!r}")
    resize = section.get("resize", "bilinear").lower()
    if resize not in RESIZE_CHOICES:
        raise ConfigError(f"{where}: RESIZE must be {' or '.join(RESIZE_CHOICES)}, not {resize!r}")


def spec_from_section(name: str, job: str, section: configparser.SectionProxy, base: Path) -> ModelSpec:
    """Build a spec from the original keys (``GRAPH``/``PATH_TO_CKPT`` and friends); a key that
    cannot be used raises ``ConfigError`` naming it."""
    _check_options(name, job, section)
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
        input_mean=_parse_number(mean, "INPUT_MEAN", name, job),
        input_std=_parse_number(std, "INPUT_STD", name, job),
        options={
            key: str(resolve_path(value, base)) if key in PATH_OPTIONS else value for key, value in section.items()
        },
    )


def _spec_or_problem(name: str, job: str, section: configparser.SectionProxy, base: Path) -> ModelSpec:
    """The section's spec; one that cannot be built is kept with its ``problem``, so that one bad
    section fails only its own sessions."""
    try:
        return spec_from_section(name, job, section, base)
    except ConfigError as error:
        return ModelSpec(name=name, job=job, path=Path(), problem=error.message)


def folder_tag(folder: Path) -> str:
    """A short name that is the same for every process working on ``folder``."""
    return hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """What changes whenever a file is written or replaced (None: there is no such file)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


#: Folder under ``usr/`` for model files: pulled and added models in a subfolder each, and
#: detection models dropped in as they are (``NAME.onnx`` or ``NAME.tflite``, labels ``NAME.txt``
#: beside it), as DeepStack and CodeProject.AI users drop their custom models into one.
MODELS_FOLDER = "models"
DROPPED_FORMATS = (".onnx", ".tflite")
#: What a model's name may be: it appears in URLs (``/v1/vision/custom/NAME``) and file names.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def models_stamp(usr_dir: Path, job: str) -> tuple[object, ...]:
    """What changes whenever the job's models may have: its config file, and for detection the
    models folder's list of files (a model dropped in or taken out)."""
    folder = file_stamp(Path(usr_dir) / MODELS_FOLDER) if job == DETECTION else None
    return file_stamp(Path(usr_dir) / f"{job}.config"), folder


def load_models(usr_dir: Path, job: str) -> dict[str, ModelSpec]:
    """All models of one job kind, by name: the config file's sections, and for detection the
    models dropped into ``usr/models/`` (a section of the same name wins). No file and no
    dropped model means no models. A section with a bad key is there with its ``problem`` set;
    only a file that does not parse at all raises (``BrokenConfig``).

    Read again only when the file or the folder changes (``models_stamp``), not on every request.
    """
    path = Path(usr_dir) / f"{job}.config"
    stamp = models_stamp(usr_dir, job)
    cached = _parsed.get(path)
    if cached is None or cached[0] != stamp:
        models = _dropped(Path(usr_dir)) if job == DETECTION else {}
        if stamp[0] is not None:
            models.update(_sections(path, job))
        _parsed[path] = cached = (stamp, models)
    return dict(cached[1])


def _sections(path: Path, job: str) -> dict[str, ModelSpec]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__defaults__")
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeError, OSError) as error:
        detail = str(error).splitlines()[0].split("]: ", 1)[-1]  # no server path: clients see it
        raise BrokenConfig(f"the model config {path.name} cannot be read: {detail}") from None
    return {name: _spec_or_problem(name, job, parser[name], path.parent) for name in parser.sections()}


def _dropped(usr_dir: Path) -> dict[str, ModelSpec]:
    """``usr/models/NAME.onnx`` and ``NAME.tflite`` (hidden and oddly named files aside), each a
    detection model with the engine's defaults; the layout is recognised when it loads."""
    try:
        files = sorted((Path(usr_dir) / MODELS_FOLDER).iterdir())
    except OSError:
        return {}
    models = {}
    for file in files:
        if file.suffix.lower() in DROPPED_FORMATS and NAME_RE.fullmatch(file.stem) and file.is_file():
            labels = file.with_suffix(".txt")
            models[file.stem] = ModelSpec(file.stem, DETECTION, file, labels if labels.is_file() else None)
    return models


#: (config file) -> (its stamp, its models): every upload asks which models exist.
_parsed: dict[Path, tuple[tuple[object, ...], dict[str, ModelSpec]]] = {}


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
