"""``scai models convert``: the default person detector, a TF1 Object Detection API graph, served as
TFLite. What the graph finds at score >= 0.5 the converted model finds, boxes within 0.02, on
every photo of the assets (the graph itself run by TensorFlow as the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, DETECTOR_GRAPH, IMAGES, ROOT, needs_assets
from PIL import Image

from scai import config
from scai.cli import main
from scai.engines import load_detector
from scai.engines.base import tensorflow_resized

LABEL_MAP = ROOT / "usr" / "person_label_map.pbtxt"


def photos() -> list[Path]:
    found = [*IMAGES.glob("*.*"), *(ASSETS / "datasets" / "coco_subset" / "images").glob("*.jpg")]
    return sorted(path for path in found if path.suffix.lower() in (".jpg", ".png", ".bmp"))


def section(path: Path, **keys: str) -> config.ModelSpec:
    lines = [f"PATH_TO_CKPT = {path}", f"PATH_TO_LABELS = {LABEL_MAP}", *(f"{k} = {v}" for k, v in keys.items())]
    return config.spec_from_section("person", config.DETECTION, _parsed(lines), ROOT / "usr")


def _parsed(lines: list[str]):
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string("[person]\n" + "\n".join(lines))
    return parser["person"]


@needs_assets
def test_the_converted_graph_finds_what_the_graph_finds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "person.tflite"
    assert main(["models", "convert", DETECTOR_GRAPH, str(out)]) == 0
    said = capsys.readouterr().out
    assert "an SSD of 1 class, input 300x300, 1917 anchors, IoU 0.6, at most 100 detections" in said
    graph = load_detector(section(config.resolve_path(DETECTOR_GRAPH, ROOT)))
    lite = load_detector(section(out, RESIZE="tensorflow", INPUT_MEAN="0", INPUT_STD="1"))
    people, worst = 0, 0.0
    for photo in photos():
        image = Image.open(photo).convert("RGB")
        want, got = graph.detect_one(graph.shrink(image)), lite.detect_one(lite.shrink(image))
        want_kept, got_kept = want.scores >= 0.5, got.scores >= 0.5
        assert want_kept.sum() == got_kept.sum(), (photo.name, want.scores[:5], got.scores[:5])
        assert list(want.classes[want_kept]) == list(got.classes[got_kept]) == [1] * int(want_kept.sum())
        if want_kept.any():
            worst = max(worst, float(np.abs(want.boxes[want_kept] - got.boxes[got_kept]).max()))
        people += int(want_kept.sum())
    assert len(photos()) >= 60 and people >= 30 and worst <= 0.02, (len(photos()), people, worst)
    assert lite.label(1) == "person"


def test_the_tensorflow_resize_is_tensorflows() -> None:
    """Against TensorFlow's own legacy ResizeBilinear, shrinking and growing, odd sizes."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    for source, target in (((480, 640), (300, 300)), ((97, 1203), (300, 300)), ((120, 80), (300, 300))):
        pixels = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        theirs = tf.compat.v1.image.resize_bilinear(pixels[None], target, align_corners=False).numpy()[0]
        ours = np.asarray(tensorflow_resized(Image.fromarray(pixels), target), dtype=np.float32)
        assert ours.shape == (*target, 3) and np.abs(ours - theirs).max() <= 0.5 + 1e-3


def test_what_is_no_ssd_graph_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import tensorflow as tf

    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\x00 not a graph" * 10)
    graph = tf.Graph()
    with graph.as_default():
        tf.identity(tf.compat.v1.placeholder(tf.float32, [1, 4], name="input"), name="output")
    classifier = tmp_path / "classifier.pb"
    classifier.write_bytes(graph.as_graph_def().SerializeToString())
    refusals = ((garbage, "is not a frozen TensorFlow graph"), (classifier, "is not an Object Detection API SSD"))
    for path, said in refusals:
        assert main(["models", "convert", str(path), str(tmp_path / "out.tflite")]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.tflite").exists()


def test_a_resize_that_is_no_choice_is_named() -> None:
    with pytest.raises(config.ConfigError, match="RESIZE must be bilinear or tensorflow, not 'bicubic'"):
        section(Path("/models/x.tflite"), RESIZE="bicubic")
