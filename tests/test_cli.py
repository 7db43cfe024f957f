"""The command line: every command has help, and ``scai classify`` is label_image.py's successor."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import CLASSIFY_MODELS, IMAGES, ROOT, free_port, needs_assets, scai_command

from scai.cli import main
from scai.config import DETECTION, Settings, load_models
from scai.engines.base import Detector
from scai.errors import ConfigError, ScaiError


def scai(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(scai_command(*args), cwd=ROOT, capture_output=True, text=True, check=check)


@pytest.mark.parametrize("command", [[], ["serve"], ["worker"], ["classify"], ["detect"], ["clean"]])
def test_every_command_has_help(command: list[str]) -> None:
    out = scai(*command, "--help").stdout
    assert out.startswith("usage: scai")


def test_worker_flags_keep_their_original_names() -> None:
    out = scai("worker", "--help").stdout
    for flag in ("--runningmode", "--checktimeperoid", "--usedconfig", "--session-dir", "--usr"):
        assert flag in out


@needs_assets
def test_classify_with_a_model_file_and_labels() -> None:
    run = scai(
        "classify", str(IMAGES / "grace_hopper.jpg"), "--top", "3", "--json",
        "--graph", str(CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite"),
        "--labels", str(CLASSIFY_MODELS / "mobilenet_v2_labels.txt"),
    )  # fmt: skip
    top = json.loads(run.stdout)
    assert len(top) == 3 and top[0]["label"] == "military uniform" and abs(top[0]["score"] - 0.930) < 0.002


@needs_assets
def test_classify_with_the_default_model_prints_text() -> None:
    run = scai("classify", str(IMAGES / "parrot.jpg"), "--top", "1")
    assert run.stdout.startswith("macaw: 0.8")


def test_classify_reports_bad_input_without_a_traceback(tmp_path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    run = scai("classify", str(text), check=False)
    assert run.returncode == 1 and "not a readable image" in run.stderr and "Traceback" not in run.stderr
    run = scai("classify", str(text), "--model", "nope", check=False)
    assert run.returncode == 2 and "unknown model 'nope'" in run.stderr


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``scai ARGS`` in this process: its exit status and what it printed on stderr."""
    status = main(list(args))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[default]\nGRAPH = m.tflite\nINPUT_MEAN = half\n", "INPUT_MEAN must be a number or three"),
        ("[default]\nGRAPH = m.tflite\nINPUT_SIZE = big\n", "INPUT_SIZE must be 'N' or 'H,W', not 'big'"),
        ("[default]\nLABELS = l.txt\n", "names no model"),
    ],
)
def test_a_broken_model_section_is_one_line_and_exit_2(tmp_path, capsys, config: str, message: str) -> None:
    (tmp_path / "image_classification.config").write_text(config)
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    status, err = run_main(capsys, "classify", str(tmp_path / "photo.png"), "--usr", str(tmp_path))
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_label_map_item_without_an_id_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "labels.pbtxt").write_text("item { name: 'person' }\n")
    (tmp_path / "object_detection.config").write_text(
        f"[default]\nPATH_TO_CKPT = {tmp_path / 'graph.pb'}\nPATH_TO_LABELS = {tmp_path / 'labels.pbtxt'}\n"
    )

    class Bare(Detector):
        def detect_one(self, image):  # never reached: the label map is read first
            raise AssertionError

    spec = load_models(tmp_path, DETECTION)["default"]
    with pytest.raises(ConfigError, match="label map item without an id") as raised:
        Bare(spec)
    assert isinstance(raised.value, ScaiError) and raised.value.exit_code == 2


def test_a_setting_that_does_not_parse_names_its_variable(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SCAI_BATCH_SIZE", "eight")
    status, err = run_main(capsys, "clean", "--sessionpath", str(tmp_path))
    assert status == 2 and err.startswith("scai: SCAI_BATCH_SIZE='eight' is not valid") and err.count("\n") == 1


@pytest.mark.parametrize("blank", [" ", "", "\n", "\t \n"])
def test_a_blank_key_variable_stops_the_service(tmp_path, blank: str) -> None:
    """Set but blank is a mistake (an empty template, a secret that was not mounted), not a wish to
    run open: ``scai serve`` stops before it listens, with one line, exit 2."""
    env = {**os.environ, "SCAI_API_KEYS": blank, "SCAI_SESSION_DIR": str(tmp_path / "session")}
    run = subprocess.run(
        scai_command("serve", "--port", str(free_port())), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and run.stderr == "scai: SCAI_API_KEYS is set but blank: unset it to turn it off\n"
    assert "SCAI_API_KEYS" not in Settings().to_env(), "an unset key variable is not passed to children as blank"


def test_flags_override_the_environment_which_overrides_the_defaults(monkeypatch) -> None:
    monkeypatch.setenv("SCAI_KEEP_SECONDS", "60")
    assert Settings().keep_seconds == 86400, "Settings() alone is the defaults"
    assert Settings.from_env().keep_seconds == 60
    assert Settings.from_env(keep_seconds=5.0).keep_seconds == 5.0
    assert Settings.from_env(keep_seconds=None).keep_seconds == 60, "a flag not given changes nothing"
    assert Settings.from_env().to_env()["SCAI_KEEP_SECONDS"] == "60.0"
