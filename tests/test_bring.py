"""``scai models add``: a model a user brings is checked by loading it, then served by name; one
that cannot be understood is refused in one line, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CLASSIFY_MODELS, DETECT_MODELS, IMAGES, needs_assets

from scai.cli import main
from scai.config import DETECTION, load_models

pytestmark = needs_assets
LABELS = DETECT_MODELS / "coco80_labels.txt"


def scai(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_yolov8_export_is_added_recognised_and_served(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = DETECT_MODELS / "yolov8n_int8.tflite"
    status, out, _ = scai(
        capsys, "models", "add", "v8", str(model), "--labels", str(LABELS), "--set", "letterbox=stretch",
        "--usr", str(tmp_path),
    )  # fmt: skip
    assert status == 0 and "detection, layout yolo, input 640x640" in out and "/v1/vision/custom/v8" in out
    assert (tmp_path / "models" / "v8" / model.name).read_bytes() == model.read_bytes()
    assert load_models(tmp_path, DETECTION)["v8"].options["letterbox"] == "stretch"
    status, out, _ = scai(capsys, "detect", str(IMAGES / "grace_hopper.jpg"), "--model", "v8", "--usr", str(tmp_path))
    assert status == 0 and out.startswith("person: 0.9")


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        (DETECT_MODELS / "yolox_nano.onnx", [], "(could be: yolox, yolo); set LAYOUT"),
        (CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite", [], "is no detection layout SCAI knows"),
        (DETECT_MODELS / "yolox_nano.onnx", ["--layout", "yolox", "--labels", str(IMAGES / "COPYRIGHT")], "labels"),
        (DETECT_MODELS / "yolox_nano.onnx", ["--layout", "ssd"], "LAYOUT must be one of yolox, yolo"),
    ],
    ids=["ambiguous", "a classifier", "labels that do not fit", "unknown layout"],
)
def test_a_model_that_cannot_be_understood_is_refused_in_one_line_leaving_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, model: Path, extra: list[str], message: str
) -> None:
    (tmp_path / f"{DETECTION}.config").write_text("# my detectors\n", encoding="utf-8")
    status, _, err = scai(capsys, "models", "add", "mine", str(model), *extra, "--usr", str(tmp_path))
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "models").exists(), "nothing left behind"
    assert (tmp_path / f"{DETECTION}.config").read_text(encoding="utf-8") == "# my detectors\n"


def test_a_name_taken_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["models", "add", "yx", str(DETECT_MODELS / "yolox_nano.onnx"), "--labels", str(LABELS)]
    assert scai(capsys, *args, "--usr", str(tmp_path))[0] == 0
    status, _, err = scai(capsys, *args, "--usr", str(tmp_path))
    assert status == 2 and "has a section [yx] already" in err


def test_models_dropped_into_the_models_folder_are_detection_models(tmp_path: Path) -> None:
    """``usr/models/NAME.onnx`` or ``.tflite``, labels ``NAME.txt`` beside it; a section of the same
    name wins; hidden, half-copied and oddly named files are not models; pulled models' folders
    are not either."""
    folder = tmp_path / "models"
    (folder / "coco-ssd").mkdir(parents=True)
    for name in ("doorcam.onnx", "yard.tflite", ".hidden.onnx", "doorcam.onnx.partial", "bad name.onnx"):
        (folder / name).write_bytes(b"model")
    (folder / "doorcam.txt").write_text("person\n")
    assert {name: spec.labels for name, spec in load_models(tmp_path, DETECTION).items()} == {
        "doorcam": folder / "doorcam.txt", "yard": None,
    }  # fmt: skip
    (tmp_path / f"{DETECTION}.config").write_text(f"[yard]\nGRAPH = {DETECT_MODELS / 'yolox_nano.onnx'}\n")
    assert load_models(tmp_path, DETECTION)["yard"].path == DETECT_MODELS / "yolox_nano.onnx"
    (folder / "doorcam.onnx").unlink()
    assert sorted(load_models(tmp_path, DETECTION)) == ["yard"], "taken out: gone"


@pytest.mark.slow
def test_a_model_dropped_in_while_serving_is_served_by_name(tmp_path: Path) -> None:
    """Dropped into ``usr/models/`` of a running ``scai serve``: listed, and served on both
    routes without a restart; the worker's log names the layout it recognised."""
    import shutil

    import requests
    from conftest import Server, write_usr

    usr = write_usr(tmp_path / "usr", ("image_classification", "object_detection"))
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log")
    try:
        (usr / "models").mkdir()
        shutil.copyfile(LABELS, usr / "models" / "doorcam.txt")
        shutil.copyfile(DETECT_MODELS / "yolox_nano.onnx", usr / "models" / ".doorcam.onnx")
        (usr / "models" / ".doorcam.onnx").rename(usr / "models" / "doorcam.onnx")  # as a copy lands whole
        listed = requests.post(f"{server.url}/v1/vision/custom/list", timeout=10).json()
        assert "doorcam" in listed["models"]
        photo = (IMAGES / "kite_and_cold.jpg").read_bytes()
        custom = requests.post(f"{server.url}/v1/vision/custom/doorcam", files={"image": photo}, timeout=60).json()
        api = requests.post(
            f"{server.url}/api/v1/detect", params={"model": "doorcam", "wait": 60},
            files={"photo": ("k.jpg", photo)}, timeout=60,
        ).json()  # fmt: skip
        for labels in ([p["label"] for p in custom["predictions"]], [d["label"] for d in api["detections"]]):
            assert labels.count("person") >= 2 and "kite" in labels, labels
        assert "loaded model 'doorcam'" in server.log.read_text() and "layout yolox" in server.log.read_text()
    finally:
        server.stop()
