"""The session stores side by side, without a model or HTTP: how fast a session goes from the
portal to a worker and back, and how many items a second one worker drains from a burst.

    .venv/bin/python bench/store.py [--handoffs 500] [--burst 2000] [--blob-kb 70]

For each store (the session folder; Redis Streams on a redis-server this script starts on a free
port; the same with the files in S3, on a SeaweedFS server it starts likewise), in one run:
  * hand-off: the portal's side creates a session with a blob and waits for its result (``wait``);
    a worker process takes it (``queue.take``, blocking) and finishes it. Median and p95 of the
    round trip, one at a time;
  * burst: ``--burst`` sessions are queued first, then one worker process drains them, taking up
    to 8 at a time: items a second.
The worker reads each session's state and upload as the real one does: with the Redis store, from
what its claim read in the same round trip; "reads per call" is the same store read one call at
a time (as before the claim read them), for comparison.
Compare the two stores within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compare import free_port  # noqa: E402  (bench/, this script's folder)

sys.path.insert(0, str(ROOT / "tests"))
from s3server import S3Server  # noqa: E402  (the tests' SeaweedFS harness)

from scai.config import CLASSIFICATION, Settings  # noqa: E402
from scai.store import open_store  # noqa: E402

DONE = {"state": "complete", "message": "complete", "result": {"bench": "100.0%"}}


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
               "--appendonly", "no", "--maxmemory-policy", "noeviction"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return server, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not answer")


def worker(settings: Settings, stop_after: int, ready: mp.Event, per_call: bool = False) -> None:
    """Take sessions, read each one's state and upload as the Worker does, and finish them,
    until ``stop_after`` are done (burst) or forever (hand-off). ``per_call``: read them with
    ``state`` and ``read_blob`` instead of what the claim read (the Redis store before it did)."""
    store = open_store(settings)
    done = 0
    with store.queue(CLASSIFICATION) as queue:
        queue.recover()  # what was queued before this worker started (a worker does this first)
        ready.set()
        while stop_after <= 0 or done < stop_after:
            for claim in queue.take(8, 1.0):
                if per_call:
                    state = store.state(claim.session_id)
                    store.read_blob(claim.session_id, state["input"])
                else:
                    state = store.claimed_state(claim)
                    store.claimed_upload(claim, state["input"])
                store.finish(claim, DONE, state)
                done += 1


def handoffs(settings: Settings, count: int, blob: bytes, per_call: bool) -> list[float]:
    store = open_store(settings)
    ready = mp.Event()
    process = mp.Process(target=worker, args=(settings, 0, ready, per_call), daemon=True)
    process.start()
    ready.wait(30)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            session_id, _ = store.create(CLASSIFICATION, "default", blob, "jpg", "a.jpg")
            state = store.wait(session_id, 10)
            times.append((time.perf_counter() - started) * 1000)
            assert state["state"] == "complete", state
    finally:
        process.terminate()
        process.join()
    return times


def burst(settings: Settings, count: int, blob: bytes, per_call: bool) -> float:
    store = open_store(settings)
    for _ in range(count):
        store.create(CLASSIFICATION, "default", blob, "jpg", "a.jpg")
    ready = mp.Event()
    started = time.perf_counter()
    process = mp.Process(target=worker, args=(settings, count, ready, per_call))
    process.start()
    process.join()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handoffs", type=int, default=500)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--blob-kb", type=int, default=70)
    args = parser.parse_args()
    blob = os.urandom(args.blob_kb * 1024)
    with tempfile.TemporaryDirectory(prefix="scai-bench-store-") as folder:
        tmp = Path(folder)
        server, url = start_redis(tmp)
        s3 = S3Server(tmp / "s3")
        try:
            s3.start()
            os.environ.update(s3.environ)  # the keys, for this process and the workers it forks
            rows = (("folder", "", "", False), ("redis", url, "", False), ("redis, reads per call", url, "", True),
                    ("redis + S3 files", url, s3.url(), False))  # fmt: skip
            for name, store, blobs, per_call in rows:
                for phase in ("handoff", "burst"):  # a fresh store for each phase
                    folder = tmp / name.replace(", ", "-").replace(" ", "") / phase
                    settings = Settings(session_dir=folder, store=store, blobs=blobs)
                    if store:
                        import redis

                        redis.Redis.from_url(store).flushdb()
                    if phase == "handoff":
                        times = sorted(handoffs(settings, args.handoffs, blob, per_call))
                        p95 = times[int(len(times) * 0.95)]
                        print(f"{name:22} hand-off: median {statistics.median(times):.2f} ms, p95 {p95:.2f} ms "
                              f"({len(times)} round trips, {args.blob_kb} KB blobs)", flush=True)  # fmt: skip
                    else:
                        rate = burst(settings, args.burst, blob, per_call)
                        print(f"{name:22} burst of {args.burst}: {rate:,.0f} items/s through one worker", flush=True)
        finally:
            s3.stop()
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
