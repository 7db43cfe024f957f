"""The Dockerfile passes hadolint: no warning but those its comments justify (``hadolint ignore``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"


def test_the_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run([str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert linted.returncode == 0 and linted.stdout == "", linted.stdout + linted.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:  # a rule set aside says why, on the comment line above it
            above = lines[number - 1].strip()
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (number + 1, line)
