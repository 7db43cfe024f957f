"""The supervisor on plain child processes: restart with a log line, give up where restarting
cannot help, stop everything on request. No models needed."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from conftest import wait_for

from scai.supervisor import EXIT_CONFIG, Child, Supervisor


def child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code])


def test_a_child_that_dies_is_restarted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor([child("sleeper", "import time; time.sleep(60)")])
    supervisor.start()
    try:
        first = supervisor.children[0].process
        first.kill()
        caplog.set_level(logging.WARNING, "scai.supervisor")
        wait_for(lambda: supervisor.check() or "killed by SIGKILL" in caplog.text, 10, "the death to be logged")
        assert "restarting it in 1 s" in caplog.text
        wait_for(lambda: supervisor.check() or supervisor.alive(), 10, "the restart")
        assert supervisor.children[0].process.pid != first.pid
    finally:
        supervisor.stop(timeout=5)
    assert not supervisor.alive()


def test_a_configuration_error_is_not_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "scai.supervisor")
    supervisor = Supervisor([child("broken", f"raise SystemExit({EXIT_CONFIG})")])
    supervisor.start()
    wait_for(lambda: supervisor.check() or supervisor.children[0].given_up, 10, "the supervisor to give up")
    assert "not restarting it" in caplog.text and supervisor.children[0].restart_at is None


def test_too_many_failures_in_the_window_stop_the_restarts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "scai.supervisor")
    supervisor = Supervisor([child("crasher", "raise SystemExit(1)")], burst=1, window=60)
    supervisor.start()
    wait_for(lambda: supervisor.check() or supervisor.children[0].given_up, 10, "the supervisor to give up")
    assert "exited with status 1; 1 failures in 60 s: not restarting it" in caplog.text


def test_a_child_killed_after_it_started_well_is_always_restarted_quickly(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed every now and then (out of memory, kill -9) is not given up on."""
    monkeypatch.setattr("scai.supervisor.STARTED_SECONDS", 0.3)
    caplog.set_level(logging.WARNING, "scai.supervisor")
    supervisor = Supervisor([child("sleeper", "import time; time.sleep(60)")], burst=2, window=60)
    supervisor.start()
    try:
        sleeper = supervisor.children[0]
        for _ in range(4):
            started = sleeper.process
            wait_for(lambda: time.monotonic() - sleeper.started_at > 0.3, 5, "a good start")
            started.kill()
            wait_for(lambda s=started: supervisor.check() or sleeper.process not in (None, s), 10, "the restart")
        assert not supervisor.children[0].given_up and caplog.text.count("restarting it in 1 s") == 4
    finally:
        supervisor.stop(timeout=5)


def test_stop_terminates_every_child() -> None:
    supervisor = Supervisor([child(f"sleeper {i}", "import time; time.sleep(60)") for i in range(3)])
    supervisor.start()
    processes = [c.process for c in supervisor.children]
    supervisor.stop(timeout=5)
    assert all(p.poll() is not None for p in processes)


def test_run_ends_when_nothing_is_left_to_supervise() -> None:
    """As systemd's StartLimitBurst: a unit whose workers all gave up fails, with their reason."""
    supervisor = Supervisor([child("broken", f"raise SystemExit({EXIT_CONFIG})")])
    supervisor.start()
    assert supervisor.run(interval=0.05) == EXIT_CONFIG
    crashing = Supervisor([child("crasher", "raise SystemExit(1)")], burst=1)
    crashing.start()
    assert crashing.run(interval=0.05) == 1


def test_an_essential_child_given_up_stops_the_others() -> None:
    portal = Child("portal", [sys.executable, "-c", "raise SystemExit(2)"], essential=True)
    supervisor = Supervisor([portal, child("sleeper", "import time; time.sleep(60)")])
    supervisor.start()
    sleeper = supervisor.children[1].process
    assert supervisor.run(interval=0.05) == EXIT_CONFIG
    assert sleeper.poll() is not None, "the worker was stopped with it"


BEATS = "import os; from scai.supervisor import beat; beat(); "


def test_a_worker_that_serves_and_is_then_killed_by_its_upload_is_never_given_up_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its first heartbeat says it started well, however soon it dies: an upload that kills
    workers fails after 3 of them (see ``scai.store``); the job kind must not go down for good."""
    caplog.set_level(logging.WARNING, "scai.supervisor")
    victim = Child("victim", [sys.executable, "-c", BEATS + "os.kill(os.getpid(), 9)"], hang_seconds=60)
    supervisor = Supervisor([victim], burst=3, window=60)
    supervisor.start()
    try:
        wait_for(lambda: supervisor.check() or caplog.text.count("killed by SIGKILL") >= 6, 30, "6 deaths")
        assert not victim.given_up and caplog.text.count("restarting it in 1 s") >= 6
    finally:
        supervisor.stop(timeout=5)


def test_a_hung_worker_is_killed_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    """A worker that stops beating (SIGSTOP, stuck in a model) is killed after ``hang_seconds``."""
    caplog.set_level(logging.WARNING, "scai.supervisor")
    hung = Child("hung", [sys.executable, "-c", BEATS + "import signal; os.kill(os.getpid(), signal.SIGSTOP)"])
    hung.hang_seconds = 1.0
    supervisor = Supervisor([hung], burst=10, window=60)
    supervisor.start()
    try:
        first = hung.process
        wait_for(lambda: supervisor.check() or "it hangs; killing it" in caplog.text, 15, "the hang to be seen")
        wait_for(lambda: supervisor.check() or hung.process not in (None, first), 10, "the restart")
        assert first.returncode == -9 and "restarting it in 1 s" in caplog.text
    finally:
        supervisor.stop(timeout=5)
