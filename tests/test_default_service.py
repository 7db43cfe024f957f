"""What ``make run`` starts, with the repository's own ``usr/`` configs: every process of it is free
of TensorFlow (its memory maps name no TensorFlow library), and its default models answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import IMAGES, ROOT, Server, needs_assets

pytestmark = [needs_assets, pytest.mark.slow]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from the kernel's children lists."""
    found, waiting = [], [pid]
    while waiting:
        parent = waiting.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = [int(child) for child in (task / "children").read_text().split()]
            found += children
            waiting += children
    return found


def tensorflow_maps(pid: int) -> list[str]:
    """The files of TensorFlow (its Python package, its shared libraries) mapped into ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "/tensorflow/" in line or "libtensorflow" in line})


def test_no_process_of_the_default_service_maps_tensorflow(tmp_path: Path) -> None:
    server = Server(tmp_path / "session", ROOT / "usr", tmp_path / "serve.log")
    try:
        photo = (IMAGES / "grace_hopper.jpg").read_bytes()
        found = requests.post(
            f"{server.url}/api/v1/detect", params={"wait": 30}, files={"photo": ("g.jpg", photo)}, timeout=60
        ).json()
        assert [(d["label"], d["class_id"]) for d in found["detections"]] == [("person", 1)]
        assert found["detections"][0]["score"] > 0.99
        named = server.classify(IMAGES / "grace_hopper.jpg").json()
        assert named["predictions"][0]["label"] in ("suit", "military uniform")  # EfficientNet-Lite0 says suit
        processes = [server.process.pid, *descendants(server.process.pid)]
        assert len(processes) >= 4  # the supervisor, the front, the portal, a worker of each kind
        assert {pid: tensorflow_maps(pid) for pid in processes} == {pid: [] for pid in processes}
    finally:
        server.stop()
