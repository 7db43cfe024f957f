"""The session folder store: ids, keys, atomic files, exclusive claims, recovery, cleaning."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, age, wait_for

from scai import files
from scai.store import (
    COMPLETE,
    FAILURE,
    MAX_DELIVERIES,
    PROCESSING,
    SessionNotFound,
    is_session_id,
    key_matches,
    new_session_id,
)
from scai.store.folder import FolderStore, wait_until_final

JOB = "image_classification"


def make_session(store: FolderStore) -> tuple[str, str]:
    return store.create(JOB, "default", b"not decoded here", "jpg", "cat.jpg")


def test_ids_are_unguessable_and_path_safe() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_session_id(i) and "/" not in i for i in ids)
    valid = "d-20260101-" + "0" * 32
    for bad in ("../etc", valid[:-1] + "/", valid[:-1] + "\0", "", "pool", valid + "\n", "\n" + valid):
        assert not is_session_id(bad)


def test_create_writes_input_state_and_marker(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    session_id, key = make_session(store)
    folder = store.path(session_id)
    assert (folder / "input.jpg").read_bytes() == b"not decoded here"
    state = store.state(session_id)
    assert state["state"] == "initialization" and state["job"] == JOB and state["filename"] == "cat.jpg"
    assert key not in json.dumps(state), "the key itself must not be stored"
    assert key_matches(state, key) and not key_matches(state, key + "x") and not key_matches(state, None)
    assert store.pending(JOB) == [session_id]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_unknown_and_malformed_ids_are_not_found(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    for bad in ("../../etc/passwd", new_session_id()):
        try:
            store.state(bad)
        except SessionNotFound:
            continue
        raise AssertionError(f"{bad} was found")


def test_a_marker_is_claimed_once(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    session_id, _ = make_session(store)
    first = store.claim(JOB, session_id)
    assert first is not None
    assert store.claim(JOB, session_id) is None
    assert store.pending(JOB) == []
    assert store.recover(JOB) == [], "a live claim must not be taken back"
    store.drop(first)
    assert not list(store.claimed(JOB).iterdir())


def test_claims_of_a_dead_process_are_recovered(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    session_id, _ = make_session(store)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from scai.store.folder import FolderStore; "
            f"c = FolderStore(sys.argv[1]).claim({JOB!r}, sys.argv[2]); print(bool(c), flush=True); "
            "time.sleep(600)",
            str(tmp_path),
            session_id,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        assert store.recover(JOB) == [], "the holder is alive"
    finally:
        holder.kill()
        holder.wait()
    assert store.recover(JOB) == [session_id]
    assert store.pending(JOB) == [session_id]


def test_update_is_atomic_and_keeps_fields(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    session_id, key = make_session(store)
    store.update(session_id, state=COMPLETE, result={"cat": "99.0%"})
    state = store.state(session_id)
    assert state["state"] == COMPLETE and state["result"] == {"cat": "99.0%"} and key_matches(state, key)


def test_a_temporary_name_taken_by_another_process_is_left_to_it(tmp_path: Path, monkeypatch) -> None:
    """Temporary files are named by pid and count: two containers on one volume may share both.
    The one that finds the name taken picks another; it never removes the other's file."""
    monkeypatch.setattr(files, "_temporaries", itertools.count(7))
    theirs = tmp_path / f".process.json.{os.getpid()}.7.tmp"
    theirs.write_bytes(b"half of another writer's state")
    files.atomic_write(tmp_path / "process.json", b'{"state": "complete"}')
    assert (tmp_path / "process.json").read_bytes() == b'{"state": "complete"}'
    assert theirs.read_bytes() == b"half of another writer's state"
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "process.json"]


