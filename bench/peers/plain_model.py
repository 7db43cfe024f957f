"""The plain way to serve the two models: what a 30-line server does, shared by the peers and the reference.

The whole photo is resized to the model's input (no crop) with PIL's bilinear filter and handed to
a LiteRT interpreter with one thread. ``bench/compare.py`` uses the same functions in-process as
the reference the servers' answers are checked against, so every server is compared with one
definition of "the right answer".

A YOLOX detector (an ``.onnx`` PEER_DETECT_MODEL) runs on onnxruntime with one thread, prepared
and decoded as its README states and as plainly as a short server would: OpenCV's resize into the
top-left corner of a 416x416 canvas padded with 114, BGR, then centre = (cell + d) x stride, size
= exp(log size) x stride, score = objectness x class score, candidates under 0.5 dropped, and
OpenCV's class-wise NMS at IoU 0.45 (SCAI's default).

Faces (``FaceRecognizer``) run dlib as a short server would, in one process: its HOG detector on
the whole photo (no doubling), the 5-point landmarks and the ResNet embedding of each face, and
the nearest of the people registered at start-up, with SCAI's confidence mapping so that the two
answer alike.

Environment (set by ``bench/compare.py``):
    PEER_CLASSIFY_MODEL   the EfficientNet-Lite0 int8 .tflite (labels read from inside it)
    PEER_DETECT_MODEL     the SSD .tflite with TFLite_Detection_PostProcess, or YOLOX-Nano .onnx (optional)
    PEER_DETECT_LABELS    its labels, one a line, line i = class id i
    PEER_FACE_MODELS      the folder of dlib's two face models (optional)
    PEER_FACE_PEOPLE      userid=photo,userid=photo...: who is registered at start-up
"""

from __future__ import annotations

import os
import zipfile
from io import BytesIO
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

MIN_SCORE = 0.5


def load_interpreter(path: str) -> Any:
    """One interpreter with one thread: the servers run one per process, one process per core."""
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def embedded_labels(path: str) -> list[str]:
    """The classifier's labels, packed into the .tflite by its metadata (the file is also a zip)."""
    with zipfile.ZipFile(path) as archive:
        return archive.read("labels_without_background.txt").decode("utf-8").splitlines()


def pixels(data: bytes, size: int) -> np.ndarray:
    """The uploaded photo as a [1, size, size, 3] uint8 batch: whole image, bilinear, no crop."""
    image = Image.open(BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image)[None]


class Classifier:
    def __init__(self, path: str) -> None:
        self.interpreter = load_interpreter(path)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])
        self.labels = embedded_labels(path)

    def classify(self, data: bytes, top: int = 5) -> list[dict[str, Any]]:
        """The ``top`` most likely labels of one photo, most likely first."""
        self.interpreter.set_tensor(self.input["index"], pixels(data, self.size))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero_point = self.output["quantization"]
        scores = (raw.astype(np.float32) - zero_point) * scale
        best = np.argsort(-scores, kind="stable")[:top]
        return [{"label": self.labels[i], "score": round(float(scores[i]), 6)} for i in best]


class Detector:
    def __init__(self, path: str, labels_path: str) -> None:
        self.interpreter = load_interpreter(path)
        self.input = self.interpreter.get_input_details()[0]
        self.size = int(self.input["shape"][1])
        # TFLite_Detection_PostProcess names its outputs NAME, NAME:1, NAME:2, NAME:3.
        by_name = sorted(self.interpreter.get_output_details(), key=lambda d: d["name"])
        self.boxes, self.classes, self.scores, self.count = (d["index"] for d in by_name)
        with open(labels_path, encoding="utf-8") as file:
            self.labels = file.read().splitlines()

    def detect(self, data: bytes) -> list[dict[str, Any]]:
        """Detections with score >= 0.5, best first, boxes normalised and clipped to the image."""
        self.interpreter.set_tensor(self.input["index"], pixels(data, self.size))
        self.interpreter.invoke()
        boxes = self.interpreter.get_tensor(self.boxes)[0]
        classes = self.interpreter.get_tensor(self.classes)[0]
        scores = self.interpreter.get_tensor(self.scores)[0]
        count = int(self.interpreter.get_tensor(self.count).reshape(-1)[0])
        found = []
        for i in range(count):
            if scores[i] < MIN_SCORE:
                continue
            ymin, xmin, ymax, xmax = (min(1.0, max(0.0, float(v))) for v in boxes[i])
            class_id = int(round(float(classes[i])))
            label = self.labels[class_id] if class_id < len(self.labels) else f"class {class_id}"
            box = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
            found.append({"label": label, "score": round(float(scores[i]), 6), "box_normalized": box})
        return sorted(found, key=lambda d: -d["score"])


