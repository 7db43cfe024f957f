"""A training folder: one sub-folder per class, as the original SCAI README laid it out.

flowers/daisy/*.jpg
flowers/roses/*.jpg
...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scai.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    files: list[Path]
    labels: np.ndarray  # index into classes, one per file


def scan(root: Path) -> Dataset:
    """The classes (sorted sub-folder names) and their image files, or a clear ``DatasetError``."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (it should hold one sub-folder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root} has no class folders: put each class's photos in a sub-folder named after it")
    files, labels = [], []
    for label, folder in enumerate(folders):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DatasetError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += images
        labels += [label] * len(images)
    if len(folders) < 2:
        raise DatasetError(f"{root} has a single class ({folders[0].name}): a classifier needs at least two")
    return Dataset(root, [f.name for f in folders], files, np.array(labels))


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indexes: ``fraction`` of every class held out, the same for one seed.

    Stratified so that every class is in both parts (at least one photo held out per class).
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"the validation fraction must be between 0 and 1, not {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DatasetError(f"class {label} has {len(members)} photo; each class needs at least two")
        rng.shuffle(members)
        held += list(members[: min(len(members) - 1, max(1, round(len(members) * fraction)))])
    validation = np.sort(np.array(held))
    return np.setdiff1d(np.arange(len(labels)), validation), validation
