"""``scai models convert``: a TF1 Object Detection API SSD (a frozen ``.pb``) as a TFLite model, so
that serving it needs no TensorFlow.

Full TensorFlow costs a worker about 800 MB and seconds to start, while the same network on the
LiteRT interpreter needs a few tens of MB. The conversion needs TensorFlow once (``make install``
runs it for the default person detector); serving the result never does.

What is converted is the graph between its two ends, which TFLite cannot run as they are:

* its input: the graph resizes each image inside a ``tf.map_fn`` loop. The converted model
  takes the resized image instead (float 0-255, the graph's own input size), and the engine
  resizes as TensorFlow 1 did (``RESIZE = tensorflow``, ``engines.base.tensorflow_resized``);
* its output: the Object Detection API's batched non-maximum suppression, a loop again. It is
  replaced by TFLite's ``TFLite_Detection_PostProcess`` op, fed the graph's box encodings, its
  class scores (sigmoid applied, background first) and its anchors, which the graph computes at
  run time and are constants here. The op's box-coder scales, IoU threshold and score floor are
  read from the graph itself.

The result answers boxes, classes, scores and count, as every TFLite SSD does, with the class
ids of the graph's own label map (from 1).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from scai.errors import ConfigError
from scai.files import atomic_write

#: The tensor the graph's preprocessing loop leaves the resized images in: the converted input.
RESIZED = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3"
#: What the box predictor gives the post-processing: encoded boxes and converted class scores.
ENCODINGS = "Postprocessor/raw_box_encodings"
SCORES = "Postprocessor/convert_scores"
ANCHORS = "Concatenate/concat"
#: The box coder divides each encoding by a scale: y, x, height, width, in this order.
SCALE_CONSTANTS = tuple(f"Postprocessor/Decode/truediv{suffix}/y" for suffix in ("", "_1", "_2", "_3"))
POSTPROCESS = "TFLite_Detection_PostProcess"


def convert_ssd(graph_path: Path, out: Path) -> str:
    """Write the TFLite model of the SSD frozen graph at ``graph_path`` to ``out``; what it is."""
    tf = _tensorflow()
    graph_def = _read_graph(tf, graph_path)
    nodes = {node.name: node for node in graph_def.node}
    missing = [name for name in (RESIZED, ENCODINGS, SCORES, ANCHORS, *SCALE_CONSTANTS) if name not in nodes]
    if missing:
        raise ConfigError(
            f"{Path(graph_path).name} is not an Object Detection API SSD graph (it has no {missing[0]}): "
            "only SSDs convert; serve other frozen graphs with TensorFlow"
        )
    probe = _run_once(tf, graph_def)
    size, classes = probe["resized"].shape[1:3], probe["scores"].shape[-1] - 1
    settings = {
        "scales": [_constant(tf, nodes[name]) for name in SCALE_CONSTANTS],
        "iou": _nms_constant(tf, graph_def, "iou_threshold", 0.6),
        "floor": _nms_constant(tf, graph_def, "score_threshold", 1e-8),
        "detections": int(probe["boxes"].shape[1]),
        "classes": classes,
    }
    cut = _cut(tf, graph_def, size, _centred(probe["anchors"]), settings)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), _to_tflite(tf, cut, size))
    Path(out).chmod(0o644)  # a service user other than the one converting reads it
    return (
        f"an SSD of {classes} class{'es' if classes != 1 else ''}, input {size[1]}x{size[0]}, "
        f"{len(probe['anchors'])} anchors, IoU {settings['iou']:g}, at most {settings['detections']} detections"
    )


def _tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ConfigError("converting a frozen graph needs TensorFlow (pip install tensorflow)") from None
    tf.get_logger().setLevel("ERROR")  # deprecation notices about the TF1 APIs this must use
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    return tf


def _read_graph(tf: Any, path: Path) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except Exception:  # protobuf's DecodeError, whatever its module
        raise ConfigError(f"{Path(path).name} is not a frozen TensorFlow graph") from None
    return graph_def


def _run_once(tf: Any, graph_def: Any) -> dict[str, np.ndarray]:
    """Run the whole graph on one grey image: the anchors, and the shapes of what is cut."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    wanted = {
        "anchors": f"{ANCHORS}:0",
        "resized": f"{RESIZED}:0",
        "scores": f"{SCORES}:0",
        "boxes": "detection_boxes:0",
    }
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(wanted, {"image_tensor:0": np.full((1, 480, 640, 3), 128, np.uint8)})


def _constant(tf: Any, node: Any) -> float:
    return float(tf.make_ndarray(node.attr["value"].tensor))


def _nms_constant(tf: Any, graph_def: Any, name: str, default: float) -> float:
    """A threshold of the graph's own non-maximum suppression (the first one, if several)."""
    for node in graph_def.node:
        if node.op == "Const" and node.name.endswith(f"non_max_suppression/{name}"):
            return _constant(tf, node)
    return default


def _centred(corners: np.ndarray) -> np.ndarray:
    """Anchors as the graph keeps them (ymin, xmin, ymax, xmax) to the op's (y, x, h, w) centres."""
    ymin, xmin, ymax, xmax = corners.T
    return np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=1).astype(np.float32)


def _cut(tf: Any, graph_def: Any, size: tuple[int, int], anchors: np.ndarray, settings: dict[str, Any]) -> Any:
    """The graph from the resized images to the post-processing op, and nothing else.

    The op numbers classes from 0 after the background column; a zero column after the
    background makes it number them from 1, as the graph's own label map does, so the graph's
    ``.pbtxt`` names them and the ids a client sees do not change with the conversion."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, *size, 3], name="image")
        encodings, scores = tf.compat.v1.import_graph_def(
            graph_def, input_map={f"{RESIZED}:0": image}, return_elements=[f"{ENCODINGS}:0", f"{SCORES}:0"], name=""
        )
        scores = tf.concat([scores[..., :1], tf.zeros_like(scores[..., :1]), scores[..., 1:]], -1, name="scores")
        tf.constant(anchors, name="anchors")
    cut = graph.as_graph_def()
    op = cut.node.add(name=POSTPROCESS, op=POSTPROCESS, input=[encodings.op.name, "scores", "anchors"])
    whole = {"max_detections": settings["detections"], "detections_per_class": settings["detections"],
             "max_classes_per_detection": 1, "num_classes": settings["classes"] + 1}  # fmt: skip
    for key, value in whole.items():
        op.attr[key].i = value
    y, x, h, w = settings["scales"]
    fractions = {"y_scale": y, "x_scale": x, "h_scale": h, "w_scale": w,
                 "nms_iou_threshold": settings["iou"], "nms_score_threshold": settings["floor"]}  # fmt: skip
    for key, value in fractions.items():
        op.attr[key].f = value
    op.attr["use_regular_nms"].b = False
    op.attr["_output_types"].list.type.extend([tf.float32.as_datatype_enum] * 4)
    return tf.compat.v1.graph_util.extract_sub_graph(cut, [POSTPROCESS])


def _to_tflite(tf: Any, cut: Any, size: tuple[int, int]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="scai-convert-") as folder:
        frozen = Path(folder) / "cut.pb"
        frozen.write_bytes(cut.SerializeToString())
        outputs = [POSTPROCESS] + [f"{POSTPROCESS}:{i}" for i in range(1, 4)]
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(frozen), ["image"], outputs, input_shapes={"image": [1, *size, 3]}
        )
        converter.allow_custom_ops = True  # the post-processing op: custom to the converter, built into LiteRT
        return converter.convert()
