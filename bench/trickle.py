"""Slow clients against ``scai serve``: does a trickle attack slow down everybody else?

    .venv/bin/python bench/trickle.py [--body 300] [--headers 200] [--interval 3] [--seconds 20]
                                      [--scai NAME=COMMAND ...] [--json PATH]

A slow client opens a connection and sends its request one byte every ``--interval`` seconds:
``--body`` of them send whole headers of a 1 MB upload and then trickle its body, ``--headers``
of them never finish their headers. A server that gives each connection a thread from accept() on
is stalled by a few dozen of them (a per-read socket timeout never fires).

For each SCAI (``--scai``, repeatable: ``base=env -C /tmp/base PYTHONPATH=/tmp/base {bin}/scai serve ...``
runs an older tree side by side; {bin}, {port}, {session}, {usr} are filled in), in one run:
start it, then probe it with one client, each probe a normal upload (a 73 KB photo, ``wait=30``)
followed by a ``/healthz``, for ``--seconds`` in each phase: quiet, under the body trickle, under
the header trickle. Reported: p50 and worst latency, failures (no 200 within 30 s), each phase's
p50 over the quiet one, and how the server ended the slow connections (status, seconds held).

As a library, for bench/soak.py (this folder on sys.path):

    from trickle import Trickle
    attack = Trickle("127.0.0.1", port, body=300, headers=200).start()
    ...
    print(attack.stop().summary())
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from compare import IMAGES, Server, free_port, launch, stop, stop_on_sigterm, wait_ready, write_usr

PROBE_TIMEOUT = 30.0  # what the normal upload gave up after
TRICKLED_BODY = 1_000_000  # the Content-Length a body trickler announces (under the 20 MB limit)


# --- the attack ------------------------------------------------------------------------------


@dataclass
class TrickleStats:
    """What the slow clients saw: how often they connected, and how the server ended them."""

    opened: int = 0
    refused: int = 0
    #: how each connection the server ended was ended: "408" (an answer's status), "closed", "reset"
    endings: Counter = field(default_factory=Counter)
    #: seconds each connection the server ended had been open
    held: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        held = sorted(self.held)
        return {
            "opened": self.opened,
            "refused": self.refused,
            "ended_by_server": dict(self.endings),
            "held_s_max": round(held[-1], 1) if held else None,
            "held_s_p50": round(held[len(held) // 2], 1) if held else None,
        }


class Trickle:
    """``body`` + ``headers`` slow connections to host:port, kept up (reopened when the server
    ends one) from ``start()`` until ``stop()``; they run on an event loop in a thread of their own,
    so the caller's threads are free to measure."""

    def __init__(self, host: str, port: int, body: int = 300, headers: int = 200, interval: float = 3.0) -> None:
        self.host, self.port, self.interval = host, port, interval
        self.openings = [self._body_opening()] * body + [self._header_opening()] * headers
        self.stats = TrickleStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self._main: asyncio.Future | None = None

    def _body_opening(self) -> bytes:
        """Whole headers of a 1 MB upload and the first bytes of its body."""
        return (
            f"POST /api/v1/classify HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: multipart/form-data; boundary=trickle\r\n"
            f"Content-Length: {TRICKLED_BODY}\r\n\r\n--trickle\r\n"
        ).encode()

    def _header_opening(self) -> bytes:
        """A request line and a header that never ends."""
        return f"GET /healthz HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-Trickle: ".encode()

    def start(self) -> Trickle:
        self._thread.start()
        return self

    def wait_open(self, timeout: float = 60.0) -> bool:
        """True once every slow connection has been opened at least once."""
        deadline = time.monotonic() + timeout
        while self.stats.opened < len(self.openings):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> TrickleStats:
        if self._thread.is_alive():
            while self._main is None:
                time.sleep(0.01)
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join()
        return self.stats

    def _run(self) -> None:
        async def every_client() -> None:
            self._main = asyncio.gather(*(self._client(i, opening) for i, opening in enumerate(self.openings)))
            await self._main

        try:
            self._loop.run_until_complete(every_client())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _client(self, index: int, opening: bytes) -> None:
        """One slow client: connect, trickle until the server ends it, connect again."""
        await asyncio.sleep(self.interval * index / len(self.openings))  # spread over one interval
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.stats.refused += 1
                await asyncio.sleep(self.interval)
                continue
            self.stats.opened += 1
            began = time.monotonic()
            try:
                ending = await self._trickle(reader, writer, opening)
            finally:
                writer.close()
            self.stats.endings[ending] += 1
            self.stats.held.append(time.monotonic() - began)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opening: bytes) -> str:
        """Send ``opening``, then one byte every interval until the server answers or hangs up."""
        writer.write(opening)
        while True:
            try:
                answer = await asyncio.wait_for(reader.read(64), self.interval)
            except TimeoutError:
                try:
                    writer.write(b"a")
                    await writer.drain()
                except OSError:
                    return "reset"
                continue
            except OSError:
                return "reset"
            return answer.split(b" ", 2)[1].decode(errors="replace") if answer.startswith(b"HTTP/") else "closed"


# --- the probes ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's probes: latencies of the successful ones, failures of the others."""

    name: str
    upload_s: list[float] = field(default_factory=list)
    healthz_s: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    attack: dict[str, Any] = field(default_factory=dict)


def timed(call: Any) -> tuple[float, str | None]:
    """(seconds, None) for an answer of 200, else (seconds, what went wrong)."""
    began = time.monotonic()
    try:
        status = call().status_code
        return time.monotonic() - began, None if status == 200 else str(status)
    except requests.RequestException as error:
        return time.monotonic() - began, type(error).__name__


