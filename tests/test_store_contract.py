"""One contract, every store: the portal (Flask's test client) and the real Worker with a fake
model, on the session folder, on a real redis-server, and on redis-server with the files in a
real S3 server (SeaweedFS). Every route, id, key and JSON answer must be the same whichever store
holds the sessions."""

from __future__ import annotations

import io
import threading

import pytest
from fakes import POISON, FakeTask, tiny_png, upload, write_fake_usr

from scai.config import CLASSIFICATION, Settings
from scai.portal import create_app
from scai.store.folder import FolderStore
from scai.worker import Worker


@pytest.fixture(params=["folder", "redis", "redis+s3"])
def settings(request, tmp_path) -> Settings:
    store, blobs = "", ""
    if request.param.startswith("redis"):
        import redis

        store = request.getfixturevalue("redis_url").replace("/0", "/1")
        redis.Redis.from_url(store).flushdb()  # the fixture's own server: nobody else's data
    if request.param.endswith("s3"):
        blobs = request.getfixturevalue("s3_blobs")
    usr = write_fake_usr(tmp_path / "usr", "default", "other")
    return Settings(session_dir=tmp_path / "session", usr_dir=usr, store=store, blobs=blobs)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture
def worker(settings):
    return Worker(settings, CLASSIFICATION, task=FakeTask(broken=["other"]))


def test_an_upload_is_answered_through_the_worker(client, worker) -> None:
    photo = tiny_png((1, 2, 3))
    accepted = upload(client, photo)
    assert accepted.status_code == 202
    session_id, key = accepted.json["sessname"], accepted.json["sesskey"]
    waiting = client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key})
    assert waiting.status_code == 202 and waiting.json["state"] == "initialization"
    assert worker.drain() == 1
    done = client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key})
    assert done.status_code == 200 and done.json["predictions"] == [{"label": "#010203", "score": 1.0}]
    assert worker.store.completions(session_id) == 1 and worker.store.pending_claims(CLASSIFICATION) == 0
    assert client.get(f"/api/v1/sessions/{session_id}/input", headers={"X-Session-Key": key}).data == photo
    legacy = client.get(f"/imageclassification/imgclassres?task={session_id}&key={key}")
    assert legacy.status_code == 200 and legacy.json["result"] == {"#010203": "100.0%"}
    assert client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": "x" + key}).status_code == 403
    assert client.get("/api/v1/sessions/d-20261126-" + "0" * 32).status_code == 404


def test_failures_are_the_sessions_own(client, worker) -> None:
    good = upload(client, tiny_png((0, 1, 0))).json
    bad = upload(client, tiny_png(POISON)).json
    broken = upload(client, tiny_png(), "/api/v1/classify?wait=0&model=other").json
    worker.engine("default")  # a batching model: good and bad go in one batch, which is split
    worker.drain()
    answers = {
        name: client.get(f"/api/v1/sessions/{s['sessname']}", headers={"X-Session-Key": s["sesskey"]})
        for name, s in (("good", good), ("bad", bad), ("broken", broken))
    }
    assert {name: a.status_code for name, a in answers.items()} == {"good": 200, "bad": 422, "broken": 422}
    assert answers["bad"].json["message"] == "the model could not process this image"
    assert answers["broken"].json["message"].startswith("model 'other' unavailable")


def test_a_wait_is_woken_by_the_worker(client, worker) -> None:
    accepted = upload(client, tiny_png())
    timer = threading.Timer(0.3, worker.drain)
    timer.start()
    answer = client.get(f"/api/v1/sessions/{accepted.json['sessname']}?wait=20&key={accepted.json['sesskey']}")
    timer.join()
    assert answer.status_code == 200


def test_health_counts_the_queue_and_the_workers(client, worker) -> None:
    for _ in range(3):
        upload(client, tiny_png())
    body = client.get("/healthz").json
    assert body["jobs"]["classify"]["queued"] == 3 and body["jobs"]["classify"]["workers"] == 0
    worker.store.beat(CLASSIFICATION, worker.name)
    worker.drain()
    body = client.get("/healthz")
    assert body.status_code == 200 and body.json["jobs"]["classify"] == {**body.json["jobs"]["classify"], "queued": 0}
    assert body.json["jobs"]["classify"]["workers"] == 1


def test_a_store_that_does_not_answer_is_503_and_the_worker_waits_it_out(tmp_path, monkeypatch) -> None:
    """Redis down: uploads and health answer 503 (retry later); the worker's loop waits and goes
    on rather than dying (a supervisor would give up on a worker that keeps dying)."""
    from conftest import free_port

    settings = Settings(session_dir=tmp_path / "s", usr_dir=write_fake_usr(tmp_path / "usr"), rescan_seconds=0.1)
    settings.store = f"redis://127.0.0.1:{free_port()}/0"
    client = create_app(settings).test_client()
    refused = upload(client, tiny_png())
    assert refused.status_code == 503 and "does not answer" in refused.json["message"]
    assert client.get("/healthz").status_code == 503
    worker = Worker(settings, CLASSIFICATION, task=FakeTask())
    turns = []
    monkeypatch.setattr(worker, "_step", lambda queue: turns.append(1) or worker.store.beat(CLASSIFICATION, "w"))
    threading.Timer(0.5, worker.stop).start()
    worker.run_forever()  # returns when stopped: the failures did not end it
    assert len(turns) >= 2, "it tried again after the first failure"


def test_a_deepstack_answer_leaves_no_session_behind(client, settings) -> None:
    """Nobody can read a DeepStack request's session again (no key is given out): it is removed
    once answered, so a camera's frames do not pile up for a day."""
    worker = Worker(settings, CLASSIFICATION, task=FakeTask())
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            answer = client.post("/v1/vision/scene", data={"image": (io.BytesIO(tiny_png((1, 2, 3))), "image")})
            assert answer.status_code == 200 and answer.json["label"] == "#010203"
            answer.close()  # as a WSGI server does once it has sent the answer: the session goes then
    finally:
        worker.stop()
        thread.join(10)
    if settings.store:
        import redis

        left = list(redis.Redis.from_url(settings.store).scan_iter(match="scai:session:*"))
    else:
        left = FolderStore(settings.session_dir).sessions()
    assert left == []


def test_a_worker_knows_whether_more_sessions_wait(client, worker) -> None:
    """A batch may take every core only when nothing else waits: under load, sibling workers
    each running as many threads as there are cores slow one another."""
    for _ in range(3):
        upload(client, tiny_png((4, 5, 6)))
    with worker.store.queue(CLASSIFICATION) as queue:
        queue.recover()  # the folder's queue lists its pool here, as a worker's loop starts
        seen = []
        for _ in range(3):
            claims = queue.take(1, 1.0)
            seen.append((len(claims), queue.waiting()))
            worker.process(claims)
    assert seen == [(1, True), (1, True), (1, False)]
