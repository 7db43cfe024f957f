"""Soak test: ``scai serve`` under steady load while its workers are killed, its sessions cleaned
and scan bombs uploaded, for minutes.

    make soak
    .venv/bin/python bench/soak.py [--clients 16] [--seconds 600] [--kill-every 4] [--bomb-every 60]
                                   [--clean-every 10] [--keep 120] [--port N] [--json-out PATH]

What a passing run proves (exit status 0):
  * no answer is a 5xx (a 503 with Retry-After, the queue-full refusal, is counted apart and
    retried) and no request dies on the wire (connection error, no answer in time);
  * no session is lost: every upload the portal accepted reaches ``complete`` or ``failure``,
    although a worker is SIGKILLed every ``--kill-every`` seconds, mid-session or mid-load;
  * every session completes exactly once: the workers' ``complete <id>`` log lines are counted
    per session, and none appears twice, though killed workers' claims go back to the pool;
  * ``scai clean`` run as cron would (every ``--clean-every`` s) never removes a session a
    client still waits for: a client's longest wait is kept ``KEEP_MARGIN`` s under ``--keep``;
  * every request of the ``--deepstack-clients`` cameras on the DeepStack routes is answered 200
    (bar the queue-full refusal), however the workers are killed meanwhile;
  * every scan bomb (a progressive JPEG of 100,000 scans, which once kept a worker busy for
    minutes) is refused with a JSON 4xx, or ends as a failed session soon;
  * every poison upload (a 40-megapixel PNG whose holder is SIGKILLed on every delivery,
    standing in for an image that makes workers run out of memory or crash the decoder) fails
    with "the image stopped 3 workers", and the job kind keeps serving;
  * all the while ``--trickle-body`` and ``--trickle-headers`` slow clients send a byte every
    few seconds (``bench/trickle.py``): they must not stall the normal clients (their uploads
    keep the usual deadlines, and no request dies on the wire);
  * no worker dies but by the killer's hand (a crash shows as a restart the killer did not
    cause), the supervisor never gives up on one (a worker that ran ``STARTED_SECONDS`` had
    started well and is back after 1 s, see ``scai.supervisor``), and ``scai serve`` stops on
    SIGTERM with no process left behind.
It also samples every 2 s the resident memory (VmRSS) of each worker (by kind) and portal
process, so that "RSS stays flat" can be judged from the first and the last minute.

Real photos come from SCAI_ASSETS/images (default ../shared/assets); the models are the repo's
usr/ defaults (EfficientNet-Lite0 TFLite classifier, SSDLite TF1 frozen-graph person detector).
``scai serve`` runs with ``-v`` so that its supervisor logs which pid each worker slot has (the
killer needs it); the workers and the portal log as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import mimetypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from compare import stop_on_sigterm  # bench/, this script's folder
from PIL import Image
from trickle import Trickle

from scai.config import Settings
from scai.store import SESSION_ID_RE, open_store
from scai.supervisor import STARTED_SECONDS, Supervisor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
IMAGES = ASSETS / "images"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

#: A client gives up on a session this long after its upload (or sooner, see ``client_deadline``).
MAX_CLIENT_WAIT = 120.0
#: The longest ``wait=`` a client asks for; the API clips it to 60 s anyway.
WAIT_PARAM = 30.0
#: A client's longest wait stays this far under the cleaner's keep time: a cleaner run takes a
#: moment, and the session's age counts from its creation, a little after the upload started.
KEEP_MARGIN = 15.0
#: Every this many uploads of a client, one goes to detection; the rest are classification.
DETECT_EVERY = 4
START_TIMEOUT = 240.0
STOP_TIMEOUT = 90.0  # the supervisor gives its children 60 s to finish the batch in hand
DRAIN_TIMEOUT = 120.0
SAMPLE_EVERY = 2.0
BOMB_SCANS = 100_000
START_OF_SCAN, END_OF_IMAGE = b"\xff\xda", b"\xff\xd9"

SESSION = SESSION_ID_RE.pattern
LINE_COMPLETE = re.compile(rf"scai\.worker\[(\d+)\] \w+ complete ({SESSION}) in ([\d.]+) ms")
LINE_FAILURE = re.compile(rf"scai\.worker\[(\d+)\] \w+ failure ({SESSION}): (.*)$")
LINE_STARTED = re.compile(r"scai\.supervisor\[\d+\] DEBUG started (.+) \(pid (\d+)\)$")
LINE_RESTART = re.compile(r"scai\.supervisor\[\d+\] WARNING (.+) \(pid (\d+)\) (.+); restarting it in (\d+) s$")
LINE_GAVE_UP = re.compile(r"scai\.supervisor\[\d+\] ERROR (.+) \(pid (\d+)\) (.+): not restarting it")
LINE_RECOVERED = re.compile(r"took back (\d+) sessions from a worker that died")
LINE_UWSGI_5XX = re.compile(r'"(\w+) ([^"]*)" (5\d\d) ')


# --- processes ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may contain spaces):
    [0] state, [1] ppid, [2] process group, [3] session."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def started_ticks(pid: int) -> int:
    """When the process started (clock ticks since boot; 0 if it is gone)."""
    stat = proc_stat(pid)
    return int(stat[19]) if stat else 0  # field 22 of proc(5), counted from the state


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def children_of(parent: int) -> list[int]:
    return [pid for pid in all_pids() if (fields := proc_stat(pid)) and int(fields[1]) == parent]


def worker_kind(args: list[str]) -> str | None:
    """``classify``/``detect`` for a ``scai worker KIND`` command line (``-m scai worker`` or the
    ``scai`` script), else None."""
    for i, arg in enumerate(args[:-2]):
        if (arg == "scai" or arg.endswith("/scai")) and args[i + 1] == "worker":
            return args[i + 2]
    return None


def is_uwsgi(args: list[str]) -> bool:
    return bool(args) and Path(args[0]).name == "uwsgi"


def workers_of(supervisor: int) -> dict[int, str]:
    """pid -> kind of the worker processes the supervisor runs now."""
    found = {}
    for pid in children_of(supervisor):
        if kind := worker_kind(cmdline(pid)):
            found[pid] = kind
    return found


def portal_of(supervisor: int) -> list[int]:
    """The uwsgi master the supervisor runs and its worker processes."""
    masters = [pid for pid in children_of(supervisor) if is_uwsgi(cmdline(pid))]
    return masters + [pid for master in masters for pid in children_of(master)]


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def in_session(sid: int) -> list[int]:
    """Every process of the session ``scai serve`` was started in: ours, and only ours."""
    return [pid for pid in all_pids() if (fields := proc_stat(pid)) and int(fields[3]) == sid]


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_us() -> None:
    """For ``scai serve``, before exec: SIGTERM when this script dies, even by SIGKILL, so that a
    crashed soak leaves no server behind (the supervisor then stops its own children)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    session_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_server(tmp: Path, port: int) -> Server:
    """``scai -v serve`` in a session of its own (so everything it starts can be found and, as a
    last resort, killed as one group), logging to a file in ``tmp``."""
    session_dir, log = tmp / "session", tmp / "scai.log"
    command = [str(BIN / "scai"), "-v", "serve", "--port", str(port), "--session-dir", str(session_dir)]
    print(f"starting: {' '.join(command)}", flush=True)
    with log.open("ab") as output:  # O_APPEND: every process of the tree appends whole lines
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_us,
        )
    return Server(process, port, session_dir, log)