def probe(base_url: str, photo: bytes, seconds: float, phase: Phase) -> Phase:
    """One client for ``seconds``: a normal upload, then /healthz, again and again (no session
    reused: each request on a new connection, as the attackers' are)."""
    files = {"photo": ("photo.jpg", photo, "image/jpeg")}
    upload = f"{base_url}/api/v1/classify?wait=30"
    calls = {
        "upload": (lambda: requests.post(upload, files=files, timeout=PROBE_TIMEOUT), phase.upload_s),
        "healthz": (lambda: requests.get(f"{base_url}/healthz", timeout=PROBE_TIMEOUT), phase.healthz_s),
    }
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for what, (call, latencies) in calls.items():
            took, failed = timed(call)
            if failed:
                phase.failures[f"{what} {failed}"] += 1
            else:
                latencies.append(took)
    return phase


def run_phase(server: Server, photo: bytes, args: argparse.Namespace, body: int, headers: int, name: str) -> Phase:
    """Probe ``server`` while ``body`` + ``headers`` slow clients trickle (none: the quiet phase).
    The probes start once every slow connection is open and has sent for one interval."""
    phase = Phase(name)
    attack = Trickle("127.0.0.1", server.port, body, headers, args.interval).start() if body + headers else None
    try:
        if attack:
            attack.wait_open()
            time.sleep(args.interval)  # each slow connection has reached the server by now
        probe(f"http://127.0.0.1:{server.port}", photo, args.seconds, phase)
    finally:
        if attack:
            phase.attack = attack.stop().summary()
    return phase


# --- the report ------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def ratio(value: float | None, quiet: float | None) -> str:
    return "-" if value is None or not quiet else f"{value / quiet:.2f}x"


def phase_row(phase: Phase, quiet: Phase) -> dict[str, Any]:
    upload, healthz = median(phase.upload_s), median(phase.healthz_s)
    return {
        "phase": phase.name,
        "uploads": len(phase.upload_s),
        "upload_p50_ms": None if upload is None else round(upload * 1000, 1),
        "upload_max_ms": round(max(phase.upload_s) * 1000, 1) if phase.upload_s else None,
        "upload_p50_ratio": ratio(upload, median(quiet.upload_s)),
        "healthz_p50_ms": None if healthz is None else round(healthz * 1000, 1),
        "healthz_max_ms": round(max(phase.healthz_s) * 1000, 1) if phase.healthz_s else None,
        "healthz_p50_ratio": ratio(healthz, median(quiet.healthz_s)),
        "failures": dict(phase.failures),
        "attack": phase.attack,
    }


def print_report(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(f"{'phase':<24}{'uploads':>8}{'p50 ms':>9}{'max ms':>10}{'/quiet':>8}{'healthz p50':>13}{'max ms':>10}"
          f"{'/quiet':>8}  failures; slow connections")  # fmt: skip
    for row in rows:
        print(
            f"{row['phase']:<24}{row['uploads']:>8}{row['upload_p50_ms'] or '-':>9}{row['upload_max_ms'] or '-':>10}"
            f"{row['upload_p50_ratio']:>8}{row['healthz_p50_ms'] or '-':>13}{row['healthz_max_ms'] or '-':>10}"
            f"{row['healthz_p50_ratio']:>8}  {row['failures'] or 'none'}; {row['attack'] or ''}"
        )


# --- main ------------------------------------------------------------------------------------


def start_scai(name: str, template: str, tmp: Path) -> Server:
    folder = tmp / name
    write_usr(folder / "usr")
    port = free_port()
    bin_folder = Path(sys.executable).parent
    command = template.format(bin=bin_folder, port=port, session=folder / "session", usr=folder / "usr")
    process = launch(name, shlex.split(command), Path.cwd(), dict(os.environ), folder / "scai.log")
    server = Server(name, port, "/healthz", {}, process, folder / "scai.log")
    return server


def measure(name: str, template: str, tmp: Path, photo: bytes, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every phase against one SCAI, started for it and stopped after."""
    server = start_scai(name, template, tmp)
    try:
        wait_ready(server)
        probe(f"http://127.0.0.1:{server.port}", photo, 2.0, Phase("warm-up"))
        plan = [("quiet", 0, 0), (f"{args.body} trickling bodies", args.body, 0)]
        plan.append((f"{args.headers} trickling headers", 0, args.headers))
        phases = [run_phase(server, photo, args, body, headers, label) for label, body, headers in plan]
    finally:
        stop(server)
    return [phase_row(phase, phases[0]) for phase in phases]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body", type=int, default=300, help="slow clients trickling a body (default 300)")
    parser.add_argument("--headers", type=int, default=200, help="slow clients trickling headers (default 200)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between a slow client's bytes")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of probes per phase (default 20)")
    parser.add_argument(
        "--scai",
        action="append",
        metavar="NAME=COMMAND",
        help="a SCAI to measure, repeatable (default: scai={bin}/scai serve --port {port} "
        "--session-dir {session} --usr {usr})",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    servers = args.scai or ["scai={bin}/scai serve --port {port} --session-dir {session} --usr {usr}"]
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    results = {}
    with tempfile.TemporaryDirectory(prefix="scai-trickle-") as folder:
        for entry in servers:
            name, template = entry.split("=", 1)
            results[name] = measure(name, template, Path(folder), photo, args)
            print_report(name, results[name])
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


if __name__ == "__main__":
    main()
