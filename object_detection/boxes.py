"""Box arithmetic: normalised (ymin, xmin, ymax, xmax) as detectors give them, to clipped pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """Corners normalised to 0..1 of the image's width and height."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @classmethod
    def from_yxyx(cls, values: tuple[float, float, float, float]) -> Box:
        ymin, xmin, ymax, xmax = (float(v) for v in values)
        return cls(xmin, ymin, xmax, ymax)

    def clipped(self) -> Box:
        """Inside the image: detectors may put a corner slightly outside it."""

        def clip(value: float) -> float:
            return min(max(value, 0.0), 1.0)

        return Box(clip(self.xmin), clip(self.ymin), clip(self.xmax), clip(self.ymax))

    def pixels(self, width: int, height: int) -> dict[str, int]:
        """Integer pixel corners in an image of ``width`` x ``height`` (max corners inclusive)."""
        return {
            "xmin": round(self.xmin * (width - 1)),
            "ymin": round(self.ymin * (height - 1)),
            "xmax": round(self.xmax * (width - 1)),
            "ymax": round(self.ymax * (height - 1)),
        }

    def normalized(self, digits: int = 4) -> dict[str, float]:
        return {k: round(getattr(self, k), digits) for k in ("xmin", "ymin", "xmax", "ymax")}

    def unrotated(self, orientation: int) -> Box:
        """This box of an upright image, in the pixel grid as stored in a file whose EXIF
        ``orientation`` (1-8) turned it upright: where a client that ignores EXIF measures it."""
        to_stored = _TO_STORED.get(orientation, _TO_STORED[1])
        (x1, y1), (x2, y2) = to_stored(self.xmin, self.ymin), to_stored(self.xmax, self.ymax)
        return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    @property
    def empty(self) -> bool:
        return self.xmax <= self.xmin or self.ymax <= self.ymin


#: EXIF orientation -> where a point (x, y) of the upright image (normalised) lies in the stored
#: grid. Each is the inverse of the transpose Pillow's ``exif_transpose`` applies.
_TO_STORED = {
    1: lambda x, y: (x, y),
    2: lambda x, y: (1 - x, y),  # mirrored
    3: lambda x, y: (1 - x, 1 - y),  # rotated 180
    4: lambda x, y: (x, 1 - y),  # flipped
    5: lambda x, y: (y, x),  # transposed
    6: lambda x, y: (y, 1 - x),  # stored rotated 90 counter-clockwise
    7: lambda x, y: (1 - y, 1 - x),  # transversed
    8: lambda x, y: (1 - y, x),  # stored rotated 90 clockwise
}
