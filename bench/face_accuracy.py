"""Face recognition's true- and false-accept rates over every pair of photos of the shared face set,
through the code the face workers run (``scai.engines.faces``) and the confidence the routes report
(``scai.facedb.confidence``).

    .venv/bin/python bench/face_accuracy.py [--faces DIR] [--json-out PATH]

For every photo of ``datasets/faces/people/<who>/`` its largest face is embedded; for every pair,
the confidence that they are one person is compared with DeepStack's thresholds: recognize's
default 0.67, deepstack-python's (and Home Assistant's) 0.45, and match's 0.65 and 0.55. A true
accept is a pair of one person at or above the threshold, a false accept a pair of two people at
or above it. It also prints the distances' extremes, which the confidence mapping was chosen from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from scai.config import FACES, ModelSpec
from scai.engines.faces import load_face_model
from scai.facedb import confidence

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
THRESHOLDS = (0.67, 0.65, 0.55, 0.45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ASSETS / "datasets" / "faces")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    models = ASSETS / "models" / "face"
    spec = ModelSpec(
        "face", FACES, models / "dlib_face_recognition_resnet_model_v1.dat",
        options={"landmarks": str(models / "shape_predictor_5_face_landmarks.dat")},
    )  # fmt: skip
    engine = load_face_model(spec)
    embedded = []
    for photo in sorted((args.faces / "people").glob("*/*.jpg")):
        faces = engine.find(Image.open(photo).convert("RGB"), 0.5, embed=True)
        if not faces:
            raise SystemExit(f"no face found in {photo}")
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        embedded.append((photo.parent.name, largest.embedding))
    same, other = [], []
    for (a, ea), (b, eb) in itertools.combinations(embedded, 2):
        (same if a == b else other).append(float(np.linalg.norm(ea - eb)))
    people = len({who for who, _ in embedded})
    print(f"{len(embedded)} photos of {people} people: {len(same)} pairs of one person, {len(other)} of two")
    print(f"distance: one person at most {max(same):.3f}, two people at least {min(other):.3f}")
    rows = []
    print(f"\n{'threshold':>9}  {'true accepts':>22}  {'false accepts':>22}")
    for threshold in THRESHOLDS:
        accepted = sum(confidence(d) >= threshold for d in same)
        wrong = sum(confidence(d) >= threshold for d in other)
        rows.append({"threshold": threshold, "true_accept": accepted / len(same), "false_accept": wrong / len(other)})
        print(
            f"{threshold:>9.2f}  {accepted:>5}/{len(same)} = {accepted / len(same):>7.2%}  "
            f"{wrong:>5}/{len(other)} = {wrong / len(other):>7.2%}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"pairs_same": len(same), "pairs_other": len(other), "rates": rows}))


if __name__ == "__main__":
    main()
