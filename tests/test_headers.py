"""Headers on every answer of the portal: no sniffing, no framing, no Referer, a strict policy
for the pages, and uploads served under our own name. In process, no models needed."""

from __future__ import annotations

from pathlib import Path

from scai.config import Settings
from scai.portal import create_app
from scai.store.folder import FolderStore


def test_every_answer_has_the_security_headers(tmp_path: Path) -> None:
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path / "usr")
    client = create_app(settings).test_client()
    for path in ("/", "/docs", "/healthz", "/static/scai.js", "/api/v1/sessions/nonsense"):
        response = client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Referrer-Policy"] == "no-referrer"
    page = client.get("/").headers["Content-Security-Policy"]
    assert "default-src 'self'" in page and "frame-ancestors 'none'" in page and "blob:" in page
    assert "Content-Security-Policy" not in client.get("/healthz").headers, "JSON needs no page policy"


def test_an_upload_is_served_inline_under_our_own_name(tmp_path: Path) -> None:
    settings = Settings(session_dir=tmp_path / "session", usr_dir=tmp_path / "usr")
    store = FolderStore(settings.session_dir)
    session_id, key = store.create("image_classification", "default", b"<html>x</html>", "jpg", "evil.html")
    response = create_app(settings).test_client().get(f"/api/v1/sessions/{session_id}/input?key={key}")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["Content-Disposition"] == "inline; filename=input.jpg"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
