"""Speed of ``scai train``: a first run on an empty bottleneck cache, then runs on the cached one.

    .venv/bin/python bench/train.py [--dataset DIR] [--runs 3] [--quantize int8]

Each run is the whole command, timed from outside (Python start-up included), in a fresh usr
folder with a copy of the shipped config. Prints wall seconds, peak memory, held-out accuracy and
the head's sizes per run, and how much faster the cached runs are than the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = ROOT.parent / "shared" / "assets" / "datasets" / "flower_photos_small"


def run(dataset: Path, usr: Path, quantize: str) -> dict:
    command = [sys.executable, "-m", "scai", "train", str(dataset), "--name", "bench", "--usr", str(usr)]
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen([*command, "--quantize", quantize], cwd=ROOT, stdout=errors, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)  # this run's own peak memory, not the largest so far
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            sys.exit(f"scai train failed:\n{errors.read().decode(errors='replace')}")
    report = json.loads((usr / "models" / "bench" / "report.json").read_text())
    return {**report, "wall": seconds, "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--runs", type=int, default=3, help="cached runs after the first (default 3)")
    parser.add_argument("--quantize", default="int8", choices=("int8", "float16", "none"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        usr = Path(tmp) / "usr"
        usr.mkdir()
        shutil.copy(ROOT / "usr" / "image_classification.config", usr)
        results = [run(args.dataset, usr, args.quantize) for _ in range(1 + args.runs)]
    print(f"{'run':<8}{'wall s':>8}{'computed':>10}{'reused':>8}{'accuracy':>10}{args.quantize:>8}{'peak MiB':>10}")
    for index, r in enumerate(results):
        quantized = f"{r['quantized_accuracy']:.1%}" if r["quantized_accuracy"] is not None else "-"
        print(f"{'first' if index == 0 else 'cached':<8}{r['wall']:>8.2f}{r['computed']:>10}{r['reused']:>8}"
              f"{r['accuracy']:>10.1%}{quantized:>8}{r['peak_mib']:>10.0f}")  # fmt: skip
    cached = statistics.median(r["wall"] for r in results[1:])
    print(f"\nsizes (bytes): {results[0]['sizes']}")
    print(f"first run {results[0]['wall']:.2f} s, cached median {cached:.2f} s: {results[0]['wall'] / cached:.1f}x")


if __name__ == "__main__":
    main()
