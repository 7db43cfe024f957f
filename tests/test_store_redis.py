"""The Redis Streams session store against a real redis-server (started by the fixture): create,
claim, the completion fence, recovery of a dead worker's entries, poison images, waits, expiry."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time

import pytest
from conftest import free_port, wait_for

from scai import health, liveness
from scai.config import Settings
from scai.errors import SessionNotFound, StoreUnavailable
from scai.store import COMPLETE, FAILURE, MAX_DELIVERIES, PROCESSING
from scai.store.redis_streams import RedisStore

JOB = "image_classification"


@pytest.fixture
def make_store(redis_url: str):
    """Stores on one server under a prefix of their own: each acts as another worker or portal."""
    prefix = f"test{secrets.token_hex(4)}:"

    def make(name: str = "w1", **options: float) -> RedisStore:
        store = RedisStore(redis_url, options.pop("keep_seconds", 3600), prefix=prefix, **options)
        store.consumer = name
        return store

    return make


def test_create_claim_finish(make_store) -> None:
    portal, worker = make_store("portal"), make_store("w1")
    session_id, key = portal.create(JOB, "default", b"\x89PNG photo", "png", "a.png", {"min_score": 0.4})
    state = portal.state(session_id)
    assert state["state"] == "initialization" and state["options"] == {"min_score": 0.4}
    assert portal.read_blob(session_id, "input.png") == b"\x89PNG photo" and portal.queue_depth(JOB) == 1
    (claim,) = worker.claim(JOB, 8)
    assert claim.session_id == session_id and portal.state(session_id)["state"] == PROCESSING
    # the claim's round trip read the state and the upload too; the upload is handed over once
    assert worker.claimed_state(claim) == portal.state(session_id)
    assert worker.claimed_upload(claim, "input.png") == b"\x89PNG photo" and claim.upload is None
    assert worker.claimed_upload(claim, "input.png") == b"\x89PNG photo"  # read again when asked again
    assert portal.queue_depth(JOB) == 0 and portal.pending_claims(JOB) == 1
    assert worker.finish(claim, {"state": COMPLETE, "message": "complete", "result": {"cat": "99.0%"}})
    done = portal.state(session_id)
    assert done["state"] == COMPLETE and done["result"] == {"cat": "99.0%"} and done["created"] == state["created"]
    assert portal.completions(session_id) == 1 and portal.pending_claims(JOB) == 0
    assert portal.redis.xlen(portal._pool(JOB)) == 0, "finished entries leave the stream"


def test_a_worker_that_lost_its_entry_cannot_complete_it(make_store) -> None:
    portal, stalled, rescuer = make_store("portal"), make_store("stalled"), make_store("rescuer", lease_seconds=0)
    session_id, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    (old,) = stalled.claim(JOB, 1)
    (taken,) = rescuer.recover(JOB)
    assert taken.session_id == session_id and taken.deliveries == 2
    assert taken.state is None and rescuer.claimed_state(taken)["state"] == PROCESSING  # read when needed
    assert not stalled.finish(old, {"state": COMPLETE, "message": "late"}), "fenced off: nothing written"
    assert portal.state(session_id)["state"] == PROCESSING
    assert rescuer.finish(taken, {"state": COMPLETE, "message": "complete"})
    assert portal.completions(session_id) == 1 and portal.state(session_id)["message"] == "complete"


def test_an_image_that_stops_every_worker_fails_after_three_deliveries(make_store) -> None:
    portal = make_store("portal")
    session_id, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    make_store("first").claim(JOB, 1)
    for attempt in range(MAX_DELIVERIES - 1):
        assert [c.session_id for c in make_store(f"w{attempt}", lease_seconds=0).recover(JOB)] == [session_id]
    assert make_store("last", lease_seconds=0).recover(JOB) == []
    state = portal.state(session_id)
    assert state["state"] == FAILURE and "stopped 3 workers" in state["message"]
    assert portal.pending_claims(JOB) == 0


def test_waits_wake_on_the_change(make_store) -> None:
    portal, worker = make_store("portal"), make_store("w1")
    session_id, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    claims = []
    threading.Timer(0.3, lambda: claims.extend(worker.claim(JOB, 1))).start()
    started = time.monotonic()
    assert portal.wait(session_id, 20, changed_from="initialization")["state"] == PROCESSING
    threading.Timer(0.3, lambda: worker.finish(claims[0], {"state": COMPLETE, "message": "complete"})).start()
    assert portal.wait(session_id, 20)["state"] == COMPLETE
    assert time.monotonic() - started < 5, "woken by the changes, not by the deadline"


def test_a_claim_waits_for_new_work(make_store) -> None:
    portal, worker = make_store("portal"), make_store("w1")
    assert worker.claim(JOB, 4, block_seconds=0.2) == []
    threading.Timer(0.3, lambda: portal.create(JOB, "default", b"x", "png", "a.png")).start()
    assert len(worker.claim(JOB, 4, block_seconds=10)) == 1


def test_sessions_expire_with_their_keep_time(make_store) -> None:
    portal = make_store("portal", keep_seconds=1)
    session_id, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    assert portal.redis.ttl(portal._session(session_id)) == 1
    wait_for(lambda: not portal.redis.exists(portal._session(session_id)), 5, "the session to expire")
    with pytest.raises(SessionNotFound):
        portal.state(session_id)
    worker = make_store("w1")
    (claim,) = worker.claim(JOB, 1)  # its entry was still queued: the worker lets it go
    assert not worker.finish(claim, {"state": COMPLETE}), "nothing written: not reported as complete"
    assert portal.pending_claims(JOB) == 0
    assert not portal.redis.exists(portal._session(session_id)), "nothing written back for a gone session"


def test_an_unreachable_server_is_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", 60)
    with pytest.raises(StoreUnavailable) as raised:
        store.state("d-20261126-" + "0" * 32)
    assert raised.value.http_status == 503 and not store.healthy()
    with pytest.raises(StoreUnavailable):  # a wait subscribes first: that too is a 503, not a 500
        store.wait("d-20261126-" + "0" * 32, 1)


def test_clean_removes_old_sessions_but_not_busy_ones(make_store) -> None:
    portal, worker = make_store("portal"), make_store("w1")
    old_done, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    (claim,) = worker.claim(JOB, 1)
    worker.finish(claim, {"state": COMPLETE, "message": "complete"})
    busy, _ = portal.create(JOB, "default", b"x", "png", "a.png")
    worker.claim(JOB, 1)
    removed, kept = portal.clean(0)
    assert removed == [old_done] and kept == 1
    assert not portal.redis.exists(portal.blobs.key(old_done, "input.png"))
    assert portal.state(busy)["state"] == PROCESSING


def test_recovered_work_is_not_taken_over_again_while_in_hand(make_store) -> None:
    """A worker that took over a dead worker's entries runs them before it recovers more: they
    are never handed out a second time meanwhile and counted as poison."""
    portal = make_store("portal")
    ids = [portal.create(JOB, "default", b"x", "png", "a.png")[0] for _ in range(3)]
    make_store("dead").claim(JOB, 3)
    rescuer = make_store("rescuer", lease_seconds=0.05)
    time.sleep(0.1)  # the dead worker's entries idle past the lease
    with rescuer.queue(JOB) as queue:
        assert queue.recover() == 3
        time.sleep(0.1)  # past the lease again
        assert queue.recover() == 0 and len(queue.backlog) == 3
        claims = queue.take(8)
    assert sorted(c.session_id for c in claims) == sorted(ids)
    assert all(rescuer.finish(c, {"state": COMPLETE, "message": "complete"}) for c in claims)
    assert {portal.state(i)["state"] for i in ids} == {COMPLETE}


def test_dead_workers_are_forgotten(make_store, monkeypatch) -> None:
    """Every restart is a new worker name: heartbeats and stream consumers of workers long
    silent are removed, so killed workers do not pile up in Redis."""
    portal, worker = make_store("portal"), make_store("w1")
    worker.beat(JOB, "long-gone")
    portal.create(JOB, "default", b"x", "png", "a.png")
    (claim,) = worker.claim(JOB, 1)
    worker.finish(claim, {"state": COMPLETE})
    monkeypatch.setattr("scai.store.redis_streams.FORGET_SECONDS", 0.05)
    time.sleep(0.1)
    worker.beat(JOB, "alive")
    assert portal.redis.zrange(portal._pool(JOB).replace("pool", "workers"), 0, -1) == [b"alive"]
    make_store("rescuer").recover(JOB)
    names = [c["name"] for c in portal.redis.xinfo_consumers(portal._pool(JOB), "workers")]
    assert b"w1" not in names


def test_an_unreadable_state_fails_its_session_not_the_batch(make_store, tmp_path) -> None:
    """A claim reads the states of its batch; one that does not parse is read again by the worker,
    which fails that session alone (the worker's guarantee), and the others complete."""
    from fakes import FakeTask, tiny_png, write_fake_usr

    from scai.config import Settings
    from scai.worker import Worker

    portal = make_store("portal")
    ids = [portal.create(JOB, "default", tiny_png((i, 2, 3)), "png", "a.png")[0] for i in range(3)]
    portal.redis.hset(portal._session(ids[1]), "state", b"{not json")
    settings = Settings(session_dir=tmp_path / "s", usr_dir=write_fake_usr(tmp_path / "usr"))
    worker = Worker(settings, JOB, task=FakeTask(), store=make_store("w1"))
    worker.engine("default")  # a batching model: the three are claimed together
    assert worker.drain() == 3
    assert [portal.state(i)["state"] for i in ids] == [COMPLETE, FAILURE, COMPLETE]
    assert portal.state(ids[1])["message"].startswith("internal error: unreadable session state")
    assert portal.pending_claims(JOB) == 0


def test_health_names_a_store_out_of_memory_and_counts_only_live_local_workers(make_store, tmp_path) -> None:
    """A Redis out of memory answers PING but refuses every upload: /healthz said "no live
    classify worker" (their beats failed too). Now it names the store. And a worker of this
    machine that died is not counted, however fresh its last beat."""
    store = make_store("portal")
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path, store="redis://127.0.0.1/0")
    code = "from scai import liveness; print(liveness.own_name())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    store.beat(JOB, dead.stdout.strip())
    store.beat(JOB, liveness.own_name())
    store.beat(JOB, "elsewhere-1")
    assert store.live_workers(JOB, 15) == 2, "the dead local worker is not counted"
    assert store.redis.zcard(store._workers(JOB)) == 2, "and its heartbeat is removed"
    store.redis.config_set("maxmemory", 1)
    try:
        assert store.problem() == "session store refuses writes (out of memory or read-only)"
        body, status = health.report(settings, store)
        assert status == 503 and body["status"] == store.problem()
    finally:
        store.redis.config_set("maxmemory", 0)
    assert store.problem() is None
