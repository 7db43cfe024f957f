"""What a client is told when the Redis session store fails: that it is unavailable, never Redis'
own text (its address, the command, a session's key), which goes to the log instead. Against a
real redis-server (the fixture's) and a port where none listens."""

from __future__ import annotations

import logging

import pytest
import redis
from conftest import free_port
from fakes import tiny_png, upload, write_fake_usr

from scai.config import Settings
from scai.errors import StoreUnavailable
from scai.portal import create_app
from scai.store.redis_streams import RedisStore

JOB = "image_classification"
#: Redis' words that must not reach a client.
INTERNALS = ("127.0.0.1", "Error", "Command", "HSET", "scai:", "OOM", "maxmemory")


def portal(tmp_path, store_url: str):
    settings = Settings(session_dir=tmp_path / "s", usr_dir=write_fake_usr(tmp_path / "usr"), store=store_url)
    return create_app(settings).test_client()


def assert_told_only_unavailable(message: str, *hidden: str) -> None:
    assert message.startswith("the session store is unavailable"), message
    assert not [word for word in (*INTERNALS, *hidden) if word in message], message


def test_a_store_that_does_not_answer_says_so_and_logs_why(tmp_path, caplog) -> None:
    port = str(free_port())
    caplog.set_level(logging.WARNING, logger="scai.store")
    with pytest.raises(StoreUnavailable) as raised:
        RedisStore(f"redis://127.0.0.1:{port}/0", 60).state("d-20261126-" + "0" * 32)
    assert_told_only_unavailable(raised.value.message, port)
    refused = upload(portal(tmp_path, f"redis://127.0.0.1:{port}/0"), tiny_png())
    assert refused.status_code == 503
    assert_told_only_unavailable(refused.json["message"], port)
    assert port in caplog.text, "the log keeps the address"


@pytest.fixture
def redis_db(redis_url: str):
    """A database of the fixture's server, and the server's ``maxmemory`` restored after the test."""
    yield redis_url.replace("/0", "/2")
    redis.Redis.from_url(redis_url).config_set("maxmemory", 0)


def test_a_store_that_refuses_writes_says_so_and_logs_why(tmp_path, redis_db: str, caplog) -> None:
    """Out of memory (``maxmemory`` 1 byte, no eviction) once the job's stream exists: the upload's
    transaction fails, and redis-py names its command and the session's key."""
    store, client = RedisStore(redis_db, 60), portal(tmp_path, redis_db)
    store.create(JOB, "default", b"x", "png", "a.png")
    assert upload(client, tiny_png()).status_code == 202
    caplog.set_level(logging.WARNING, logger="scai.store")
    store.redis.config_set("maxmemory", 1)
    with pytest.raises(StoreUnavailable) as raised:
        store.create(JOB, "default", b"x", "png", "a.png")
    assert_told_only_unavailable(raised.value.message)
    refused = upload(client, tiny_png())
    assert refused.status_code == 503
    assert_told_only_unavailable(refused.json["message"])
    assert "HSET" in caplog.text and "maxmemory" in caplog.text, "the log keeps Redis' own words"
