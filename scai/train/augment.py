"""``--augment``: more training samples from each training photo, as ``retrain.py``'s distortions.

Each variant is a random crop, mirror, small rotation and change of brightness and contrast. The
randomness comes from the photo's content and the variant's number, so a variant is the same image
in every run and its bottleneck can be cached like the photo's own.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

VARIANTS = 4  # augmented samples per training photo
RECIPE = "crop0.6+flip+rot15+bc0.2/v1"  # change when the distortions change: it is part of the cache key


def variant(image: Image.Image, digest: str, number: int) -> Image.Image:
    """The ``number``-th distorted copy of ``image`` (whose file has SHA-256 ``digest``)."""
    rng = np.random.default_rng([int(digest[:16], 16), number])
    width, height = image.size
    area = rng.uniform(0.6, 1.0) * width * height
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = min(width, round(np.sqrt(area * aspect)))
    crop_h = min(height, round(np.sqrt(area / aspect)))
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    angle = rng.uniform(-15, 15)
    turned = image.rotate(angle, resample=Image.Resampling.BILINEAR)
    image = _inner(turned, angle)  # no black corners
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))


def _inner(image: Image.Image, angle: float) -> Image.Image:
    """The centred part of a rotated image that the rotation left fully covered."""
    width, height = image.size
    radians = np.radians(abs(angle))
    shrink = 0.98 / (np.cos(radians) + np.sin(radians) * max(width, height) / min(width, height))  # 2%: blended edges
    inner_w, inner_h = max(1, int(width * shrink)), max(1, int(height * shrink))
    left, top = (width - inner_w) // 2, (height - inner_h) // 2
    return image.crop((left, top, left + inner_w, top + inner_h))
