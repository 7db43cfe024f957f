"""The command line: every command has help, and ``scai classify`` is label_image.py's successor."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CLASSIFY_MODELS, IMAGES, ROOT, needs_assets, scai_command


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
