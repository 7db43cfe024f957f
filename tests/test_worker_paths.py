"""The worker's paths, in process, with a fake model: batching and bisection, broken models, a full
disk, sessions that vanish, job mode's bound. Milliseconds each, no assets needed."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from fakes import POISON, FakeTask, tiny_png

from scai import files
from scai.config import CLASSIFICATION
from scai.store import COMPLETE, FAILURE, PROCESSING, folder
from scai.store.folder import FolderStore
from scai.worker import Worker

JOB = CLASSIFICATION


def queue(store: FolderStore, color: tuple[int, int, int] = (0, 128, 255), model: str = "default") -> str:
    session_id, _ = store.create(JOB, model, tiny_png(color), "png", "a.png")
    return session_id


def test_a_batch_runs_in_one_call_and_every_session_completes_once(worker: Worker) -> None:
    ids = [queue(worker.store, (i, 0, 0)) for i in range(5)]
    worker.engine("default")  # loaded: the worker knows the model batches
    assert worker.drain() == 5
    assert [worker.store.state(i)["result"] for i in ids] == [{f"#{i:02x}0000": "100.0%"} for i in range(5)]
    assert worker.engines["default"][1].calls == [5]
    assert worker.store.pending(JOB) == [] and not list(worker.store.claimed(JOB).iterdir())


def test_one_bad_image_fails_alone_and_the_rest_of_its_batch_completes(worker: Worker) -> None:
    good = [queue(worker.store, (0, i, 0)) for i in range(3)]
    bad = queue(worker.store, POISON)
    worker.engine("default")
    worker.drain()
    states = {i: worker.store.state(i) for i in [*good, bad]}
    assert all(states[i]["state"] == COMPLETE for i in good)
    assert states[bad]["state"] == FAILURE and states[bad]["message"] == "the model could not process this image"
    assert worker.engines["default"][1].calls[0] == 4, "tried as one batch first, then split"


def test_a_model_that_cannot_load_fails_its_sessions_and_not_the_others(settings) -> None:
    worker = Worker(settings, JOB, task=FakeTask(broken=["other"]))
    broken = queue(worker.store, model="other")
    fine = queue(worker.store)
    worker.drain()
    state = worker.store.state(broken)
    assert state["state"] == FAILURE and state["message"].startswith("model 'other' unavailable")
    assert worker.store.state(fine)["state"] == COMPLETE


def test_an_undecodable_upload_fails_with_the_reason(worker: Worker) -> None:
    session_id, _ = worker.store.create(JOB, "default", b"\x89PNG\r\n\x1a\n broken", "png", "a.png")
    worker.drain()
    state = worker.store.state(session_id)
    assert state["state"] == FAILURE and "image" in state["message"]


def test_a_full_disk_sends_the_session_back_and_it_completes_once_space_is_free(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = queue(worker.store)

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "atomic_write", full)
    assert worker.drain() == 1, "the worker took it and lived"
    assert worker.store.state(session_id)["state"] == PROCESSING, "not failed with a false message"
    monkeypatch.undo()  # space is free again
    assert worker.rescan() == 1, "recovery (on its own clock in the loop) takes it back"
    worker.drain()
    assert worker.store.state(session_id)["state"] == COMPLETE


def test_a_session_that_vanishes_while_claimed_is_let_go(worker: Worker) -> None:
    session_id = queue(worker.store)
    (claim,) = [worker.store.claim(JOB, session_id)]
    shutil.rmtree(worker.store.path(session_id))
    worker.process([claim])  # nothing to raise
    assert not (worker.store.claimed(JOB) / session_id).exists()


def test_a_session_removed_after_its_model_ran_does_not_come_back(worker: Worker, monkeypatch) -> None:
    session_id = queue(worker.store)
    original = worker.task.run

    def run_then_vanish(*args: object, **kwargs: object) -> list:
        result = original(*args, **kwargs)
        shutil.rmtree(worker.store.path(session_id))
        return result

    monkeypatch.setattr(worker.task, "run", run_then_vanish)
    worker.drain()
    assert not worker.store.path(session_id).exists() and worker.store.pending(JOB) == []
    assert not (worker.store.claimed(JOB) / session_id).exists()


def test_job_mode_runs_at_most_n_processes_and_the_slot_holder_drains_the_pool(settings) -> None:
    store = FolderStore(settings.session_dir)
    held = [store.take_slot(JOB, 2), store.take_slot(JOB, 2)]
    assert None not in held and store.take_slot(JOB, 2) is None, "a third process would exit at once"
    ids = [queue(store) for _ in range(3)]
    assert Worker(settings, JOB, task=FakeTask()).run_job(slots=2) == 0, "no slot: nothing taken"
    os.close(held.pop())
    assert Worker(settings, JOB, task=FakeTask()).run_job(slots=2) == 3, "one slot free: it drains everything"
    assert all(store.state(i)["state"] == COMPLETE for i in ids)
    os.close(held.pop())


def test_job_mode_takes_back_a_claim_its_predecessor_could_not_finish(settings) -> None:
    """A job process that died, or could not write its result, left a claim: the next one runs it."""
    store = FolderStore(settings.session_dir)
    session_id = queue(store)
    store.release(store.claim(JOB, session_id))
    assert store.pending(JOB) == []
    assert Worker(settings, JOB, task=FakeTask()).run_job(slots=1) == 1
    assert store.state(session_id)["state"] == COMPLETE


def test_a_claim_that_fails_midway_holds_no_lock(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [queue(worker.store, (0, 0, i)) for i in range(2)]
    worker.engine("default")  # a batching model: both are claimed in one go
    real_rename = os.rename

    def rename_once_full(source, target) -> None:
        if str(source).endswith(ids[1]):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(folder.os, "rename", rename_once_full)
    with pytest.raises(OSError), worker.store.queue(JOB, watch=False) as pool:
        pool.take(2)
    monkeypatch.undo()
    worker.rescan()  # what the loop does after a store error: the first claim comes back too
    assert worker.drain() == 2
    assert [worker.store.state(i)["state"] for i in ids] == [COMPLETE, COMPLETE]


def test_a_store_failure_is_not_the_sessions_fault(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store failing while a session is read (Redis down a moment) leaves the session to be
    tried again; it is never failed with the store's message."""
    from scai.errors import StoreUnavailable

    session_id = queue(worker.store)

    def down(*_: object) -> bytes:
        raise StoreUnavailable("the session store does not answer")

    monkeypatch.setattr(worker.store, "read_blob", down)
    with pytest.raises(StoreUnavailable):
        worker.drain()  # the loop catches this, waits and goes on
    monkeypatch.undo()
    assert worker.store.state(session_id)["state"] == PROCESSING
    assert worker.rescan() == 1 and worker.drain() == 1
    assert worker.store.state(session_id)["state"] == COMPLETE
