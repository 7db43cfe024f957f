"""Bottleneck features on disk, as ``retrain.py`` kept them: computed once per photo and backbone.

Each photo's features are stored under ``<dir>/<backbone key>/<sha256 of the file>.npy``: a
renamed or moved photo is still found, an edited one is computed again, and another backbone (or
another feature recipe) never reads this one's files. The features of an augmented variant of a
photo (``--augment``) sit beside them as ``<sha256>.aug-<recipe>-<number>.npy``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scai import imaging
from scai.engines.features import TFLiteFeatures, file_digest
from scai.files import atomic_write
from scai.train import augment


@dataclass
class Bottlenecks:
    features: np.ndarray  # [N, D] for the readable files, in order
    readable: list[int]  # indexes of the files that could be read
    reused: int = 0
    computed: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def compute(
    files: list[Path], extractor: TFLiteFeatures, cache_dir: Path, max_pixels: int, variant: int = 0
) -> Bottlenecks:
    """Features of every file (or of its augmented ``variant``, from 1), from the cache where it has
    them; unreadable files are listed, not fatal."""
    folder = Path(cache_dir) / extractor.key
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f".aug-{hashlib.sha256(augment.RECIPE.encode()).hexdigest()[:8]}-{variant}" if variant else ""
    rows, readable, reused, unreadable = [], [], 0, []
    label = f"augmented {variant}/{augment.VARIANTS}" if variant else "bottlenecks"
    for index, path in enumerate(tqdm(files, desc=label, unit="photo", leave=False)):
        digest = file_digest(path)
        cached = folder / f"{digest}{suffix}.npy"
        if cached.exists():
            rows.append(np.load(cached))
            readable.append(index)
            reused += 1
            continue
        try:
            image = imaging.load_rgb(path, max_pixels)
        except (imaging.InvalidImage, OSError) as error:
            unreadable.append((path, str(error)))
            continue
        vector = extractor(augment.variant(image, digest, variant) if variant else image)
        atomic_write(cached, _npy(vector))
        rows.append(vector)
        readable.append(index)
    features = np.stack(rows) if rows else np.zeros((0, extractor.size), np.float32)
    return Bottlenecks(features, readable, reused, len(rows) - reused, unreadable)


def _npy(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector)
    return buffer.getvalue()
