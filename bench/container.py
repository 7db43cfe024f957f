"""The container image measured: build times from a warm cache, start to a healthy /healthz, and
classification inside the container against the same code outside it, side by side in one run.

    .venv/bin/python bench/container.py [--variant full|slim] [--seconds 8] [--repeat 3] [--skip-build]

Podman runs with the test harness's containers.conf (tests/containers.py), and the base image is
made from Debian's packages when it is missing, as the container tests do.

  * build: the image built from a copy of the tracked tree, twice: unchanged (every layer cached)
    and after a one-line change to a source file (the sources' layers rebuilt, the dependencies'
    layers reused), both variants;
  * start: ``podman run`` of the image until its /healthz answers 200, three times;
  * speed: ``bench/compare.py --only classify`` with the container as another SCAI
    (``scai-container``: host networking, so no port proxy sits between the load and the portal;
    ``scai-container-port``: a published port, as ``docker run -p`` does), beside SCAI started
    from this tree and the plain peers: the ratio of each container's rate to SCAI's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import ASSETS, free_port, wait_for  # noqa: E402
from containers import IMAGES_BUILT, Podman, build, engine, healthy  # noqa: E402

START_TIMEOUT = 180.0


def tracked_copy(folder: Path) -> Path:
    """The files git tracks or would track (what a clone has), copied: the build context."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, names):
        source, target = ROOT / name.decode(), folder / name.decode()
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


def timed_build(podman: Podman, context: Path, variant: str) -> float:
    started = time.monotonic()
    build(podman, variant, context)
    return time.monotonic() - started


def build_times(podman: Podman, variants: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="scai-context-") as folder:
        context = tracked_copy(Path(folder))
        for variant in variants:
            timed_build(podman, context, variant)  # whatever the cache holds, brought up to date
        unchanged = {variant: timed_build(podman, context, variant) for variant in variants}
        with (context / "scai" / "__init__.py").open("a") as source:
            source.write(f"# changed for bench/container.py at {time.time()}\n")
        changed = {variant: timed_build(podman, context, variant) for variant in variants}
    print("\nbuild from a warm cache, seconds:")
    for variant in variants:
        print(f"  {variant:<5} unchanged {unchanged[variant]:6.1f}   one source file changed {changed[variant]:6.1f}")


def start_times(podman: Podman, image: str, runs: int = 3) -> None:
    seconds = []
    for _ in range(runs):
        port, name = free_port(), f"scai-bench-start-{os.getpid()}"
        started = time.monotonic()
        podman("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5001", image)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda url=url: healthy(url), START_TIMEOUT, f"{image}'s /healthz")
            seconds.append(time.monotonic() - started)
        finally:
            podman("rm", "-f", name, check=False)
    print(f"\nstart to a healthy /healthz ({image}), seconds: " + ", ".join(f"{s:.1f}" for s in seconds))


def container_command(image: str, name: str, network: str, listen: str) -> str:
    """A --scai-also template: the image serving compare.py's usr (and the assets its configs
    name, read-only at the same paths), with its own session folder."""
    mounts = f"-v {{usr}}:{{usr}}:ro -v {ASSETS}:{ASSETS}:ro"
    return f"{name}=podman run --rm --name {name}-{os.getpid()} {network} {mounts} {image} serve {listen} --usr {{usr}}"


def speed(podman: Podman, image: str, args: argparse.Namespace) -> None:
    host = container_command(image, "scai-container", "--network host", "--host 127.0.0.1 --port {port}")
    published = container_command(image, "scai-container-port", "-p 127.0.0.1:{port}:5001", "--host 0.0.0.0")
    command = [sys.executable, str(ROOT / "bench" / "compare.py"), "--only", "classify", "--seconds", str(args.seconds)]
    command += ["--repeat", str(args.repeat), "--scai-also", host, "--scai-also", published]
    try:
        subprocess.run(command, env=podman.env, check=True)
    finally:
        for name in ("scai-container", "scai-container-port"):
            podman("rm", "-f", f"{name}-{os.getpid()}", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(IMAGES_BUILT), default="full", help="the image run (default full)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds a round (compare.py)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each round (compare.py)")
    parser.add_argument("--skip-build", action="store_true", help="no build timing: use the image built last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scai-podman-") as folder:
        podman = engine(Path(folder))
        if not args.skip_build:
            build_times(podman, ["full", "slim"])
        image = IMAGES_BUILT[args.variant]
        start_times(podman, image)
        speed(podman, image, args)


if __name__ == "__main__":
    main()
