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

import pytest
import requests
from conftest import IMAGES, needs_assets, unavailable
from hostsite import CLIENT_WAIT, Fault, Report, Site, faults, run_fault
from netns import has_netem, why_not

pytestmark = [needs_assets, pytest.mark.fault]

PHOTO = IMAGES / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, usr) -> Site:
    reason = why_not()
    if reason:
        unavailable(reason)
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


@pytest.fixture(scope="module")
def catalogue(site: Site) -> dict[str, Fault]:
    return faults(site, has_netem())


def under_load(site: Site, reference: str, fault: Fault) -> Report:
    """``run_fault`` with the test's photo; no session completes twice or with another label,
    whatever the fault."""
    report, _ = run_fault(site, PHOTO.read_bytes(), reference, fault)
    print(report.row())
    assert report.accepted > 0 and report.twice == 0 and report.wrong_label == 0, report
    return report


def test_a_worker_host_cut_off_loses_nothing_and_nothing_completes_twice(site, reference, catalogue) -> None:
    report = under_load(site, reference, catalogue["worker-cut"])
    assert not report.lost and set(report.statuses) <= {200, 202}, report
    assert report.longest_seconds <= CLIENT_WAIT + 5, "no client held past its wait"


def test_a_portal_cut_off_from_redis_answers_503_not_a_hang(site, reference, catalogue) -> None:
    report = under_load(site, reference, catalogue["portal-cut"])
    assert not report.lost and report.statuses[503] > 0 and set(report.statuses) <= {200, 202, 503}, report
    assert report.longest_seconds <= CLIENT_WAIT, "no client held past its wait"


def test_sigkill_of_a_worker_host_and_a_portal_loses_nothing(site, reference, catalogue) -> None:
    report = under_load(site, reference, catalogue["sigkill"])
    assert not report.lost and set(report.statuses) <= {0, 200, 202}, report  # 0: the killed portal refused


def test_a_lossy_worker_link_loses_nothing(site, reference, catalogue) -> None:
    report = under_load(site, reference, catalogue["lossy"])
    assert not report.lost and set(report.statuses) <= {200, 202}, report


@pytest.mark.parametrize("key", ["redis-sigterm", "redis-sigkill"])
def test_redis_restarted_under_load_loses_nothing_accepted(site, reference, catalogue, key: str) -> None:
    """appendonly yes, appendfsync everysec; Redis killed and started again at once. Redis writes
    each command to its append-only file before it replies, so what a client was told is in the
    kernel's hands: a killed process (SIGTERM or SIGKILL) loses none of it. (everysec's window, the
    last second or two, is lost only when the machine itself stops before the kernel writes it.)
    Meanwhile clients get 503; nothing accepted is lost or left queued."""
    report = under_load(site, reference, catalogue[key])
    assert not report.lost and set(report.statuses) <= {200, 202, 503}, report
