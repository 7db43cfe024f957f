"""Label maps: the Object Detection API's ``.pbtxt`` and plain one-label-per-line files.

Both become ``{id: name}``. In a ``.pbtxt`` every item names its id (1-based by the API's
convention); in a text file the id is the line's index plus ``first_id`` (0 for TFLite SSD models,
whose classes are 0-based line indexes; 1 for Object Detection API models). A line ``???`` marks an
unused id and is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from scai.errors import LabelMapError

_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"""(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+))""")


def parse_pbtxt(text: str) -> dict[int, str]:
    """``item { id: 1 name: 'person' display_name: 'Person' }`` -> {1: 'Person'}.

    ``display_name`` is preferred, as the Object Detection API's own visualisation does.
    """
    labels: dict[int, str] = {}
    for body in _ITEM.findall(re.sub(r"#[^\n]*", "", text)):
        fields = {m.group(1): next(g for g in m.groups()[1:] if g is not None) for m in _FIELD.finditer(body)}
        if "id" not in fields:
            raise LabelMapError(f"label map item without an id: {body.strip()!r}")
        labels[int(fields["id"])] = fields.get("display_name") or fields.get("name") or str(fields["id"])
    if not labels:
        raise LabelMapError("no 'item { id: ... name: ... }' entries found")
    return labels


def parse_lines(text: str, first_id: int) -> dict[int, str]:
    labels = {}
    for index, line in enumerate(text.splitlines()):
        name = line.strip()
        if name and name != "???":
            labels[index + first_id] = name
    return labels


def load(path: Path, first_id: int) -> dict[int, str]:
    """Read a label map; ``first_id`` applies to one-label-per-line files only."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".pbtxt" or _ITEM.search(text):
        try:
            return parse_pbtxt(text)
        except LabelMapError as error:
            raise LabelMapError(f"{path}: {error}") from None
    return parse_lines(text, first_id)
