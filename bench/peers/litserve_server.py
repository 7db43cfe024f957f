"""Peer for bench/compare.py: the classifier behind LitServe, one interpreter per inference worker.

    PEER_CLASSIFY_MODEL=... python litserve_server.py --port 8000 --workers 2

POST /predict with a multipart field ``photo`` (or ``image``). LitServe 0.2.19 parses multipart
bodies with Starlette's ``request.form()`` in its API-server process and queues the form to an
inference worker, so ``decode_request`` gets a form whose file fields are Starlette UploadFiles.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import litserve as ls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from plain_model import Classifier, classifier_from_env  # noqa: E402


class ClassifyAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier: Classifier = classifier_from_env()

    def decode_request(self, request) -> bytes:
        # Left unannotated on purpose: LitServe reads this annotation as the endpoint's request
        # type, and anything but none (or Request) makes FastAPI expect a query parameter named
        # ``request``. What arrives is the parsed form (a starlette FormData).
        upload = request.get("photo") or request.get("image")
        if upload is None:
            raise ValueError("no photo")
        return upload.file.read()

    def predict(self, data: bytes) -> list[dict[str, Any]]:
        return self.classifier.classify(data)

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="inference workers (one per core)")
    args = parser.parse_args()
    server = ls.LitServer(ClassifyAPI(), accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
