"""``compose.yaml`` brought up for real with podman-compose (marked ``container``): Redis, a portal,
two classification workers, a detection worker and a face worker (its models pulled at build
time), sharing no volume. 100 uploads while one worker's container is killed from outside (its
PID 1, as a crash or the OOM killer would): the restart policy brings it back, every session
completes once (the store's fence counts), a face registered is recognised, and ``down`` leaves
nothing running. Redis's own image cannot be pulled here: it is made from Debian's
``redis-server`` package on the same base image."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import ASSETS, IMAGES, ROOT, free_port, needs_assets, unavailable, wait_for
from containers import Podman, build

pytestmark = [needs_assets, pytest.mark.container]
UPLOADS = 100
REDIS_IMAGE = "localhost/scai-test-redis"
NGINX_IMAGE = "localhost/scai-test-nginx"
FACES = ASSETS / "datasets" / "faces"


def debian_image(podman: Podman, folder: Path, package: str, tag: str) -> str:
    """An image of one Debian package on the base image made from Debian's packages: the peers'
    own images (redis, nginx) cannot be pulled here."""
    (folder / "Containerfile").write_text(
        "FROM docker.io/library/debian:bookworm-slim\n"
        f"RUN apt-get update && apt-get install -y --no-install-recommends {package} && rm -rf /var/lib/apt/lists/*\n"
        "WORKDIR /data\n",
        encoding="utf-8",
    )
    podman("build", "--pull=never", "-t", tag, str(folder), timeout=600)
    return tag


@pytest.fixture(scope="module")
def redis_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    return debian_image(podman, tmp_path_factory.mktemp("redis-image"), "redis-server", REDIS_IMAGE)


@pytest.fixture(scope="module")
def nginx_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    return debian_image(podman, tmp_path_factory.mktemp("nginx-image"), "nginx", NGINX_IMAGE)


COMPOSE_MISSING = "podman-compose is needed: apt-get install podman-compose"


def compose(
    podman: Podman, env: dict[str, str], *args: str, files: tuple[str, ...] = ("compose.yaml",), timeout: float = 300
) -> subprocess.CompletedProcess:
    if shutil.which("podman-compose") is None:
        unavailable(COMPOSE_MISSING)
    command = ["podman-compose", *(option for name in files for option in ("-f", str(ROOT / name))), *args]
    run = subprocess.run(command, env={**podman.env, **env}, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


def test_compose_up_two_workers_one_killed_every_session_once_then_down(podman: Podman, redis_image: str) -> None:
    image, port, project = build(podman, "slim", pull="face"), free_port(), f"scaitest{os.getpid()}"
    env = {"SCAI_IMAGE": image, "SCAI_REDIS_IMAGE": redis_image, "SCAI_PORT": str(port), "SCAI_CLASSIFY_WORKERS": "2",
           "SCAI_FACE_WORKERS": "1", "SCAI_CLAIM_LEASE_SECONDS": "5"}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    compose(podman, env, "-p", project, "up", "-d")
    try:

        def workers(kind: str = "classify") -> int:
            try:
                return requests.get(f"{url}/healthz", timeout=2).json()["jobs"][kind]["workers"]
            except (requests.RequestException, ValueError, KeyError):
                return 0

        wait_for(lambda: workers() == 2, 120, "two classification workers on the portal's /healthz")
        wait_for(lambda: workers("face") == 1, 120, "a face worker (models pulled at build time)")
        photo = (IMAGES / "grace_hopper.jpg").read_bytes()
        victim = f"{project}_classify_1"
        done, killed = [], threading.Event()

        def one(_: int) -> tuple[int, dict]:
            answer = requests.post(f"{url}/api/v1/classify?wait=30", files={"photo": ("g.jpg", photo)}, timeout=60)
            done.append(1)
            if len(done) == 10 and not killed.is_set():
                killed.set()
                pid = podman("inspect", victim, "--format", "{{.State.Pid}}").stdout.strip()
                os.kill(int(pid), 9)
            if answer.status_code == 202:  # held by the killed worker: taken over after the lease
                body = answer.json()
                answer = requests.get(f"{url}/api/v1/sessions/{body['sessname']}", params={"wait": 60},
                                      headers={"X-Session-Key": body["sesskey"]}, timeout=90)  # fmt: skip
            return answer.status_code, answer.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(UPLOADS)))
        assert killed.is_set()
        assert {status for status, _ in answers} == {200}
        assert {body["state"] for _, body in answers} == {"complete"}
        assert len({body["predictions"][0]["label"] for _, body in answers}) == 1
        restarts = podman("inspect", victim, "--format", "{{.RestartCount}} {{.State.Status}}").stdout.split()
        assert restarts[1] == "running" and int(restarts[0]) >= 1, restarts
        redis = f"{project}_redis_1"
        asks = "; ".join(f"redis-cli HGET scai:session:{body['sessname']} completions" for _, body in answers)
        counts = podman("exec", redis, "sh", "-c", asks, timeout=300).stdout.split()
        assert counts == ["1"] * UPLOADS, "every session completed exactly once (the store's fence counts)"
        pending = podman("exec", redis, "redis-cli", "XPENDING", "scai:pool:image_classification", "workers")
        assert pending.stdout.splitlines()[0].strip() == "0", pending.stdout
        people = FACES / "people" / "obama"
        added = requests.post(f"{url}/v1/vision/face/register", data={"userid": "obama"},
                              files={"image": (people / "fr_obama.jpg").read_bytes()}, timeout=60)  # fmt: skip
        assert added.status_code == 200 and added.json()["success"] is True, added.text
        other = (people / "fr_obama2.jpg").read_bytes()
        found = requests.post(f"{url}/v1/vision/face/recognize", files={"image": other}, timeout=60).json()
        assert [face["userid"] for face in found["predictions"]] == ["obama"], found
    finally:
        compose(podman, env, "-p", project, "down")
    left = left_running(podman, project)
    assert left.strip() == "", f"left running: {left}"


def left_running(podman: Podman, project: str) -> str:
    return podman("ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}").stdout


def test_compose_behind_nginx_serves_the_api_static_files_and_its_json_errors(
    podman: Podman, redis_image: str, nginx_image: str
) -> None:
    """compose.nginx.yaml over compose.yaml: nginx with the files ``scai deploy render`` wrote,
    the portal under the rendered uwsgi.ini on a socket volume. Static files come from nginx's
    disk (its ``expires`` header, which the portal does not send), uploads go through to the
    workers, and an upload over the limit gets nginx's JSON 413."""
    image, port, project = build(podman, "slim", pull="face"), free_port(), f"scaitestnginx{os.getpid()}"
    env = {"SCAI_IMAGE": image, "SCAI_REDIS_IMAGE": redis_image, "SCAI_NGINX_IMAGE": nginx_image,
           "SCAI_NGINX_PORT": str(port), "SCAI_PORT": str(free_port())}  # fmt: skip
    files = ("compose.yaml", "compose.nginx.yaml")
    url = f"http://127.0.0.1:{port}"
    compose(podman, env, "-p", project, "up", "-d", files=files)
    try:

        def serving() -> bool:
            try:
                return requests.get(f"{url}/healthz", timeout=2).json()["jobs"]["classify"]["workers"] >= 1
            except (requests.RequestException, ValueError, KeyError):
                return False

        wait_for(serving, 180, "the portal's /healthz through nginx, with a classification worker")
        photo = (IMAGES / "grace_hopper.jpg").read_bytes()
        answer = requests.post(f"{url}/api/v1/classify?wait=30", files={"photo": ("g.jpg", photo)}, timeout=60)
        assert answer.status_code == 200 and answer.json()["state"] == "complete", answer.text
        assert answer.json()["predictions"][0]["label"]
        detected = requests.post(f"{url}/v1/vision/detection", files={"image": ("g.jpg", photo)}, timeout=60)
        assert detected.status_code == 200 and detected.json()["success"] is True, detected.text
        static = requests.get(f"{url}/static/scai.css", timeout=10)
        assert static.status_code == 200 and "max-age=3600" in static.headers.get("Cache-Control", ""), static.headers
        too_large = requests.post(f"{url}/api/v1/classify", files={"photo": ("big.jpg", b"0" * (21 << 20))}, timeout=60)
        assert too_large.status_code == 413 and too_large.json()["status"] == 413, too_large.text
    finally:
        compose(podman, env, "-p", project, "down", "-v", files=files)
    assert left_running(podman, project).strip() == ""
