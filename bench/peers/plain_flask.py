"""Peer for bench/compare.py: the plain Flask server, one interpreter per gunicorn worker.

    PEER_CLASSIFY_MODEL=... PEER_DETECT_MODEL=... PEER_DETECT_LABELS=... \\
        gunicorn -w 2 -b 127.0.0.1:8000 plain_flask:app

The models load at import, so each sync worker (forked without --preload) holds its own
interpreters and answers one request at a time: the simplest production setup for a model.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from plain_model import classifier_from_env, detector_from_env, faces_from_env

app = Flask(__name__)
classifier = classifier_from_env()
detector = detector_from_env()
faces = faces_from_env()


def uploaded() -> bytes | None:
    upload = request.files.get("photo") or request.files.get("image")
    return upload.read() if upload else None


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/classify")
def classify():
    data = uploaded()
    if not data:
        return jsonify(error="no photo"), 400
    return jsonify(predictions=classifier.classify(data))


@app.post("/detect")
def detect():
    if detector is None:
        return jsonify(error="no detector configured"), 503
    data = uploaded()
    if not data:
        return jsonify(error="no photo"), 400
    return jsonify(detections=detector.detect(data))


@app.post("/face/recognize")
def recognize():
    if faces is None:
        return jsonify(error="no face models configured"), 503
    data = uploaded()
    if not data:
        return jsonify(error="no photo"), 400
    return jsonify(success=True, predictions=faces.recognize(data))