class YoloxDetector:
    """YOLOX-Nano on onnxruntime (see the module's docstring)."""

    SIZE, STRIDES, IOU = 416, (8, 16, 32), 0.45

    def __init__(self, path: str, labels_path: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        cells = [(x, y, s) for s in self.STRIDES for y in range(self.SIZE // s) for x in range(self.SIZE // s)]
        self.grid = np.array([(x, y) for x, y, _ in cells], dtype=np.float32)
        self.stride = np.array([s for _, _, s in cells], dtype=np.float32)[:, None]
        with open(labels_path, encoding="utf-8") as file:
            self.labels = file.read().splitlines()

    def detect(self, data: bytes) -> list[dict[str, Any]]:
        import cv2

        photo = np.asarray(Image.open(BytesIO(data)).convert("RGB"))[..., ::-1]
        height, width = photo.shape[:2]
        ratio = min(self.SIZE / height, self.SIZE / width)
        inner = (max(1, int(width * ratio)), max(1, int(height * ratio)))
        canvas = np.full((self.SIZE, self.SIZE, 3), 114, dtype=np.uint8)
        canvas[: inner[1], : inner[0]] = cv2.resize(photo, inner, interpolation=cv2.INTER_LINEAR)
        tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        rows = self.session.run(None, {self.input: tensor})[0][0]
        scores = rows[:, 4:5] * rows[:, 5:]
        best = scores.argmax(axis=1)
        score = scores[np.arange(len(best)), best]
        wanted = score >= MIN_SCORE
        centre = (rows[wanted, :2] + self.grid[wanted]) * self.stride[wanted]
        extent = np.exp(rows[wanted, 2:4]) * self.stride[wanted]
        corner = (centre - extent / 2) / ratio
        boxes = np.concatenate([corner, extent / ratio], axis=1)  # x, y, w, h in the photo's pixels
        classes, scores = best[wanted], score[wanted]
        kept = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores.tolist(), classes.tolist(), MIN_SCORE, self.IOU)
        found = []
        for i in np.array(kept, dtype=int).reshape(-1):
            x, y, w, h = boxes[i]
            box = {"xmin": x / width, "ymin": y / height, "xmax": (x + w) / width, "ymax": (y + h) / height}
            box = {key: min(1.0, max(0.0, float(value))) for key, value in box.items()}
            label, confidence = self.labels[int(classes[i])], round(float(scores[i]), 6)
            found.append({"label": label, "score": confidence, "box_normalized": box})
        return sorted(found, key=lambda d: -d["score"])


class FaceRecognizer:
    """Faces and who they are (see the module's docstring)."""

    def __init__(self, models: str, people: dict[str, str]) -> None:
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
        self.embedder = dlib.face_recognition_model_v1(
            os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat")
        )
        self.names, rows = [], []
        for userid, photo in people.items():
            with open(photo, "rb") as file:
                faces = self.embed(np.asarray(Image.open(BytesIO(file.read())).convert("RGB")))
            self.names.append(userid)
            rows.append(faces[0][1])
        self.registered = np.asarray(rows, dtype=np.float32).reshape(-1, 128)

    def embed(self, pixels: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        found = []
        for rect in self.detector(pixels, 0):
            shape = self.shapes(pixels, rect)
            found.append((rect, np.asarray(self.embedder.compute_face_descriptor(pixels, shape), dtype=np.float32)))
        return found

    def recognize(self, data: bytes, min_confidence: float = 0.67) -> list[dict[str, Any]]:
        pixels = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
        out = []
        for rect, embedding in self.embed(pixels):
            distances = np.linalg.norm(self.registered - embedding, axis=1)
            best = int(distances.argmin())
            sure = 1.0 / (1.0 + float(np.exp(min(50.0, 25.0 * (distances[best] - 0.585)))))
            known = sure >= min_confidence
            box = {"x_min": rect.left(), "y_min": rect.top(), "x_max": rect.right(), "y_max": rect.bottom()}
            out.append({"userid": self.names[best] if known else "unknown", "confidence": sure if known else 0, **box})
        return sorted(out, key=lambda p: -p["confidence"])


def faces_from_env() -> FaceRecognizer | None:
    models = os.environ.get("PEER_FACE_MODELS")
    if not models:
        return None
    people = dict(pair.split("=", 1) for pair in os.environ["PEER_FACE_PEOPLE"].split(","))
    return FaceRecognizer(models, people)


def classifier_from_env() -> Classifier:
    return Classifier(os.environ["PEER_CLASSIFY_MODEL"])


def detector_from_env() -> Detector | YoloxDetector | None:
    """The detector, or None where PEER_DETECT_MODEL is not set (the peer then answers 503)."""
    path = os.environ.get("PEER_DETECT_MODEL")
    if not path:
        return None
    kind = YoloxDetector if path.endswith(".onnx") else Detector
    return kind(path, os.environ["PEER_DETECT_LABELS"])
