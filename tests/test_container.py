"""The container image, built and run for real with Podman (marked ``container``: ``make test``
leaves it out, ``.ci/run`` runs it as its second step).

No registry is reachable, so the base image is made first from Debian's packages (mmdebstrap, then
``podman import`` as ``debian:bookworm-slim``), and the project's Dockerfile is built with
``--pull=never``. Where the host forbids raising resource limits or lacks the cgroup layout crun
wants, the harness runs Podman with a containers.conf of its own (runc, cgroupfs, the limits this
process already has), never by changing the host. Behind an HTTPS-intercepting proxy (as here), the
host's CA bundle goes in as a build secret, and a test checks it is in no layer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import IMAGES, free_port, needs_assets, wait_for
from containers import CA_BUNDLE, Podman, build, healthy

pytestmark = [needs_assets, pytest.mark.container]


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    return build(podman, "full")


@pytest.fixture
def running(podman: Podman, image: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The image started as ``docker run`` starts it, with a named session volume; its URL."""
    name, port, volume = f"scai-test-{os.getpid()}-{free_port()}", free_port(), f"scai-test-session-{os.getpid()}"
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5001", "-v", f"{volume}:/opt/scai/session", image)
    url = f"http://127.0.0.1:{port}"
    try:
        yield name, url
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)


def test_the_image_alone_serves_checks_its_health_and_stops_losing_nothing(podman: Podman, running) -> None:
    name, url = running
    started = time.monotonic()
    wait_for(lambda: healthy(url), 120, "the container's /healthz")
    print(f"healthy {time.monotonic() - started:.1f} s after start")
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    classified = requests.post(f"{url}/api/v1/classify?wait=30", files={"photo": ("g.jpg", photo)}, timeout=60)
    assert classified.status_code == 200 and classified.json()["predictions"], classified.text
    found = requests.post(f"{url}/v1/vision/detection", files={"image": photo}, timeout=60).json()
    assert [p["label"] for p in found["predictions"]] == ["person"], found
    assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK says healthy"
    top = podman("top", name, "user", "pid", "args").stdout.splitlines()[1:]
    assert top[0].split()[:3] == ["scai", "1", "tini"] and all(line.split()[0] == "scai" for line in top)
    queued = []
    for _ in range(20):  # answered at once: they wait in the session volume when the stop comes
        sent = requests.post(f"{url}/api/v1/detect?wait=0", files={"photo": ("g.jpg", photo)}, timeout=30).json()
        queued.append((sent["sessname"], sent["sesskey"]))
    stopping = time.monotonic()
    podman("stop", "-t", "20", name, timeout=60)
    stopped = time.monotonic() - stopping
    state = json.loads(podman("inspect", name, "--format", "{{json .State}}").stdout)
    assert stopped < 20 and state["ExitCode"] == 0, (stopped, state)
    assert not podman("top", name, check=False).stdout.strip(), "nothing left running"
    podman("start", name)
    wait_for(lambda: healthy(url), 120, "/healthz after a restart")
    for session_id, key in queued:
        answer = requests.get(f"{url}/api/v1/sessions/{session_id}", params={"wait": 60},
                              headers={"X-Session-Key": key}, timeout=90)  # fmt: skip
        assert answer.status_code == 200 and answer.json()["state"] == "complete", answer.text


def test_the_slim_image_serves_without_tensorflow(podman: Podman, image: str) -> None:
    """Built after the full one (the converted detector's stage is shared): the default models serve, no
    TensorFlow is in it, and it stays under 700 MB, the full one under 2.5 GB."""
    slim = build(podman, "slim")
    assert int(podman("image", "inspect", slim, "--format", "{{.Size}}").stdout) < 700e6
    assert int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout) < 2.5e9
    probe = "import importlib.util as u; print(u.find_spec('tensorflow') is None, u.find_spec('dlib') is not None)"
    assert podman("run", "--rm", "--entrypoint", "python3.11", slim, "-c", probe).stdout.split() == ["True", "True"]
    name, port = f"scai-slim-{os.getpid()}", free_port()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5001", slim)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url), 120, "the slim container's /healthz")
        photo = (IMAGES / "grace_hopper.jpg").read_bytes()
        found = requests.post(f"{url}/v1/vision/detection", files={"image": photo}, timeout=60).json()
        assert [p["label"] for p in found["predictions"]] == ["person"], found
        named = requests.post(f"{url}/api/v1/classify?wait=30", files={"photo": ("g.jpg", photo)}, timeout=60)
        assert named.json()["predictions"], named.text
    finally:
        podman("rm", "-f", name, check=False)


def test_no_layer_holds_the_build_secret(podman: Podman, image: str) -> None:
    """The host's CA bundle came in as a secret: the certificates only the host trusts (the
    intercepting proxy's) are in no file of the image nor in its layers' history, and no secret
    file stayed behind."""
    if not CA_BUNDLE.is_file():
        pytest.skip("no host CA bundle: nothing was given as a secret")
    debian = podman("run", "--rm", "--entrypoint", "cat", image, str(CA_BUNDLE)).stdout
    host_only = [cert for cert in _certificates(CA_BUNDLE.read_text()) if cert not in debian]
    if not host_only:
        pytest.skip("the host trusts no certificate Debian does not: nothing to look for")
    probes = [cert.split()[2] for cert in host_only]  # a line of each certificate's body
    search = " ".join(f"-e '{probe}'" for probe in probes)
    skip = "--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev"
    found = podman(
        "run", "--rm", "--entrypoint", "sh", image, "-c", f"grep -rlF {search} / {skip}; true", timeout=600
    ).stdout
    assert found.strip() == "", f"host-only certificates found in the image: {found[:500]}"
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert not any(probe in history for probe in probes) and "BEGIN CERTIFICATE" not in history
    assert (
        podman("run", "--rm", "--entrypoint", "test", image, "!", "-e", "/run/secrets/ca", check=False).returncode == 0
    )


def _certificates(bundle: str) -> list[str]:
    return [part.split("-----END CERTIFICATE-----")[0] for part in bundle.split("-----BEGIN CERTIFICATE-----")[1:]]