def wait_healthy(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Until /healthz answers 200 (a live worker of every kind); fails early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url("/healthz"), timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    tail = server.log.read_text(errors="replace")[-3000:]
    state = f"exited with {server.process.returncode}" if server.process.poll() is not None else "not healthy"
    raise SystemExit(f"scai serve {state} after {timeout:.0f} s; its log ends:\n{tail}")


def stop_server(server: Server) -> dict[str, Any]:
    """SIGTERM and a wait (the supervisor stops its children), SIGKILL to the group if that fails;
    then whatever is still alive in the server's session, which must be nothing."""
    started = time.monotonic()
    forced = False
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            forced = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.process.wait()
    deadline = time.monotonic() + 10
    while (left := in_session(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)  # orphans the supervisor's SIGTERM reached end in a moment
    leftovers = [{"pid": pid, "cmd": " ".join(cmdline(pid))[:200]} for pid in left]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {
        "exit_status": server.process.returncode,
        "stop_seconds": round(time.monotonic() - started, 1),
        "sigkill_needed": forced,
        "leftover_processes": leftovers,
    }


# --- the supervisor's log, read as it grows ------------------------------------------------------


class LogTail:
    """Follows the server's log for what the killer must know now: which worker slot each pid is
    (``started ... (pid N)``, logged at debug level) and when each slot's processes died."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lock = threading.Lock()
        self.slot_of: dict[int, str] = {}
        self.deaths: dict[int, tuple[str, float]] = {}  # pid -> (slot, when this script learned of it)
        self.gave_up: list[str] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        now = time.monotonic()
        with self.lock:
            for line in lines:
                self._read(line.decode(errors="replace"), now)

    def _read(self, line: str, now: float) -> None:
        if match := LINE_STARTED.search(line):
            self.slot_of[int(match[2])] = match[1]
        elif match := LINE_RESTART.search(line):
            self.deaths.setdefault(int(match[2]), (match[1], now))
        elif match := LINE_GAVE_UP.search(line):
            self.deaths.setdefault(int(match[2]), (match[1], now))
            self.gave_up.append(match[1])

    def slot(self, pid: int) -> str | None:
        with self.lock:
            return self.slot_of.get(pid)

    def death_times(self) -> dict[int, tuple[str, float]]:
        with self.lock:
            return dict(self.deaths)


# --- the killer ---------------------------------------------------------------------------------


def restart_rule(slots: int, kill_every: float) -> str:
    """How the supervisor treats this killing (for the report)."""
    return (
        f"a kill every {kill_every:g} s of the longest-running of {slots} workers (each then lived about "
        f"{slots * kill_every:g} s); the supervisor restarts a worker that beat once "
        f"(or ran {STARTED_SECONDS:g} s) after 1 s, "
        f"and gives up only after {Supervisor.__init__.__kwdefaults__['burst']} quicker deaths"
    )


@dataclass
class KillerStats:
    kills: int = 0
    by_slot: Counter = field(default_factory=Counter)
    skipped_no_worker: int = 0


class Killer:
    """Every ``every`` seconds, SIGKILL the worker that has run longest, so the kills go round
    every worker as an out-of-memory killer or an operator might."""

    def __init__(self, server: Server, tail: LogTail, every: float) -> None:
        self.server, self.tail, self.every = server, tail, every
        self.kills: dict[int, tuple[str, float]] = {}  # pid -> (slot, when killed)
        self.wall: list[tuple[float, str, int]] = []  # (time.time(), slot, pid): to set beside session stamps
        self.stats = KillerStats()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            self.tail.poll()
            self.kill_one()

    def kill_one(self) -> None:
        now = time.monotonic()
        workers = workers_of(self.server.pid)
        slots = {pid: slot for pid in workers if (slot := self.tail.slot(pid))}
        if not slots:
            self.stats.skipped_no_worker += 1  # every worker is waiting out its restart delay
            return
        pid = min(slots, key=started_ticks)
        slot = slots[pid]
        if worker_kind(cmdline(pid)) is None:  # it ended a moment ago (and its pid may be reused)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.kills[pid] = (slot, now)
            self.wall.append((time.time(), slot, pid))
            self.stats.kills += 1
            self.stats.by_slot[slot] += 1


# --- the cleaner --------------------------------------------------------------------------------


@dataclass
class CleanerStats:
    runs: int = 0
    errors: list[str] = field(default_factory=list)
    removed: dict[str, float] = field(default_factory=dict)  # session id -> when (run clock)


def clean_loop(server: Server, keep: float, every: float, clock: Clock, stop: threading.Event) -> CleanerStats:
    """``scai clean`` every ``every`` seconds, as a cron line would run it."""
    stats = CleanerStats()
    command = [str(BIN / "scai"), "clean", "--sessionpath", str(server.session_dir), "--keeptimeperoid", str(keep)]
    while not stop.wait(every):
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            stats.errors.append("scai clean ran over 120 s")
            continue
        stats.runs += 1
        if done.returncode != 0:
            stats.errors.append(f"status {done.returncode}: {done.stderr.strip()[-300:]}")
        for session_id in re.findall(rf"^removed ({SESSION})$", done.stdout, re.M):
            stats.removed[session_id] = clock()
    return stats


# --- clients ------------------------------------------------------------------------------------


class Clock:
    """Seconds since the load started."""

    def __init__(self) -> None:
        self.zero = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.zero


@dataclass
class Upload:
    """One upload, from its POST to its final answer (or the client giving up)."""

    task: str
    photo: str
    started: float
    statuses: list[int] = field(default_factory=list)
    session: str | None = None
    key: str | None = None
    state: str | None = None  # the last state the client saw
    message: str | None = None
    updated: str | None = None  # process.json's stamp of the last change (ISO, UTC)
    seconds: float | None = None  # upload to final answer
    refused: int = 0  # 503 with Retry-After
    transport_errors: list[str] = field(default_factory=list)
    gone: bool = False  # 404 while the client still waited: removed under it
    gave_up: bool = False

    @property
    def final(self) -> bool:
        return self.state in ("complete", "failure")


class Recorder:
    """Everything the client threads and the bomber saw, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uploads: list[Upload] = []
        self.bombs: list[Upload] = []
        self.statuses: dict[str, Counter] = {"POST": Counter(), "GET": Counter(), "DEEPSTACK": Counter()}
        self.deepstack_seconds: list[float] = []  # each answered DeepStack request, send to answer
        self.deepstack_refused = 0  # 503 with Retry-After (the queue was full)

    def status(self, method: str, code: int | str) -> None:
        with self.lock:
            self.statuses[method][str(code)] += 1

    def add(self, upload: Upload, bomb: bool = False) -> None:
        with self.lock:
            (self.bombs if bomb else self.uploads).append(upload)


class DeepStackClient:
    """A camera as Frigate or Home Assistant drive one: ``/v1/vision/detection`` and
    ``/v1/vision/scene`` in turn, the photo in the field ``image``, answered synchronously (the
    server removes the session once answered: there is nothing to follow)."""

    def __init__(self, number: int, server: Server, photos: list[tuple[str, bytes]], recorder: Recorder) -> None:
        self.number, self.server, self.photos, self.recorder = number, server, photos, recorder
        self.http = requests.Session()

    def run(self, stop: threading.Event) -> None:
        sent = 0
        while not stop.is_set():
            _, data = self.photos[(self.number + sent) % len(self.photos)]
            route = "/v1/vision/scene" if sent % 2 else "/v1/vision/detection"
            started = time.monotonic()
            try:
                answer = self.http.post(self.server.url(route), files={"image": data}, timeout=(10, 90))
            except requests.RequestException:
                self.recorder.status("DEEPSTACK", "transport error")
                stop.wait(1.0)
                continue
            self.recorder.status("DEEPSTACK", answer.status_code)
            if answer.status_code == 503 and "Retry-After" in answer.headers:
                with self.recorder.lock:
                    self.recorder.deepstack_refused += 1
                stop.wait(float(answer.headers["Retry-After"]))
                continue
            if answer.status_code == 200 and answer.json().get("success") is True:
                with self.recorder.lock:
                    self.recorder.deepstack_seconds.append(time.monotonic() - started)
            sent += 1


def client_deadline(keep: float) -> float:
    """How long a client waits for a session after its upload: under the cleaner's keep time."""
    return min(MAX_CLIENT_WAIT, keep - KEEP_MARGIN)


class Client:
    """Sends the shared photos one after the other, and waits for each answer before the next."""

    def __init__(
        self,
        number: int,
        server: Server,
        photos: list[tuple[str, bytes]],
        recorder: Recorder,
        clock: Clock,
        deadline: float,
    ) -> None:
        self.number, self.server, self.photos, self.recorder = number, server, photos, recorder
        self.clock, self.deadline = clock, deadline
        self.http = requests.Session()

    def run(self, stop: threading.Event) -> None:
        sent = 0
        while not stop.is_set():
            name, data = self.photos[(self.number + sent) % len(self.photos)]
            task = "detect" if sent % DETECT_EVERY == DETECT_EVERY - 1 else "classify"
            self.recorder.add(self.upload(task, name, data, stop))
            sent += 1

    def upload(self, task: str, name: str, data: bytes, stop: threading.Event) -> Upload:
        upload = Upload(task, name, self.clock())
        submit(self.http, self.server, upload, data, self.recorder, stop, self.deadline, self.clock)
        return upload


def submit(
    http: requests.Session,
    server: Server,
    upload: Upload,
    data: bytes,
    recorder: Recorder,
    stop: threading.Event,
    deadline: float,
    clock: Clock,
) -> None:
    """POST until the portal takes the upload (a 503 with Retry-After is honoured and retried),
    then follow the session to its final state or the deadline."""
    wait = min(WAIT_PARAM, deadline)
    mime = mimetypes.guess_type(upload.photo)[0] or "application/octet-stream"
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            answer = http.post(
                server.url(f"/api/v1/{upload.task}?wait={wait:g}"),
                files={"image": (upload.photo, data, mime)},
                timeout=(10, wait + 30),
            )
        except requests.RequestException as error:
            upload.transport_errors.append(f"POST: {error.__class__.__name__}")
            recorder.status("POST", "transport error")
            if stop.wait(1.0):
                break
            continue
        recorder.status("POST", answer.status_code)
        upload.statuses.append(answer.status_code)
        if answer.status_code == 503 and "Retry-After" in answer.headers:
            upload.refused += 1
            if stop.wait(float(answer.headers["Retry-After"])):
                break
            continue
        take_answer(upload, answer, clock)
        if answer.status_code == 202:
            follow(http, server, upload, recorder, until, clock)
        return
    upload.gave_up = not upload.final


def take_answer(upload: Upload, answer: requests.Response, clock: Clock) -> None:
    """Note the session and state an answer carries; a 4xx's JSON message too."""
    try:
        body = answer.json()
    except ValueError:
        body = {"message": f"not JSON: {answer.text[:200]!r}"}
    if not isinstance(body, dict):
        return
    upload.session = upload.session or body.get("sessname")
    upload.key = upload.key or body.get("sesskey")
    upload.state = body.get("state", upload.state)
    upload.message = body.get("message")
    upload.updated = body.get("updated", upload.updated)
    if upload.final or (400 <= answer.status_code < 500 and answer.status_code != 422):
        upload.seconds = round(clock() - upload.started, 3)


def follow(
    http: requests.Session, server: Server, upload: Upload, recorder: Recorder, until: float, clock: Clock
) -> None:
    """Long-poll the session (``wait=``) with its key in the header until it is final or ``until``."""
    while not upload.final and (remaining := until - time.monotonic()) > 0:
        wait = min(WAIT_PARAM, remaining)
        try:
            answer = http.get(
                server.url(f"/api/v1/sessions/{upload.session}?wait={wait:.1f}"),
                headers={"X-Session-Key": upload.key or ""},
                timeout=(10, wait + 30),
            )
        except requests.RequestException as error:
            upload.transport_errors.append(f"GET: {error.__class__.__name__}")
            recorder.status("GET", "transport error")
            time.sleep(1.0)
            continue
        recorder.status("GET", answer.status_code)
        upload.statuses.append(answer.status_code)
        if answer.status_code == 404:
            upload.gone = True
            return
        if answer.status_code >= 500:
            time.sleep(1.0)
            continue
        take_answer(upload, answer, clock)
    upload.gave_up = not upload.final


# --- scan bombs ---------------------------------------------------------------------------------


def scan_bomb(scans: int = BOMB_SCANS) -> bytes:
    """A small progressive JPEG whose last scan is repeated until it has ``scans`` of them: a
    decoder runs every scan, so without a limit one upload holds a worker for minutes."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last, end = data.rindex(START_OF_SCAN), data.rindex(END_OF_IMAGE)
    bomb = data[:end] + data[last:end] * (scans - data.count(START_OF_SCAN)) + data[end:]
    assert bomb.count(START_OF_SCAN) == scans
    return bomb


def bomb_loop(
    server: Server, recorder: Recorder, clock: Clock, every: float, deadline: float, stop: threading.Event
) -> None:
    """One scan bomb to classification every ``every`` seconds, the first after half of that."""
    bomb, http = scan_bomb(), requests.Session()
    interval = every / 2
    while not stop.wait(interval):
        upload = Upload("classify", "scan-bomb.jpg", clock())
        submit(http, server, upload, bomb, recorder, threading.Event(), deadline, clock)
        recorder.add(upload, bomb=True)
        interval = max(0.0, every - (clock() - upload.started))


# --- poison uploads ----------------------------------------------------------------------------


def poison_png() -> bytes:
    """40 megapixels in 150 KB (its rows alike): decoding it holds a worker long enough to be caught."""
    row = np.random.default_rng(1).integers(0, 255, (1, 8000, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.repeat(row, 5000, axis=0)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Poison:
    at_s: float
    session: str | None = None
    kills: int = 0
    state: str | None = None
    message: str | None = None


class Poisoner:
    """Every ``every`` seconds, one poison upload to classification: whichever worker holds it is
    SIGKILLed, delivery after delivery, until the session ends (the store fails it after 3)."""

    def __init__(self, server: Server, clock: Clock, every: float) -> None:
        self.server, self.clock, self.every = server, clock, every
        # the soak's server keeps a session folder; ``holder`` (who locks a claim) is the folder's
        self.store: Any = open_store(Settings(session_dir=server.session_dir))
        self.sent: list[Poison] = []
        self.kills = 0  # SIGKILLs the report must not count as unplanned deaths

    def run(self, stop: threading.Event) -> None:
        data, http = poison_png(), requests.Session()
        while not stop.wait(self.every / 2 if not self.sent else self.every):
            poison = Poison(round(self.clock(), 1))
            self.sent.append(poison)
            with contextlib.suppress(requests.RequestException, KeyError, ValueError):
                answer = http.post(self.server.url("/api/v1/classify"), files={"photo": ("p.png", data)}, timeout=60)
                poison.session = answer.json()["sessname"]
                self.follow(poison, time.monotonic() + 180)

    def follow(self, poison: Poison, deadline: float) -> None:
        killed: set[int] = set()
        while time.monotonic() < deadline:
            state = self.store.state(poison.session)
            if state.get("state") in ("complete", "failure"):
                poison.state, poison.message = state["state"], state.get("message")
                return
            holder = self.store.holder("image_classification", poison.session)
            if holder and holder not in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(holder, signal.SIGKILL)
                    killed.add(holder)
                    poison.kills += 1
                    self.kills += 1
            time.sleep(0.002)  # polling /proc/locks: there is nothing to wait on
        poison.state = "not final"


def poison_report(poisoner: Poisoner) -> dict[str, Any]:
    each = [vars(p) for p in poisoner.sent]
    # a kill may also hit a worker that only held the marker's lock to recover it: not a delivery
    ok = all(p.state == "failure" and "the image stopped 3 workers" in (p.message or "") for p in poisoner.sent)
    return {"sent": len(each), "all_failed_after_3_workers": ok and bool(each), "each": each}


# --- resident memory ---------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    pid: int
    kind: str  # classify, detect, portal
    kb: int


def sample_loop(server: Server, clock: Clock, stop: threading.Event, samples: list[Sample]) -> None:
    """VmRSS of every worker, portal and front process every ``SAMPLE_EVERY`` seconds."""
    while True:
        now = clock()
        processes = {**workers_of(server.pid), **{pid: "portal" for pid in portal_of(server.pid)}}
        processes.update({pid: "front" for pid in children_of(server.pid) if "scai.front" in cmdline(pid)})
        for pid, kind in processes.items():
            if (kb := rss_kb(pid)) is not None:
                samples.append(Sample(round(now, 1), pid, kind, kb))
        if stop.wait(SAMPLE_EVERY):
            return


def rss_summary(samples: list[Sample]) -> dict[str, Any]:
    """Per kind, the largest process in the first and the last minute of sampling and overall
    (MB); per pid, first, last and peak (workers are restarted often: a short-lived pid says
    little alone, while the portal's processes live through the whole run)."""
    mb = 1024.0
    seconds = max((s.t for s in samples), default=0.0)
    kinds: dict[str, Any] = {}
    for kind in sorted({s.kind for s in samples}):
        mine = [s for s in samples if s.kind == kind]
        first = [s.kb for s in mine if s.t < 60]
        last = [s.kb for s in mine if s.t >= seconds - 60]
        kinds[kind] = {
            "first_minute_max_mb": round(max(first, default=0) / mb, 1),
            "last_minute_max_mb": round(max(last, default=0) / mb, 1),
            "overall_max_mb": round(max(s.kb for s in mine) / mb, 1),
            "processes": len({s.pid for s in mine}),
        }
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_pid[s.pid].append(s)
    pids = {
        str(pid): {
            "kind": seen[0].kind,
            "from_s": seen[0].t,
            "to_s": seen[-1].t,
            "first_mb": round(seen[0].kb / mb, 1),
            "last_mb": round(seen[-1].kb / mb, 1),
            "peak_mb": round(max(s.kb for s in seen) / mb, 1),
        }
        for pid, seen in sorted(by_pid.items())
    }
    overlap = "" if seconds >= 120 else f"sampled {seconds:.0f} s only: the first and the last minute overlap"
    return {"by_kind": kinds, "by_pid": pids, "note": overlap}


# --- the end: drain, then read the log ---------------------------------------------------------


def pool_markers(session_dir: Path) -> int:
    """Sessions pending or claimed in every job's pool."""
    count = 0
    for folder in [*session_dir.glob("pool/*"), *session_dir.glob("pool/*/.claimed")]:
        with contextlib.suppress(OSError):
            count += sum(bool(SESSION_ID_RE.fullmatch(entry.name)) for entry in os.scandir(folder))
    return count


def drain(server: Server, timeout: float = DRAIN_TIMEOUT) -> tuple[bool, float]:
    """Until no session waits or is being processed (a worker may still sit out a restart delay)."""
    started = time.monotonic()
    while pool_markers(server.session_dir) and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return not pool_markers(server.session_dir), round(time.monotonic() - started, 1)


def recheck(server: Server, uploads: list[Upload]) -> dict[str, int]:
    """Ask once more about sessions a client gave up on, now that the pool is drained; returns
    the answers by status, kept apart from the load's (a 404 here is a session the cleaner took
    after its client had given up)."""
    http, statuses = requests.Session(), Counter()
    for upload in uploads:
        if upload.session and not upload.final and not upload.gone:
            with contextlib.suppress(requests.RequestException):
                answer = http.get(
                    server.url(f"/api/v1/sessions/{upload.session}"),
                    headers={"X-Session-Key": upload.key or ""},
                    timeout=30,
                )
                statuses[str(answer.status_code)] += 1
                if answer.status_code in (200, 422):
                    body = answer.json()
                    upload.state, upload.message = body.get("state"), body.get("message")
                    upload.updated = body.get("updated")
    return dict(statuses)


@dataclass
class LogFacts:
    completes: Counter = field(default_factory=Counter)  # session -> `complete` lines
    completed_by: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # session -> worker pids
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    restarts: Counter = field(default_factory=Counter)  # how the child ended -> count
    restarts_by_slot: Counter = field(default_factory=Counter)
    gave_up: list[str] = field(default_factory=list)
    recovered: int = 0
    uwsgi_5xx: list[str] = field(default_factory=list)
    tracebacks: int = 0


def read_log(path: Path) -> LogFacts:
    facts = LogFacts()
    for line in path.read_text(errors="replace").splitlines():
        if match := LINE_COMPLETE.search(line):
            facts.completes[match[2]] += 1
            facts.completed_by[match[2]].append(int(match[1]))
        elif match := LINE_FAILURE.search(line):
            facts.failures[match[2]].append(match[3])
        elif match := LINE_RESTART.search(line):
            facts.restarts[match[3]] += 1
            facts.restarts_by_slot[match[1]] += 1
        elif match := LINE_GAVE_UP.search(line):
            facts.gave_up.append(line.strip())
        elif match := LINE_RECOVERED.search(line):
            facts.recovered += int(match[1])
        elif (match := LINE_UWSGI_5XX.search(line)) and match[3] != "503":  # 503: refusals, counted apart
            facts.uwsgi_5xx.append(line.strip()[-200:])
        elif line.startswith("Traceback"):
            facts.tracebacks += 1
    return facts


def final_state(upload: Upload, facts: LogFacts) -> str | None:
    """``complete``/``failure`` as the client saw it or, for a session it stopped waiting for (or
    asked about again after the drain), as a worker logged it; None: never final."""
    if upload.final:
        return upload.state
    if upload.session in facts.completes:
        return "complete"
    return "failure" if upload.session in facts.failures else None


def lost_entry(upload: Upload, cleaner: CleanerStats, deadline: float) -> dict[str, Any]:
    removed = cleaner.removed.get(upload.session or "")
    if removed is None:
        why = "never reached a final state"
    elif removed - upload.started < deadline:
        why = "removed by the cleaner while its client waited"
    else:
        why = "removed by the cleaner after its client gave up, never processed"
    return {"session": upload.session, "task": upload.task, "photo": upload.photo, "why": why,
            "statuses": upload.statuses[-5:]}  # fmt: skip


def nearest_kill(upload: Upload, kills: list[tuple[float, str, int]]) -> dict[str, Any]:
    """The kill closest to a session's last update. A worker SIGKILLed after it wrote
    ``complete`` but before it logged it leaves a complete session without a log line; a kill a
    few ms after the update is that."""
    entry: dict[str, Any] = {"session": upload.session, "task": upload.task, "updated": upload.updated}
    if upload.updated and kills:
        when = datetime.fromisoformat(upload.updated).timestamp()
        at, slot, pid = min(kills, key=lambda kill: abs(kill[0] - when))
        entry["nearest_kill"] = {"slot": slot, "pid": pid, "seconds_after_update": round(at - when, 3)}
    return entry


def session_report(
    uploads: list[Upload], facts: LogFacts, cleaner: CleanerStats, deadline: float, kills: list[tuple[float, str, int]]
) -> dict[str, Any]:
    """Normal sessions: how each ended, from the clients' answers and the workers' log lines."""
    sessions = [u for u in uploads if u.session]
    lost, zero_lines = [], []
    late: Counter = Counter()
    failed: Counter = Counter()
    for upload in sessions:
        state = final_state(upload, facts)
        if state is None:
            lost.append(lost_entry(upload, cleaner, deadline))
            continue
        if upload.gave_up:
            late[upload.task] += 1
        if state == "complete" and not facts.completes[upload.session]:
            zero_lines.append(nearest_kill(upload, kills))
        elif state == "failure":
            failed[upload.message or "; ".join(facts.failures.get(upload.session, [])) or "?"] += 1
    ours = {u.session for u in sessions}
    return {
        "uploads_with_session": len(sessions),
        "uploads_without_session": len(uploads) - len(sessions),
        "completed": len(sessions) - len(lost) - sum(failed.values()),
        "failed": sum(failed.values()),
        "failure_messages": dict(failed),
        "lost": lost,
        "final_after_client_deadline": dict(late),
        "completed_more_than_once": {s: facts.completed_by[s] for s, n in facts.completes.items() if n > 1},
        "complete_without_log_line": zero_lines,
        "sessions_in_log_unknown_to_clients": len((set(facts.completes) | set(facts.failures)) - ours),
        "gone_while_waiting": sum(u.gone for u in sessions),
    }


def bomb_report(bombs: list[Upload], facts: LogFacts) -> dict[str, Any]:
    outcomes: Counter = Counter()
    details = []
    for bomb in bombs:
        if bomb.session:
            state = bomb.state if bomb.final else ("complete" if bomb.session in facts.completes else None)
            state = state or ("failure" if bomb.session in facts.failures else "not final")
            outcome = f"session {state}"
        else:
            outcome = f"refused {bomb.statuses[-1]}" if bomb.statuses else "no answer"
        outcomes[outcome] += 1
        details.append(
            {
                "at_s": round(bomb.started, 1),
                "outcome": outcome,
                "seconds": bomb.seconds,
                "statuses": bomb.statuses,
                "message": bomb.message,
            }
        )
    ok = all(
        d["outcome"] == "session failure"
        or (re.fullmatch(r"refused (400|413|422)", d["outcome"]) and not (d["message"] or "").startswith("not JSON"))
        for d in details
    )
    times = [d["seconds"] for d in details if d["seconds"] is not None]
    return {
        "sent": len(bombs),
        "outcomes": dict(outcomes),
        "longest_seconds_to_final": max(times, default=None),
        "all_refused_or_failed": ok and len(times) == len(details),
        "each": details,
    }


def http_report(recorder: Recorder) -> dict[str, Any]:
    merged = recorder.statuses["POST"] + recorder.statuses["GET"] + recorder.statuses["DEEPSTACK"]
    five = {code: n for code, n in merged.items() if code.startswith("5")}
    refused = sum(u.refused for u in recorder.uploads + recorder.bombs) + recorder.deepstack_refused
    return {
        "requests": sum(merged.values()),
        "by_status": dict(sorted(merged.items())),
        "post_by_status": dict(sorted(recorder.statuses["POST"].items())),
        "get_by_status": dict(sorted(recorder.statuses["GET"].items())),
        "deepstack_by_status": dict(sorted(recorder.statuses["DEEPSTACK"].items())),
        "refused_503_retry_after": refused,
        "5xx_other_than_refusals": {
            code: left for code, n in five.items() if (left := n - (refused if code == "503" else 0))
        },
        "transport_errors": merged.get("transport error", 0),
    }


def latency_report(uploads: list[Upload], deepstack: list[float]) -> dict[str, Any]:
    report = {}
    for task in ("classify", "detect", "deepstack"):
        if task == "deepstack":
            times = sorted(round(t, 3) for t in deepstack)
        else:
            times = sorted(u.seconds for u in uploads if u.task == task and u.seconds is not None)
        if times:
            report[task] = {
                "answered": len(times),
                "p50_s": times[len(times) // 2],
                "p95_s": times[min(len(times) - 1, int(len(times) * 0.95))],
                "max_s": times[-1],
            }
    return report


# --- the run ------------------------------------------------------------------------------------


def load_photos() -> list[tuple[str, bytes]]:
    photos = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if IMAGES.is_dir() else []
    if not photos:
        raise SystemExit(f"no photos in {IMAGES} (set SCAI_ASSETS to the shared assets folder)")
    return [(p.name, p.read_bytes()) for p in photos]


def thread(target: Any, *args: Any) -> threading.Thread:
    worker = threading.Thread(target=target, args=args, daemon=True)
    worker.start()
    return worker


class Run:
    """The threads of one soak and what they collected."""

    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args, self.server = args, server
        self.clock = Clock()
        self.recorder = Recorder()
        self.tail = LogTail(server.log)
        self.killer = Killer(server, self.tail, args.kill_every)
        self.poisoner = Poisoner(server, self.clock, args.poison_every)
        self.trickle = Trickle("127.0.0.1", server.port, args.trickle_body, args.trickle_headers)
        self.trickled: dict[str, Any] = {}
        self.samples: list[Sample] = []
        self.cleaner = CleanerStats()
        self.deadline = client_deadline(args.keep)

    def go(self, photos: list[tuple[str, bytes]]) -> dict[str, Any]:
        load, attack, sampling = threading.Event(), threading.Event(), threading.Event()
        self.clock = self.poisoner.clock = Clock()
        self.trickle.start()
        clients = [
            Client(i, self.server, photos, self.recorder, self.clock, self.deadline) for i in range(self.args.clients)
        ]
        loaders = [thread(c.run, load) for c in clients]
        cameras = [DeepStackClient(i, self.server, photos, self.recorder) for i in range(self.args.deepstack_clients)]
        loaders += [thread(c.run, load) for c in cameras]
        loaders.append(
            thread(bomb_loop, self.server, self.recorder, self.clock, self.args.bomb_every, self.deadline, load)
        )
        attackers = [thread(self.killer.run, attack), thread(self.clean, attack), thread(self.poisoner.run, load)]
        sampler = thread(sample_loop, self.server, self.clock, sampling, self.samples)
        try:
            self.progress(load)
        finally:
            load.set()
            loaded = self.clock()
            print("stopping clients; waiting for the answers in flight", flush=True)
            for worker in loaders:
                worker.join(self.deadline + 60)
            attack.set()
            for worker in attackers:
                worker.join(200)
            self.trickled = self.trickle.stop().summary()
            drained = drain(self.server)
            sampling.set()
            sampler.join(10)
        return {
            "load_seconds": round(loaded, 1),
            "wind_down_seconds": round(self.clock() - loaded, 1),  # answers in flight, then the drain
            "drained": drained[0],
            "drain_seconds": drained[1],
        }

    def clean(self, stop: threading.Event) -> None:
        self.cleaner = clean_loop(self.server, self.args.keep, self.args.clean_every, self.clock, stop)

    def progress(self, load: threading.Event) -> None:
        """A line every 30 s while the load runs, so a long soak shows it is alive."""
        end = self.args.seconds
        while (left := end - self.clock()) > 0:
            if load.wait(min(30.0, left)):
                return
            with self.recorder.lock:
                done = sum(u.final for u in self.recorder.uploads)
            print(f"  {self.clock():5.0f} s: {done} sessions final, {self.killer.stats.kills} kills", flush=True)


def report(run: Run, ended: dict[str, Any], stopped: dict[str, Any], restart_rule: str) -> dict[str, Any]:
    facts = read_log(run.server.log)
    sessions = session_report(run.recorder.uploads, facts, run.cleaner, run.deadline, run.killer.wall)
    bombs = bomb_report(run.recorder.bombs, facts)
    http = http_report(run.recorder)
    killed = run.killer.stats
    deaths = sum(facts.restarts.values()) + len(facts.gave_up)
    by_sigkill = sum(n for cause, n in facts.restarts.items() if cause.startswith("was killed by SIGKILL"))
    sent = killed.kills + run.poisoner.kills
    unplanned = deaths - min(by_sigkill, sent)  # a crash, or a SIGKILL this script did not send
    result = {
        "args": {k: v for k, v in vars(run.args).items() if k != "json_out"},
        "client_deadline_s": run.deadline,
        "run": ended,
        "http": http,
        "latency": latency_report(run.recorder.uploads, run.recorder.deepstack_seconds),
        "sessions": sessions,
        "workers": {
            "give_up_rule": restart_rule,
            "kills": killed.kills,
            "kills_by_slot": dict(killed.by_slot),
            "kills_skipped_no_worker_up": killed.skipped_no_worker,
            "restarts_logged": sum(facts.restarts.values()),
            "restarts_by_cause": dict(facts.restarts),
            "restarts_by_slot": dict(facts.restarts_by_slot),
            "deaths_not_caused_by_killer": unplanned,
            "given_up": facts.gave_up,
            "sessions_taken_back_from_dead_workers": facts.recovered,
            "tracebacks_in_log": facts.tracebacks,
        },
        "cleaner": {"runs": run.cleaner.runs, "removed": len(run.cleaner.removed), "errors": run.cleaner.errors},
        "bombs": bombs,
        "poison": poison_report(run.poisoner),
        "trickle": run.trickled,
        "rss": rss_summary(run.samples),
        "uwsgi_5xx_lines": facts.uwsgi_5xx[:20],
        "stop": stopped,
    }
    deepstack = http["deepstack_by_status"]
    result["goals"] = {
        "no_5xx": not any(http["5xx_other_than_refusals"].values()) and not facts.uwsgi_5xx,
        "deepstack_all_answered": set(deepstack) <= {"200", "503"}
        and deepstack.get("503", 0) == run.recorder.deepstack_refused,
        "no_transport_errors": http["transport_errors"] == 0,
        "no_lost_sessions": not sessions["lost"],
        "no_duplicate_completions": not sessions["completed_more_than_once"],
        "bombs_refused_or_failed": bombs["all_refused_or_failed"],
        "poison_failed_after_3_workers": result["poison"]["all_failed_after_3_workers"],
        "no_worker_given_up": not facts.gave_up,
        "no_worker_died_unkilled": unplanned == 0,
        "clean_stop": stopped["exit_status"] == 0
        and not stopped["leftover_processes"]
        and not stopped["sigkill_needed"],
    }
    return result


def print_summary(result: dict[str, Any]) -> None:
    http, sessions, workers, bombs = result["http"], result["sessions"], result["workers"], result["bombs"]
    print("\n=== soak summary ===")
    print(
        f"load {result['run']['load_seconds']} s, {result['args']['clients']} clients, then "
        f"{result['run']['wind_down_seconds']} s for the answers in flight and the drain (pool empty: "
        f"{result['run']['drained']}); client deadline {result['client_deadline_s']:g} s"
    )
    print(f"requests {http['requests']}: {http['by_status']}")
    print(
        f"  5xx (not refusals): {http['5xx_other_than_refusals'] or 0}; refused (503 Retry-After): "
        f"{http['refused_503_retry_after']}; transport errors: {http['transport_errors']}"
    )
    for task, row in result["latency"].items():
        print(
            f"  {task}: {row['answered']} answered, p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, "
            f"max {row['max_s']:.2f} s"
        )
    print(
        f"sessions {sessions['uploads_with_session']}: completed {sessions['completed']}, failed "
        f"{sessions['failed']} {sessions['failure_messages'] or ''}, lost {len(sessions['lost'])}"
    )
    for lost in sessions["lost"][:10]:
        print(f"  lost: {lost}")
    print(
        f"  completed more than once: {len(sessions['completed_more_than_once'])}; complete without a log "
        f"line: {len(sessions['complete_without_log_line'])}; final only after the client's deadline: "
        f"{sessions['final_after_client_deadline'] or 0}"
    )
    for entry in sessions["complete_without_log_line"][:5]:
        print(f"    no log line: {entry}")
    print(
        f"workers: {workers['kills']} kills {workers['kills_by_slot']}, skipped "
        f"{workers['kills_skipped_no_worker_up']} (none up); {workers['restarts_logged']} restarts "
        f"logged {workers['restarts_by_cause']}; not by the killer: {workers['deaths_not_caused_by_killer']}; "
        f"given up: {len(workers['given_up'])}; sessions taken back: "
        f"{workers['sessions_taken_back_from_dead_workers']}; tracebacks in the log: {workers['tracebacks_in_log']}"
    )
    print(f"  rule: {workers['give_up_rule']}")
    print(
        f"cleaner: {result['cleaner']['runs']} runs, {result['cleaner']['removed']} sessions removed, "
        f"{len(result['cleaner']['errors'])} errors"
    )
    print(f"bombs: {bombs['sent']} sent {bombs['outcomes']}, longest to final {bombs['longest_seconds_to_final']} s")
    poison = result["poison"]
    print(f"poison: {poison['sent']} sent, all failed after 3 workers: {poison['all_failed_after_3_workers']}")
    for entry in poison["each"]:
        print(f"  {entry}")
    print(f"trickle: {result['trickle']}")
    for kind, row in result["rss"]["by_kind"].items():
        print(
            f"RSS {kind}: max first minute {row['first_minute_max_mb']} MB, last minute "
            f"{row['last_minute_max_mb']} MB, overall {row['overall_max_mb']} MB ({row['processes']} pids)"
        )
    if result["rss"]["note"]:
        print(f"  ({result['rss']['note']})")
    stop = result["stop"]
    print(
        f"stop: status {stop['exit_status']} in {stop['stop_seconds']} s, SIGKILL needed: {stop['sigkill_needed']}, "
        f"leftover processes: {len(stop['leftover_processes'])}"
    )
    print("goals: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in result["goals"].items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument(
        "--deepstack-clients", type=int, default=2, help="cameras on the DeepStack routes besides them (default 2)"
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs (default 600)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between worker kills (default 4)")
    parser.add_argument("--bomb-every", type=float, default=60.0, help="seconds between scan bombs (default 60)")
    parser.add_argument("--clean-every", type=float, default=10.0, help="seconds between scai clean runs")
    parser.add_argument("--poison-every", type=float, default=120.0, help="seconds between poison uploads")
    parser.add_argument("--trickle-body", type=int, default=300, help="slow clients trickling a body (300)")
    parser.add_argument("--trickle-headers", type=int, default=200, help="slow clients trickling headers (200)")
    parser.add_argument("--keep", type=float, default=120.0, help="the cleaner's keep time, s (default 120)")
    parser.add_argument("--port", type=int, help="the portal's port (default: a free one)")
    parser.add_argument("--json-out", type=Path, metavar="PATH", help="also write the summary here as JSON")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temporary folder (log, sessions)")
    args = parser.parse_args()
    if args.keep < 2 * KEEP_MARGIN:
        parser.error(f"--keep must be at least {2 * KEEP_MARGIN:g} s: clients wait up to keep - {KEEP_MARGIN:g} s")
    return args


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    photos = load_photos()
    tmp = Path(tempfile.mkdtemp(prefix="scai-soak-"))
    server = start_server(tmp, args.port or free_port())
    try:
        wait_healthy(server)
        run = Run(args, server)
        run.tail.poll()
        rule = restart_rule(len(workers_of(server.pid)), args.kill_every)
        print(f"healthy; {len(photos)} photos; {rule}", flush=True)
        ended = run.go(photos)
        ended["recheck_after_drain"] = recheck(server, run.recorder.uploads)
    finally:
        stopped = stop_server(server)
    result = report(run, ended, stopped, rule)
    print_summary(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}")
    passed = all(result["goals"].values())
    shutil.rmtree(server.session_dir, ignore_errors=True)  # the uploads: up to GBs in a long soak
    if passed and not args.keep_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"log kept in {server.log}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
