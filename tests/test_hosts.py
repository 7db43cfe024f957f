"""SCAI on separate hosts, for real (marked ``fault``: .ci/run's second step): redis-server, two
portals and two classification workers, each in a network namespace of its own joined by a
bridge, each with its own temporary folder (tests/netns.py, tests/hostsite.py). Under a
closed-loop load through both portals, one fault at a time:

* a worker host cut off for 10 s (its link down), then back: its claims are taken over after the
  lease, and its late completion, if any, is fenced off: every session completes once;
* a portal cut off from Redis for 10 s while clients wait on it: they get 503, not a hang past
  their wait and not a 500, and the portal serves again once Redis is reachable;
* SIGKILL of a worker host's processes and of a portal's, each started again;
* a worker's link losing 2% of its packets (with 50 ms of delay where the kernel has netem).

Every accepted session (200 or 202) completes exactly once with the reference label.
bench/hosts.py runs the same faults for longer and prints the table the README shows."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from conftest import IMAGES, needs_assets
from hostsite import CLIENT_WAIT, Load, Report, Site, settle, wait
from netns import has_netem, why_not

pytestmark = [needs_assets, pytest.mark.fault]

FAULT_SECONDS = 10
PHOTO = IMAGES / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, usr) -> Site:
    reason = why_not()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    running = Site(tmp_path_factory.mktemp("hosts"), usr)
    try:
        running.start()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def reference(site: Site) -> str:
    answer = requests.post(f"{site.url(site.portals[0])}/api/v1/classify", params={"wait": 30},
                           files={"photo": ("p.jpg", PHOTO.read_bytes())}, timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]["label"]


def under_load(
    site: Site, reference: str, fault: str, make, undo, recovered=None, hold: float = FAULT_SECONDS
) -> tuple[Report, float]:
    """Load, the fault for ``hold`` seconds (its length, not a synchronisation), undone, then the
    load until ``recovered(answers, ended)`` says the affected part serves again (that time is the
    recovery); what it cost once every accepted session is final, and when the fault was made.
    No session completes twice or with another label, whatever the fault."""
    load = Load(site, PHOTO.read_bytes())
    with load.running():
        wait(lambda: sum(a.status == 200 for a in load.answers) >= 5, 60, "answers before the fault")
        made = time.monotonic()
        make()
        time.sleep(hold)
        undo()
        ended = time.monotonic()
        recovery = None
        if recovered is not None:
            wait(lambda: recovered(load.answers, ended), 90, f"recovery from: {fault}")
            recovery = time.monotonic() - ended
    report = settle(site, load, fault, reference, recovery)
    print(report.row())
    assert report.accepted > 0 and report.twice == 0 and report.wrong_label == 0, report
    return report, made


def answered_by(portal):
    """Recovered once ``portal`` answers an upload with 200 after the fault ended."""
    return lambda answers, ended: any(a.portal == portal.name and a.status == 200 and a.ended > ended for a in answers)


def test_a_worker_host_cut_off_loses_nothing_and_nothing_completes_twice(site: Site, reference: str) -> None:
    worker = site.workers[0]
    report, _ = under_load(site, reference, "worker host cut off 10 s",
                           lambda: site.network.cut(worker), lambda: site.network.restore(worker),
                           lambda answers, ended: site.workers_seen(site.portals[0]) == 2)  # fmt: skip
    assert not report.lost and set(report.statuses) <= {200, 202}, report
    assert report.longest_seconds <= CLIENT_WAIT + 5, "no client held past its wait"


def test_a_portal_cut_off_from_redis_answers_503_not_a_hang(site: Site, reference: str) -> None:
    portal = site.portals[0]
    report, _ = under_load(site, reference, "portal cut off from Redis 10 s",
                           lambda: site.network.block(portal, site.redis_host),
                           lambda: site.network.unblock(portal), answered_by(portal))  # fmt: skip
    assert not report.lost and report.statuses[503] > 0 and set(report.statuses) <= {200, 202, 503}, report
    assert report.longest_seconds <= CLIENT_WAIT + 15, "a client held past its wait and the store's timeouts"


def kill(site: Site, *hosts, signal_number: int = signal.SIGKILL) -> None:
    for host in hosts:
        for process in host.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal_number)
                process.wait()


def test_sigkill_of_a_worker_host_and_a_portal_loses_nothing(site: Site, reference: str) -> None:
    worker, portal = site.workers[1], site.portals[1]

    def start_again() -> None:
        site.start_worker(worker)
        site.start_portal(portal)

    report, _ = under_load(site, reference, "SIGKILL of a worker host and a portal", lambda: kill(site, worker, portal),
                           start_again, lambda answers, ended: site.workers_seen(portal) == 2)  # fmt: skip
    assert not report.lost and set(report.statuses) <= {0, 200, 202}, report  # 0: the killed portal refused


def test_a_lossy_worker_link_loses_nothing(site: Site, reference: str) -> None:
    worker, netem = site.workers[0], has_netem()
    applied: list[str] = []
    report, _ = under_load(site, reference, "worker link: 2% loss" + (", 50 ms delay" if netem else ""),
                           lambda: applied.append(site.network.lossy(worker, 2, 50, netem)),
                           lambda: site.network.clear(worker))  # fmt: skip
    print(applied[0])
    assert not report.lost and set(report.statuses) <= {200, 202}, report


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_redis_restarted_under_load_loses_nothing_accepted(site: Site, reference: str, signal_number: int) -> None:
    """appendonly yes, appendfsync everysec; Redis killed and started again at once. Redis writes
    each command to its append-only file before it replies, so what a client was told is in the
    kernel's hands: a killed process (SIGTERM or SIGKILL) loses none of it. (everysec's window, the
    last second or two, is lost only when the machine itself stops before the kernel writes it.)
    Meanwhile clients get 503; nothing accepted is lost or left queued."""

    def restart() -> None:
        kill(site, site.redis_host, signal_number=signal_number)
        site.start_redis()

    name = signal.Signals(signal_number).name
    report, _ = under_load(site, reference, f"Redis restarted ({name})", restart, lambda: None,
                           answered_by(site.portals[0]), hold=0)  # fmt: skip
    assert not report.lost and set(report.statuses) <= {200, 202, 503}, report
