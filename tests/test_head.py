"""The NumPy-trained head and the TFLite files written for it, run by the real LiteRT interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from scai.engines.composite import TFLiteHead
from scai.train import export, head


def clusters(seed: int, per_class: int = 40, classes: int = 4, size: int = 64) -> head.Labelled:
    """Separable classes: each a cloud around its own direction, at different lengths (as features are)."""
    centres = np.random.default_rng(0).normal(0, 1, (classes, size))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(0, 0.6, (len(labels), size))
    return (features * rng.uniform(0.5, 8, (len(labels), 1))).astype(np.float32), labels


@pytest.fixture(scope="module")
def trained() -> tuple[head.Head, head.Labelled, head.Labelled]:
    training, held = clusters(1), clusters(2)
    return head.fit(training, held, 4, epochs=60, seed=0), training, held


def test_the_head_learns_and_reports_its_curves(trained: tuple) -> None:
    model, training, held = trained
    assert np.mean(model.scores(held[0]).argmax(axis=1) == held[1]) >= 0.95
    assert set(model.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 60 for values in model.history.values())
    assert model.history["loss"][-1] < model.history["loss"][0] / 3
    again = head.fit(training, held, 4, epochs=60, seed=0)
    assert np.array_equal(again.weights, model.weights), "the same seed trains the same head"
    assert not np.array_equal(head.fit(training, held, 4, epochs=60, seed=1).weights, model.weights)


def test_the_head_ignores_the_features_length(trained: tuple) -> None:
    model, _, held = trained
    assert np.allclose(model.scores(held[0] * 7.5), model.scores(held[0]), atol=1e-6)


@pytest.mark.parametrize("shifted", [False, True], ids=["trained", "large-bias"])
@pytest.mark.parametrize(("mode", "tolerance"), [("none", 1e-5), ("float16", 2e-3), ("int8", 0.1)])
def test_tflite_heads_compute_what_the_numpy_head_computes(
    trained: tuple, mode: str, tolerance: float, shifted: bool
) -> None:
    model, training, held = trained
    if shifted:  # a bias that decides many photos: a wrong bias scale or sign shows
        model = head.Head(model.weights, model.bias + np.array([2.5, -2.0, 1.0, -1.5], np.float32))
    data = export.head_model(model.weights, model.bias, mode, training[0])
    runner = TFLiteHead(data)
    scores = runner(held[0])
    expected = model.scores(held[0])
    assert np.abs(scores - expected).max() <= tolerance
    assert np.mean(scores.argmax(axis=1) == expected.argmax(axis=1)) >= 0.98
    expected_type = np.int8 if mode == "int8" else np.float32
    assert runner.input["dtype"] == expected_type and runner.output["dtype"] == expected_type
    assert runner.size == training[0].shape[1]


def test_quantised_heads_are_smaller(trained: tuple) -> None:
    model, training, _ = trained
    sizes = {mode: len(export.head_model(model.weights, model.bias, mode, training[0])) for mode in export.MODES}
    assert sizes["int8"] < sizes["float16"] < sizes["none"]
    assert sizes["none"] >= model.weights.size * 4


def test_int8_needs_representative_features(trained: tuple) -> None:
    model = trained[0]
    with pytest.raises(ValueError, match="representative"):
        export.head_model(model.weights, model.bias, "int8")
    with pytest.raises(ValueError, match="mode must be one of"):
        export.head_model(model.weights, model.bias, "int4")


def test_a_saved_head_loads_back(trained: tuple, tmp_path) -> None:
    model = trained[0]
    model.save(tmp_path / "head.npz")
    loaded = head.Head.load(tmp_path / "head.npz")
    assert np.array_equal(loaded.weights, model.weights) and np.array_equal(loaded.bias, model.bias)
