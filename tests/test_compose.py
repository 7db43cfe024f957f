"""``compose.yaml`` brought up for real with podman-compose (marked ``container``): Redis, a portal,
two classification workers and a detection worker, sharing no volume. 100 uploads while one
worker's container is killed from outside (its PID 1, as a crash or the OOM killer would): the
restart policy brings it back, every session completes once (the store's fence counts), and
``down`` leaves nothing running. Redis's own image cannot be pulled here: it is made from Debian's
``redis-server`` package on the same base image."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import IMAGES, ROOT, free_port, needs_assets, wait_for
from containers import Podman, build

pytestmark = [needs_assets, pytest.mark.container]
UPLOADS = 100
REDIS_IMAGE = "localhost/scai-test-redis"


@pytest.fixture(scope="module")
def redis_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("redis-image")
    (folder / "Containerfile").write_text(
        "FROM docker.io/library/debian:bookworm-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\n"
        "WORKDIR /data\n",
        encoding="utf-8",
    )
    podman("build", "--pull=never", "-t", REDIS_IMAGE, str(folder), timeout=600)
    return REDIS_IMAGE


COMPOSE_MISSING = "podman-compose is needed: apt-get install podman-compose"


def compose(podman: Podman, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    if shutil.which("podman-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(COMPOSE_MISSING)
        pytest.skip(COMPOSE_MISSING)
    command = ["podman-compose", "-f", str(ROOT / "compose.yaml"), *args]
    run = subprocess.run(command, env={**podman.env, **env}, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


def test_compose_up_two_workers_one_killed_every_session_once_then_down(podman: Podman, redis_image: str) -> None:
    image, port, project = build(podman, "slim"), free_port(), f"scaitest{os.getpid()}"
    env = {"SCAI_IMAGE": image, "SCAI_REDIS_IMAGE": redis_image, "SCAI_PORT": str(port), "SCAI_CLASSIFY_WORKERS": "2",
           "SCAI_CLAIM_LEASE_SECONDS": "5"}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    compose(podman, env, "-p", project, "up", "-d")
    try:

        def workers() -> int:
            try:
                return requests.get(f"{url}/healthz", timeout=2).json()["jobs"]["classify"]["workers"]
            except (requests.RequestException, ValueError, KeyError):
                return 0

        wait_for(lambda: workers() == 2, 120, "two classification workers on the portal's /healthz")
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
    finally:
        compose(podman, env, "-p", project, "down")
    left = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}")
    assert left.stdout.strip() == "", f"left running: {left.stdout}"