def test_clean_removes_old_sessions_with_markers_but_not_busy_ones(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    old_done, old_pending, old_busy, old_claimed, fresh = (make_session(store)[0] for _ in range(5))
    for session_id in (old_done, old_pending, old_busy, old_claimed):
        age(store, session_id, 7200)
    store.drop(store.claim(JOB, old_done))
    store.update(old_busy, state=PROCESSING)
    claim = store.claim(JOB, old_claimed)  # a worker holds it, state not yet written

    removed, kept = FolderStore(tmp_path).clean(3600)

    assert sorted(removed) == sorted([old_done, old_pending])
    assert kept == 3
    assert not store.path(old_done).exists() and not (store.pool(JOB) / old_pending).exists()
    assert store.path(old_busy).exists() and store.path(old_claimed).exists() and store.path(fresh).exists()
    assert set(store.pending(JOB)) == {fresh, old_busy}
    store.drop(claim)


def test_clean_goes_on_past_a_session_removed_while_it_runs(tmp_path: Path, monkeypatch) -> None:
    """An answered DeepStack request's session is removed by the portal at any moment: a clean
    that listed it must skip it, not stop (found by the soak: 'No such file or directory')."""
    store = FolderStore(tmp_path)
    vanishing, old = (make_session(store)[0] for _ in range(2))
    age(store, old, 7200)
    real_state = FolderStore.state

    def state(self: FolderStore, session_id: str) -> dict:
        if session_id == vanishing:
            store.remove(session_id)  # gone between the listing and this read
        return real_state(self, session_id)

    monkeypatch.setattr(FolderStore, "state", state)
    removed, kept = FolderStore(tmp_path).clean(3600)
    assert removed == [old] and kept == 0


def test_clean_py_is_an_executable_script(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    old, fresh = make_session(store)[0], make_session(store)[0]
    age(store, old, 100)
    assert os.access(ROOT / "clean.py", os.X_OK)
    run = subprocess.run(
        [str(ROOT / "clean.py"), "--sessionpath", str(tmp_path), "--keeptimeperoid", "50"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        check=True,
    )
    assert f"removed {old}" in run.stdout and "removed 1 sessions, kept 1" in run.stdout
    assert not store.path(old).exists() and store.path(fresh).exists()


def test_a_wait_for_any_change_wakes_when_a_worker_takes_the_session(tmp_path: Path) -> None:
    """'processing' is the claimed marker, not a write to the session: the wait must see it."""
    store = FolderStore(tmp_path)
    session_id, _ = store.create("image_classification", "default", b"x", "jpg", "x.jpg")
    claims = []
    timer = threading.Timer(0.2, lambda: claims.append(store.claim("image_classification", session_id)))
    timer.start()
    started = time.monotonic()
    state = wait_until_final(store, session_id, 10, changed_from="initialization")
    timer.join()
    assert state["state"] == "processing" and time.monotonic() - started < 5, "woken by the claim, not the timeout"
    store.drop(claims[0])


def holder(tmp_path: Path, session_id: str, then: str) -> subprocess.Popen:
    """Another process that claims ``session_id`` as a worker does, prints True, then runs ``then``
    (Python, with the claim as ``c`` and the store as ``s``)."""
    code = (
        "import os, signal, sys; from scai.store.folder import FolderStore; "
        f"s = FolderStore(sys.argv[1]); c = s.claim({JOB!r}, sys.argv[2]); print(bool(c), flush=True); {then}"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), session_id], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_a_session_that_stops_three_workers_fails_and_is_never_handed_out_again(tmp_path: Path) -> None:
    """Each worker that dies holding a session leaves its delivery counted in the marker: after
    3, the recovery fails the session instead of killing a fourth worker."""
    store = FolderStore(tmp_path)
    poison, _ = make_session(store)
    for death in range(1, MAX_DELIVERIES + 1):
        process = holder(tmp_path, poison, "os.kill(os.getpid(), signal.SIGKILL)")
        assert process.stdout.readline().strip() == "True"
        assert process.wait() == -9
        assert store.recover(JOB) == ([poison] if death < MAX_DELIVERIES else [])
    state = store.state(poison)
    assert state["state"] == FAILURE and "the image stopped 3 workers" in state["message"]
    assert state["completions"] == 1 and store.pending(JOB) == [] and store.pending_claims(JOB) == 0


def test_a_session_given_back_on_purpose_is_not_counted(tmp_path: Path) -> None:
    """A full disk or a store error gives the session back: retried every rescan, never failed."""
    store = FolderStore(tmp_path)
    session_id, _ = make_session(store)
    for _ in range(MAX_DELIVERIES + 2):
        claim = store.claim(JOB, session_id)
        assert claim.deliveries == 1
        store.release(claim)
        assert store.recover(JOB) == [session_id]
    claim = store.claim(JOB, session_id)
    assert store.finish(claim, {"state": COMPLETE}) and store.completions(session_id) == 1


def test_a_hung_workers_claim_is_taken_over_after_the_lease_and_its_late_result_fenced_off(tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) holding a claim keeps its lock: after the lease, recovery hands
    the session out again, and the stopped worker, resumed, writes nothing."""
    store = FolderStore(tmp_path, lease=0.5)
    session_id, _ = make_session(store)
    process = holder(
        tmp_path, session_id, "os.kill(os.getpid(), signal.SIGSTOP); print(s.finish(c, {'state': 'complete'}))"
    )
    try:
        assert process.stdout.readline().strip() == "True"
        wait_for(lambda: Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] == "T", what="the stop")
        assert store.recover(JOB) == [], "within its lease"
        assert wait_for(lambda: store.recover(JOB), what="the takeover after the lease") == [session_id]
        claim = store.claim(JOB, session_id)
        assert claim is not None and claim.deliveries == 2, "the hung worker's lock does not follow the session"
        assert store.finish(claim, {"state": COMPLETE, "result": {"by": "the second worker"}})
    finally:
        process.send_signal(signal.SIGCONT)
    assert process.stdout.readline().strip() == "False", "the hung worker's late finish is fenced off"
    assert process.wait(10) == 0
    state = store.state(session_id)
    assert state["result"] == {"by": "the second worker"} and state["completions"] == 1
    assert store.pending(JOB) == [] and store.pending_claims(JOB) == 0
    assert not list(store.claimed(JOB).iterdir()), "no revoked marker is left behind"
