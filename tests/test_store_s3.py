"""The Redis store with its files in S3 (``SCAI_BLOBS``), against a real S3 server (SeaweedFS)
and a real redis-server: where the files go, that removal and cleaning delete them, that a
bucket which does not answer is a 503 with Retry-After and loses nothing accepted, and that a
half-given setting stops the service. The contract suite (test_store_contract.py) runs on this
store as on the others."""

from __future__ import annotations

import io
import os
import subprocess
import threading

import pytest
import redis
from conftest import free_port, scai_command, wait_for
from fakes import FakeTask, tiny_png, upload, write_fake_usr
from s3server import BUCKET, S3Server

from scai.config import CLASSIFICATION, Settings
from scai.errors import ConfigError, StoreUnavailable
from scai.portal import create_app
from scai.store import open_store
from scai.store.s3 import S3Blobs, parse_url
from scai.worker import Worker


@pytest.fixture
def settings(redis_url, s3_blobs, tmp_path) -> Settings:
    store = redis_url.replace("/0", "/2")
    redis.Redis.from_url(store).flushdb()
    usr = write_fake_usr(tmp_path / "usr", "default")
    return Settings(session_dir=tmp_path / "session", usr_dir=usr, store=store, blobs=s3_blobs)


def objects(s3_server: S3Server, blobs_url: str) -> list[str]:
    prefix = parse_url(blobs_url).prefix
    return sorted(item.object_name for item in s3_server.client().list_objects(BUCKET, prefix, recursive=True))


def test_the_files_live_in_the_bucket_and_go_with_their_session(settings, s3_server) -> None:
    client, photo = create_app(settings).test_client(), tiny_png((9, 8, 7))
    accepted = upload(client, photo).json
    session_id, key = accepted["sessname"], accepted["sesskey"]
    prefix = parse_url(settings.blobs).prefix
    assert objects(s3_server, settings.blobs) == [f"{prefix}{session_id}/input.png"]
    assert s3_server.client().get_object(BUCKET, f"{prefix}{session_id}/input.png").read() == photo
    assert not redis.Redis.from_url(settings.store).keys("*:blob:*"), "no file in Redis"
    worker = Worker(settings, CLASSIFICATION, task=FakeTask())
    assert worker.drain() == 1
    done = client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key}).json
    assert done["predictions"] == [{"label": "#090807", "score": 1.0}]
    assert client.get(f"/api/v1/sessions/{session_id}/input", headers={"X-Session-Key": key}).data == photo
    assert open_store(settings).remove(session_id) is True
    assert objects(s3_server, settings.blobs) == []


def test_a_batch_claims_its_uploads_read_at_once(settings) -> None:
    """A worker's batch gets its uploads with its claim (read in parallel from the bucket)."""
    client = create_app(settings).test_client()
    photos = {upload(client, tiny_png((n, 1, 2))).json["sessname"]: tiny_png((n, 1, 2)) for n in range(3)}
    claims = open_store(settings).claim(CLASSIFICATION, 8)
    assert {claim.session_id: claim.upload for claim in claims} == photos


def test_cleaning_sweeps_the_files_of_sessions_redis_expired(settings, s3_server) -> None:
    """Redis expires sessions by itself; their files are removed by scai clean's sweep."""
    prefix = parse_url(settings.blobs).prefix
    orphan = f"{prefix}d-20261201-{'a' * 32}/input.jpg"
    s3_server.client().put_object(BUCKET, orphan, io.BytesIO(b"old"), 3)
    fresh = upload(create_app(settings).test_client()).json["sessname"]
    store = open_store(settings)
    store.blobs.sweep(3600)
    assert orphan in objects(s3_server, settings.blobs), "younger than the keep time: kept"
    assert store.blobs.sweep(0) == 2  # both files are older than no time at all
    assert objects(s3_server, settings.blobs) == []
    assert store.state(fresh)["state"] == "initialization", "the session's state is Redis's, untouched"


@pytest.mark.fault
def test_a_bucket_that_does_not_answer_is_a_503_and_loses_nothing_accepted(
    redis_url, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server of its own, stopped and started: uploads meanwhile get 503 with Retry-After in
    JSON, a worker lets its claims go rather than failing them, and once the bucket answers again
    every session accepted before the outage completes exactly once."""
    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        for name, value in server.environ.items():
            monkeypatch.setenv(name, value)
        store_url = redis_url.replace("/0", "/3")
        redis.Redis.from_url(store_url).flushdb()
        settings = Settings(session_dir=tmp_path / "session", usr_dir=write_fake_usr(tmp_path / "usr", "default"),
                            store=store_url, blobs=server.url(), claim_lease_seconds=1, rescan_seconds=0.2)  # fmt: skip
        client = create_app(settings).test_client()
        accepted = [upload(client, tiny_png((n, 0, 0))).json["sessname"] for n in range(3)]
        server.stop()
        refused = upload(client)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.data
        assert "blob store" in refused.json["message"] and "127.0.0.1" not in refused.json["message"]
        worker = Worker(settings, CLASSIFICATION, task=FakeTask())
        with pytest.raises(StoreUnavailable):  # the worker's loop waits and goes on; drain says why
            worker.drain()
        store = open_store(settings)
        assert {store.state(s)["state"] for s in accepted} <= {"initialization", "processing"}, "none failed"
        server.start()
        thread = threading.Thread(target=worker.run_forever, daemon=True)  # recovers past the 1 s lease
        thread.start()
        try:
            wait_for(lambda: all(store.state(s)["state"] == "complete" for s in accepted), 30, "every session")
        finally:
            worker.stop()
            thread.join(10)
        assert [store.completions(s) for s in accepted] == [1, 1, 1]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("blobs", "store", "environ", "says"),
    [
        ("s3://b/p?endpoint=http://127.0.0.1:1", "", {}, "needs a Redis store"),
        ("http://b/p", "redis://127.0.0.1:1/0", {}, "must be s3://"),
        ("s3://b/p?endpoint=ftp://x", "redis://127.0.0.1:1/0", {}, "endpoint must be"),
        ("s3://b/p?endpint=http://x", "redis://127.0.0.1:1/0", {}, "unknown: endpint"),
        ("s3://b/p", "redis://127.0.0.1:1/0", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": " "}, "not blank"),
        ("s3://b/p", "redis://127.0.0.1:1/0", {"AWS_ACCESS_KEY_ID": "k"}, "both"),
    ],
)
def test_a_wrong_or_half_given_blob_setting_stops_the_service(blobs, store, environ, says, monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says):
        open_store(Settings(store=store, blobs=blobs))


def test_scai_serve_stops_at_once_on_a_blob_setting_that_does_not_parse(tmp_path) -> None:
    """Before any child starts (the portal would otherwise restart forever on it)."""
    env = {**os.environ, "SCAI_STORE": "redis://127.0.0.1:1/0", "SCAI_BLOBS": "http://bucket"}
    command = scai_command("serve", "--portal-only", "--port", str(free_port()), "--session-dir", str(tmp_path))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "SCAI_BLOBS must be s3://" in done.stderr, done.stderr[-2000:]


def test_a_blank_blob_setting_stops_the_service() -> None:
    with pytest.raises(ConfigError, match="SCAI_BLOBS is set but blank"):
        Settings.from_env({"SCAI_BLOBS": " "})


def test_without_keys_the_client_is_anonymous(monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    blobs = S3Blobs("s3://bucket/a/b?endpoint=http://127.0.0.1:9&region=eu-west-1")
    assert blobs.name("d-1", "input.jpg") == "a/b/d-1/input.jpg" and blobs.where.region == "eu-west-1"
