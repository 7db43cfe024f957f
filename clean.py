#!/usr/bin/env python3
"""Remove old SCAI sessions, for cron; the same command and flags as ``scai clean``:

clean.py --sessionpath /srv/scai/session --keeptimeperoid 86400
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scai.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
