"""``scai models add NAME FILE``: a model a user brings (an ``.onnx`` or ``.tflite`` export, say
a YOLO model trained on their own photos), installed as ready-made ones are.

The files are copied into ``usr/models/NAME/`` and the model is loaded once, there, before its
section is written: a model that cannot be understood (an unknown layout, shapes that fit none,
labels that do not match its classes, a corrupt file) is refused at once with what was found and
what to set, and nothing is left behind. What was recognised (the layout, the input size, the
classes) is said, so a user sees how it will be served: ``/api/v1/detect?model=NAME``,
``/v1/vision/custom/NAME``.
"""

from __future__ import annotations

import configparser
import shutil
from contextlib import suppress
from pathlib import Path

from PIL import Image

from scai import config
from scai.errors import ConfigError


def add(usr_dir: Path, name: str, model: Path, labels: Path | None, job: str, keys: dict[str, str]) -> str:
    """Install the model as section ``[name]`` of ``job``'s config; returns what was recognised."""
    if not config.NAME_RE.fullmatch(name):
        raise ConfigError(f"a model name is letters, digits, '.', '_' and '-' (at most 64), not {name!r}")
    config_path = Path(usr_dir) / f"{job}.config"
    if name in config.load_models(usr_dir, job):
        raise ConfigError(f"{config_path.name} has a section [{name}] already: choose another name")
    for given in (model, labels):
        if given is not None and not Path(given).is_file():
            raise ConfigError(f"{given} is not a file")
    folder = Path(usr_dir) / config.MODELS_FOLDER / name
    try:
        folder.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(f"{folder} exists already: choose another name") from None
    try:
        section = {"GRAPH": f"{config.MODELS_FOLDER}/{name}/{Path(model).name}"}
        shutil.copyfile(model, folder / Path(model).name)
        if labels is not None:
            shutil.copyfile(labels, folder / Path(labels).name)
            section["LABELS"] = f"{config.MODELS_FOLDER}/{name}/{Path(labels).name}"
        section.update({key.upper(): value for key, value in keys.items()})
        spec = config.spec_from_section(name, job, _section(section), Path(usr_dir))
        recognised = _try(spec)
        config.write_section(config_path, name, section)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        with suppress(OSError):
            folder.parent.rmdir()  # made for this model and left empty
        raise
    return recognised


def _section(keys: dict[str, str]) -> configparser.SectionProxy:
    """``keys`` as the config parser gives a section (lower-case keys)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({"section": keys})
    return parser["section"]


def _try(spec: config.ModelSpec) -> str:
    """Load the model and run it once on a grey photo; what it is, in words."""
    from scai.engines import load_classifier, load_detector

    spec.check()
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    if spec.job == config.DETECTION:
        detector = load_detector(spec)
        detector.detect_one(grey)
        layout = getattr(detector, "layout", "ssd")
        size = getattr(detector, "input_size", None)
        return f"detection, layout {layout}" + (f", input {size[1]}x{size[0]}" if size else "")
    classifier = load_classifier(spec)
    classes = len(classifier.predict([grey])[0])
    return f"classification, input {classifier.input_size[1]}x{classifier.input_size[0]}, {classes} classes"
