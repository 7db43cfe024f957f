"""SCAI on separate hosts under faults, for longer than the tests: redis-server, two portals and
two classification workers in network namespaces of their own (tests/netns.py), a closed-loop
load through both portals, and one fault after another (tests/hostsite.py's catalogue: a worker
host cut off, a portal cut off from Redis, SIGKILLs, a lossy link, Redis restarted). Prints the
table the README shows: answers by status, sessions lost or completed twice, the longest client
wait, and the recovery time. Needs root, iproute2 and nftables; SCAI_ASSETS for the photo.

    sudo .venv/bin/python bench/hosts.py [--clients 16] [--after 10] [--only worker-cut,portal-cut]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import IMAGES, write_usr  # noqa: E402
from hostsite import HEADER, Site, faults, run_fault  # noqa: E402
from netns import has_netem, why_not  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients over both portals (default 16)")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load after each recovery (default 10)")
    parser.add_argument("--only", default="", help="comma-separated fault keys (default: all)")
    args = parser.parse_args()
    reason = why_not()
    if reason:
        raise SystemExit(reason)
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    netem = has_netem()
    with tempfile.TemporaryDirectory(prefix="scai-hosts-") as folder:
        site = Site(Path(folder), write_usr(Path(folder) / "usr"))
        try:
            site.start()
            answer = requests.post(f"{site.url(site.portals[0])}/api/v1/classify", params={"wait": 30},
                                   files={"photo": ("p.jpg", photo)}, timeout=60)  # fmt: skip
            reference = answer.json()["predictions"][0]["label"]
            catalogue = faults(site, netem)
            keys = [key for key in args.only.split(",") if key] or list(catalogue)
            rows = []
            for key in keys:
                report, _ = run_fault(site, photo, reference, catalogue[key], args.clients, args.after)
                rows.append(report.row())
                print(rows[-1], flush=True)
        finally:
            site.close()
    print(f"\n{args.clients} clients over 2 portals, 2 workers, 1 Redis (appendonly, everysec)\n")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
