"""Slow clients against a real ``scai serve``: they hold no portal thread, and are cut off.

A client that sends its request a byte at a time once held a portal thread for as long as it
kept sending (uwsgi's socket timeout bounds each read, not the request): a few dozen of them
stalled every upload and ``/healthz``. ``bench/trickle.py`` measures the same at a larger scale."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import IMAGES, ROOT, Server, wait_for

from scai import config

sys.path.insert(0, str(ROOT / "bench"))
from trickle import Trickle  # noqa: E402

pytestmark = pytest.mark.slow

#: Slow clients of each kind: more than the portal has threads.
SLOW = config.auto_processes() * config.PORTAL_THREADS + 8
CLIENT_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, usr: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("front")
    env = {"SCAI_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)}
    running = Server(folder / "session", usr, folder / "serve.log", env=env)
    yield running
    running.stop()


def test_slow_clients_hold_no_thread_and_are_cut_off_at_the_bound(guarded: Server) -> None:
    """Slow clients, more than the portal has threads, trickling bodies and headers a byte every
    half second: /healthz and uploads answer as usual meanwhile, and each slow client is answered
    408 once the client timeout has passed (then connects again)."""
    photo = IMAGES / "grace_hopper.jpg"
    attack = Trickle("127.0.0.1", guarded.port, body=SLOW, headers=SLOW, interval=0.5).start()
    try:
        assert attack.wait_open(10), "the slow clients could not connect"
        began = time.monotonic()
        while time.monotonic() - began < CLIENT_TIMEOUT:  # the slow clients' whole first life
            assert requests.get(f"{guarded.url}/healthz", timeout=2).status_code == 200
            assert guarded.classify(photo, wait=5).status_code == 200
        wait_for(lambda: attack.stats.endings["408"] >= 2 * SLOW, 2 * CLIENT_TIMEOUT, "every slow client cut off")
    finally:
        stats = attack.stop()
    assert set(stats.endings) == {"408"}
    assert max(stats.held) < CLIENT_TIMEOUT + 1.5
