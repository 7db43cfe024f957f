"""A request waiting on a session that is cleaned away meanwhile gets a 404, not a 500. In process."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from scai.config import Settings
from scai.portal import create_app
from scai.sessions import SessionStore

JOB = "image_classification"


def test_a_session_removed_during_a_wait_is_404(tmp_path: Path) -> None:
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path / "usr")
    store = SessionStore(settings.session_dir)
    session_id, key = store.create(JOB, "default", b"x", "png", "a.png")
    remover = threading.Timer(0.3, shutil.rmtree, args=(store.path(session_id),))
    remover.start()
    started = time.monotonic()
    response = create_app(settings).test_client().get(f"/api/v1/sessions/{session_id}?key={key}&wait=20")
    remover.join()
    assert response.status_code == 404 and "gone" in response.json["message"]
    assert time.monotonic() - started < 10, "woken by the removal, not the wait's end"
