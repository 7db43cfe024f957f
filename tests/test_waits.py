"""A request waiting on a session that is cleaned away meanwhile gets a 404, not a 500. In process."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from scai.config import Settings
from scai.portal import create_app
from scai.store.folder import FolderStore

JOB = "image_classification"


def test_a_session_removed_during_a_wait_is_404(tmp_path: Path) -> None:
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path / "usr")
    store = FolderStore(settings.session_dir)
    session_id, key = store.create(JOB, "default", b"x", "png", "a.png")
    remover = threading.Timer(0.3, shutil.rmtree, args=(store.path(session_id),))
    remover.start()
    started = time.monotonic()
    response = create_app(settings).test_client().get(f"/api/v1/sessions/{session_id}?key={key}&wait=20")
    remover.join()
    assert response.status_code == 404 and "gone" in response.json["message"]
    assert time.monotonic() - started < 10, "woken by the removal, not the wait's end"


def test_the_key_may_come_in_a_header_and_then_stays_out_of_links(tmp_path: Path) -> None:
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path / "usr")
    store = FolderStore(settings.session_dir)
    session_id, key = store.create(JOB, "default", b"x", "png", "a.png")
    client = create_app(settings).test_client()
    by_header = client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": key})
    assert by_header.status_code == 202 and "key=" not in str(by_header.json["links"]) + by_header.headers["Location"]
    assert client.get(f"/api/v1/sessions/{session_id}/input", headers={"X-Session-Key": key}).status_code == 200
    legacy = client.get(f"/imageclassification/imgclassres?task={session_id}", headers={"X-Session-Key": key})
    assert legacy.status_code == 200
    assert client.get(f"/api/v1/sessions/{session_id}", headers={"X-Session-Key": "wrong"}).status_code == 403
    by_query = client.get(f"/api/v1/sessions/{session_id}?key={key}")  # the original clients' way still works
    assert by_query.status_code == 202 and f"key={key}" in by_query.json["links"]["self"]
