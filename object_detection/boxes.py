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

    @property
    def empty(self) -> bool:
        return self.xmax <= self.xmin or self.ymax <= self.ymin
