"""One bad model section fails only its own sessions: a bad key, a missing file or a format SCAI
does not know (``model.xyz``). The other sections keep serving, the worker keeps running (an
exit would stop every model of the job kind, the default included), and ``/healthz`` names the
broken model; a broken ``default`` makes it 503."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import DETECT_MODELS, IMAGES, Server, needs_assets
from fakes import FakeTask, tiny_png, upload, write_fake_usr

from scai.config import CLASSIFICATION, DETECTION, Settings, load_models
from scai.portal import create_app
from scai.store import FAILURE, SERVER
from scai.store.folder import FolderStore
from scai.worker import Worker

BAD_SECTIONS = """
[size]
GRAPH = default.tflite
INPUT_SIZE = abc

[mean]
GRAPH = default.tflite
INPUT_MEAN = middle

[nograph]
LABELS = labels.txt

[score]
GRAPH = default.tflite
min_score_thresh = high

[onnx]
GRAPH = model.xyz

[gone]
GRAPH = gone.tflite
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The fake usr (``default``, ``other``) with a bad section of every kind added."""
    usr = write_fake_usr(tmp_path / "usr", "default", "other")
    (usr / "model.xyz").write_bytes(b"not a format SCAI knows")
    with (usr / f"{CLASSIFICATION}.config").open("a", encoding="utf-8") as config:
        config.write(BAD_SECTIONS)
    return Settings(session_dir=tmp_path / "session", usr_dir=usr)


def test_a_bad_key_is_the_sections_problem_not_the_files(settings: Settings) -> None:
    models = load_models(settings.usr_dir, CLASSIFICATION)
    assert set(models) == {"default", "other", "size", "mean", "nograph", "score", "onnx", "gone"}
    assert models["default"].problem is None and models["other"].problem is None
    assert "INPUT_SIZE" in models["size"].problem and "INPUT_MEAN" in models["mean"].problem
    assert "names no model" in models["nograph"].problem and "MIN_SCORE_THRESH" in models["score"].problem
    assert models["onnx"].problem is None, "the format is told from the file, when it is loaded"


def test_the_worker_serves_the_good_models_and_fails_only_the_broken_ones_sessions(settings: Settings) -> None:
    client = create_app(settings).test_client()
    worker = Worker(settings, CLASSIFICATION, task=FakeTask())
    worker.preload()  # does not raise: the worker starts
    sent = {name: upload(client, tiny_png(), f"/api/v1/classify?wait=0&model={name}") for name in ("default", "size")}
    assert all(answer.status_code == 202 for answer in sent.values()), "the broken model's uploads are taken"
    worker.drain()
    store = FolderStore(settings.session_dir)
    good, bad = (store.state(sent[name].json["sessname"]) for name in ("default", "size"))
    assert good["state"] == "complete"
    assert bad["state"] == FAILURE and bad["fault"] == SERVER
    assert bad["message"].startswith("model 'size' unavailable: INPUT_SIZE must be")


def test_an_unknown_format_or_a_missing_file_does_not_stop_a_real_worker(settings: Settings) -> None:
    """The real classification task, as ``scai worker`` runs it: its preload used to raise (exit
    status 2, never restarted) at the first such section."""
    worker = Worker(settings, CLASSIFICATION)
    worker.preload(["onnx", "gone"])
    client = create_app(settings).test_client()
    sent = [upload(client, tiny_png(), f"/api/v1/classify?wait=0&model={name}").json for name in ("onnx", "gone")]
    worker.drain()
    store = FolderStore(settings.session_dir)
    onnx, gone = (store.state(answer["sessname"]) for answer in sent)
    assert onnx["state"] == FAILURE and onnx["message"].startswith("model 'onnx' unavailable: cannot tell the format")
    assert gone["state"] == FAILURE and "does not exist" in gone["message"]


def test_health_names_broken_models_and_a_broken_default_is_503(settings: Settings) -> None:
    client = create_app(settings).test_client()
    FolderStore(settings.session_dir).beat(CLASSIFICATION, "host-1")
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json["status"] == "ok", health.json
    broken = health.json["jobs"]["classify"]["broken_models"]
    assert set(broken) == {"size", "mean", "nograph", "score", "onnx", "gone"}
    assert "cannot tell the format of model.xyz" in broken["onnx"] and "does not exist" in broken["gone"]
    assert str(settings.usr_dir) not in str(broken), "no server folder in a public answer"
    (settings.usr_dir / "default.tflite").unlink()
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json["status"].startswith("classify model 'default' unavailable: model file"), health.json


@pytest.mark.slow
@needs_assets
def test_a_detection_section_of_an_unknown_format_leaves_the_others_serving(tmp_path: Path) -> None:
    """The issue's case, on a real ``scai serve``: a model of a format SCAI does not know
    (``model.onnx`` in the issue, which SCAI now loads) added to the detection config.
    The detection worker used to exit with status 2, never restarted: every detection model
    answered 202 forever and the server never became healthy."""
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / "model.xyz").write_bytes(b"a model of a format SCAI does not know")
    (usr / f"{DETECTION}.config").write_text(
        f"[default]\nPATH_TO_CKPT = {DETECT_MODELS / 'ssd_mobilenet_v1_coco_quant.tflite'}\n"
        f"PATH_TO_LABELS = {DETECT_MODELS / 'coco_labels.txt'}\n\n[onnx]\nPATH_TO_CKPT = model.xyz\n",
        encoding="utf-8",
    )
    log = tmp_path / "serve.log"
    server = Server(tmp_path / "session", usr, log, "--workers", "1")  # healthy: the worker runs
    try:
        photo = (IMAGES / "grace_hopper.jpg").read_bytes()

        def detect(model: str) -> dict:
            answer = requests.post(
                f"{server.url}/api/v1/detect",
                params={"model": model, "wait": 30},
                files={"photo": ("p.jpg", photo)},
                timeout=60,
            )
            return answer.json()

        served, failed = detect("default"), detect("onnx")
        assert served["state"] == "complete" and "person" in served["result"]
        assert failed["state"] == FAILURE and failed["message"].startswith("model 'onnx' unavailable: cannot tell")
        health = requests.get(f"{server.url}/healthz", timeout=5)
        assert health.status_code == 200
        assert "cannot tell the format of model.xyz" in health.json()["jobs"]["detect"]["broken_models"]["onnx"]
        assert "not restarting" not in log.read_text()
    finally:
        server.stop()
