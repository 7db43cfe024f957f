"""Model engines, one module per file format; ``load_classifier`` picks one from the file itself."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from scai.config import ConfigError, ModelSpec, Threads
from scai.engines.base import Classifier, Detector, Prediction


def model_format(path: Path) -> str:
    """``tflite``, ``onnx``, ``dlib``, ``savedmodel``, ``keras`` or ``graphdef``, from what is on disk."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ConfigError(f"{path} is a folder without saved_model.pb")
    if not path.exists():
        raise ConfigError(f"model file {path} does not exist")
    if path.name == "saved_model.pb":
        return "savedmodel"
    suffix = path.suffix.lower()
    formats = {
        ".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".pb": "graphdef",
        ".dat": "dlib",
    }  # fmt: skip
    if suffix not in formats:
        raise ConfigError(
            f"cannot tell the format of {path.name}: use .tflite, .onnx, .keras, .h5, .pb, a SavedModel or "
            "dlib's .dat (faces)"
        )
    return formats[suffix]


def problem(spec: ModelSpec) -> str | None:
    """Why a section cannot load, as far as the files on disk tell without loading anything (a
    bad key, a model file that is missing or of an unknown format, a missing labels or head
    file); None where it looks loadable. A few stats: cheap enough for every ``/healthz``."""
    try:
        spec.check()
        model_format(spec.path)
        for what, path in (("labels", spec.labels), ("head", spec.head)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{what} file {path} does not exist")
    except ConfigError as error:
        return error.message
    return None


def _resolved(spec: ModelSpec) -> tuple[str, ModelSpec]:
    """The model's format, and its spec with a SavedModel named by its folder."""
    spec.check()
    kind = model_format(spec.path)
    if kind == "savedmodel" and spec.path.name == "saved_model.pb":
        spec = replace(spec, path=spec.path.parent)
    return kind, spec


def load_classifier(spec: ModelSpec, threads: Threads | None = None) -> Classifier:
    """Load a classification model once; the engine module is imported only when needed."""
    kind, spec = _resolved(spec)
    if spec.head is not None:
        from scai.engines.composite import CompositeClassifier

        return CompositeClassifier(spec, threads)
    if kind == "tflite":
        from scai.engines.tflite import TFLiteClassifier

        return TFLiteClassifier(spec, threads)
    if kind == "onnx":
        from scai.engines.onnx import OnnxClassifier

        return OnnxClassifier(spec, threads)
    from scai.engines import tensorflow

    engines = {
        "savedmodel": tensorflow.SavedModelClassifier,
        "keras": tensorflow.KerasClassifier,
        "graphdef": tensorflow.GraphDefClassifier,
    }
    return engines[kind](spec)


def load_detector(spec: ModelSpec, threads: Threads | None = None) -> Detector:
    """Load a detection model once; its output layout is recognised from the model itself."""
    kind, spec = _resolved(spec)
    if kind == "tflite":
        from scai.engines import tflite

        return tflite.load_detector(spec, threads)
    if kind == "onnx":
        from scai.engines.onnx import OnnxDetector

        return OnnxDetector(spec, threads)
    from scai.engines import tensorflow

    if kind == "graphdef":
        return tensorflow.ODAPIGraphDetector(spec)
    if kind == "savedmodel":
        return tensorflow.ODAPISavedModelDetector(spec)
    raise ConfigError(f"model {spec.name!r}: Keras files are not a detection layout SCAI knows")


__all__ = ["Classifier", "Detector", "Prediction", "load_classifier", "load_detector", "model_format", "problem"]
