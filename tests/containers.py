"""The container harness shared by the container tests: Podman with a containers.conf of its own,
the base image made from Debian's packages, the project's images built (see test_container.py)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import requests
from conftest import ROOT, unavailable

ENGINE_MISSING = "podman, mmdebstrap and runc are needed: apt-get install podman mmdebstrap runc"
BASE = "docker.io/library/debian:bookworm-slim"
IMAGES_BUILT = {"full": "localhost/scai-test:full", "slim": "localhost/scai-test:slim"}
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class Podman:
    """``podman`` with the harness's own containers.conf."""

    def __init__(self, folder: Path) -> None:
        # Limits no higher than this process has (raising them is what such hosts forbid; setting
        # the number of processes even to its own value was refused here, so it gets a lower one)
        files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
        processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[0] // 2, 4096)
        conf = folder / "containers.conf"
        conf.write_text(
            f'[containers]\ndefault_ulimits = ["nofile={files}:{files}", "nproc={processes}:{processes}"]\n'
            '[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n',
            encoding="utf-8",
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        run = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and run.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({run.returncode}): {run.stderr[-3000:]}")
        return run


def healthy(url: str) -> bool:
    """Whether the SCAI at ``url`` answers its /healthz with 200 (a container starting does not yet)."""
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def engine(folder: Path) -> Podman:
    """Podman, ready: skipped (failed under CI=true) without it, the base image made if missing."""
    if not all(shutil.which(tool) for tool in ("podman", "mmdebstrap", "runc")):
        unavailable(ENGINE_MISSING)
    podman = Podman(folder)
    if podman("image", "exists", BASE, check=False).returncode != 0:
        made = subprocess.run(
            [str(ROOT / "deploy" / "container" / "debian-base")], env=podman.env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:]
    return podman


def build(podman: Podman, variant: str, context: Path = ROOT, pull: str = "") -> str:
    """The image of ``variant``; ``pull``: catalogue models pulled into it (``--build-arg PULL``)."""
    started = time.monotonic()
    secret = ["--secret", f"id=ca,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
    tag = IMAGES_BUILT[variant] + (f"-{pull.replace(' ', '-')}" if pull else "")
    options = ["--pull=never", "--format", "docker", *secret, "--target", variant, "-t", tag]
    options += ["--build-arg", f"PULL={pull}"] if pull else []
    podman("build", *options, str(context), timeout=2400)
    size = int(podman("image", "inspect", tag, "--format", "{{.Size}}").stdout)
    print(f"built {tag} in {time.monotonic() - started:.0f} s: {size / 1e6:.0f} MB")
    return tag
