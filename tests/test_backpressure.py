"""A full queue refuses uploads with 503 and Retry-After instead of piling up sessions nobody
will wait for. In process, no models needed: nothing here runs one."""

from __future__ import annotations

import io
from pathlib import Path

from images import encode
from PIL import Image

from scai.config import Settings
from scai.portal import create_app
from scai.store.folder import FolderStore

JOB = "image_classification"


def test_uploads_past_the_queue_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / f"{JOB}.config").write_text("[default]\nGRAPH = never-loaded.tflite\n")
    settings = Settings(session_dir=tmp_path / "session", usr_dir=usr, queue_limit=2)
    client = create_app(settings).test_client()
    photo = encode(Image.new("RGB", (32, 32), "teal"), "PNG")

    def upload() -> object:
        return client.post("/api/v1/classify?wait=0", data={"photo": (io.BytesIO(photo), "p.png")})

    accepted = [upload(), upload()]
    assert [r.status_code for r in accepted] == [202, 202]
    refused = upload()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "2 sessions already wait" in refused.json["message"]
    store = FolderStore(settings.session_dir)
    assert len(store.sessions()) == 2, "a refused upload leaves no session behind"
    claim = store.claim(JOB, accepted[0].json["sessname"])  # a worker takes one: room again
    assert upload().status_code == 202
    store.drop(claim)
