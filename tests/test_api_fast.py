"""The API in process (Flask's test client) with a worker driven in burst mode and a fake model:
the whole upload -> result path, bad input and a full disk, without assets."""

from __future__ import annotations

import errno
import os

import pytest
from fakes import tiny_png, upload

from scai.store import folder
from scai.store.folder import FolderStore


def test_upload_then_result_through_the_worker(client, worker) -> None:
    accepted = upload(client, tiny_png((1, 2, 3)))
    assert accepted.status_code == 202
    session_id, key = accepted.json["sessname"], accepted.json["sesskey"]
    assert worker.drain() == 1
    done = client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key})
    assert done.status_code == 200 and done.json["predictions"] == [{"label": "#010203", "score": 1.0}]
    legacy = client.get(f"/imageclassification/imgclassres?task={session_id}&key={key}")
    assert legacy.status_code == 200 and legacy.json["result"] == {"#010203": "100.0%"}
    assert client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key[:-1]}).status_code == 403


def test_not_an_image_is_400_and_leaves_no_session(client, settings) -> None:
    refused = upload(client, b"GIF89a but not really")
    assert refused.status_code == 400 and refused.json["status"] == 400 and "image" in refused.json["message"]
    assert FolderStore(settings.session_dir).sessions() == []


def test_an_unknown_model_is_400_json(client) -> None:
    refused = upload(client, tiny_png(), route="/api/v1/classify?model=nope")
    assert refused.status_code == 400 and "unknown model 'nope'" in refused.json["message"]


def test_a_full_disk_is_507_json_and_leaves_no_empty_folder(client, settings, monkeypatch) -> None:
    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder, "write_json", full)  # the upload itself was written, its state not
    refused = upload(client, tiny_png())
    assert refused.status_code == 507, refused.data
    assert refused.json == {
        "error": "Insufficient Storage",
        "message": "the server's disk is full: the upload was not stored; try again later",
        "status": 507,
    }
    store = FolderStore(settings.session_dir)
    assert store.sessions() == [] and store.pending("image_classification") == []
    monkeypatch.undo()
    assert upload(client, tiny_png()).status_code == 202, "uploads work again once space is free"


def test_the_cleaner_leaves_a_session_being_created_alone(settings, monkeypatch) -> None:
    store = FolderStore(settings.session_dir)
    seen = []

    def clean_meanwhile(path, value) -> None:  # the cleaner runs between the upload and its state
        seen.append(FolderStore(settings.session_dir).clean(0))
        original(path, value)

    original = folder.write_json
    monkeypatch.setattr(folder, "write_json", clean_meanwhile)
    session_id, _ = store.create("image_classification", "default", tiny_png(), "png", "a.png")
    assert seen == [([], 1)], "the half-made session was kept, even with a keep time of 0"
    assert store.state(session_id)["state"] == "initialization" and store.pending("image_classification")


@pytest.mark.parametrize("route", ["/", "/docs", "/api/v1/models"])
def test_pages_do_not_reflect_the_host_header(client, route: str) -> None:
    page = client.get(route, headers={"Host": "evil.example"})
    assert page.status_code == 200 and b"evil.example" not in page.data


def test_a_full_disk_at_the_folder_itself_is_507(client, settings, monkeypatch) -> None:
    def no_inodes(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder.Path, "mkdir", no_inodes)
    assert upload(client, tiny_png()).status_code == 507


def job_mode(settings):
    from scai.portal import create_app

    settings.running_mode = "job"
    return create_app(settings).test_client()


def test_job_mode_answers_202_when_no_worker_process_can_start(settings, monkeypatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr("scai.launcher.subprocess.Popen", refuse)
    accepted = upload(job_mode(settings), tiny_png())
    assert accepted.status_code == 202, "stored and queued: a later worker takes it"
    assert FolderStore(settings.session_dir).pending("image_classification") == [accepted.json["sessname"]]


def test_job_mode_starts_a_worker_for_a_waiting_session_whose_worker_died(settings) -> None:
    """The slot holder that would have taken the upload was killed: looking at the session
    starts a worker (here it fails the session: the fake model file does not exist)."""
    from conftest import wait_for

    client, store = job_mode(settings), FolderStore(settings.session_dir)
    holder = store.take_slot("image_classification", settings.worker_processes("image_classification"))
    accepted = upload(client, tiny_png())
    session_id, key = accepted.json["sessname"], accepted.json["sesskey"]
    assert store.pending("image_classification") == [session_id], "the holder would have taken it"
    os.close(holder)  # ... but it died
    status = client.get(f"/api/v1/sessions/{session_id}?wait=20", headers={"X-Session-Key": key})
    assert status.status_code == 422 and "unavailable" in status.json["message"]
    wait_for(lambda: store.take_slot("image_classification", 1), 10, "the job process to exit")


def test_settings_that_would_break_a_worker_are_refused() -> None:
    from scai.config import ConfigError, Settings

    for variable, value in [("SCAI_RESCAN_SECONDS", "0"), ("SCAI_RESCAN_SECONDS", "nan"), ("SCAI_QUEUE_LIMIT", "-1")]:
        with pytest.raises(ConfigError):
            Settings.from_env({variable: value})


def test_a_model_config_that_does_not_parse_is_503_without_server_paths(client, settings, capsys) -> None:
    from scai.cli import main

    (settings.usr_dir / "image_classification.config").write_text("[a]\nGRAPH = x\n[a]\nGRAPH = y\n", encoding="utf-8")
    for answer in (upload(client, tiny_png()), client.get("/api/v1/models"), client.get("/healthz")):
        assert answer.status_code == 503 and "section 'a' already exists" in answer.json["message"]
        assert str(settings.usr_dir) not in answer.text
    assert main(["classify", "x.png", "--usr", str(settings.usr_dir)]) == 2  # restarting will not help
    assert "image_classification.config cannot be read" in capsys.readouterr().err
