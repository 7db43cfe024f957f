"""A session's files (the upload, the annotated image) in S3-compatible object storage, beside a
Redis store that keeps the sessions' state: Redis holds what must be atomic and small, the bucket
what is large. ``SCAI_BLOBS=s3://BUCKET/PREFIX?endpoint=URL&region=REGION``; the keys are the
ones every S3 tool reads, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``.

Each file is the object ``PREFIX<session id>/<name>``. An upload is written before its session is
queued, so a worker never claims a session whose photo is not there yet; a removed session's files
are deleted by name, and ``sweep`` (``scai clean``) deletes what is older than the keep time, since
Redis expires the sessions themselves without telling anyone. A bucket lifecycle rule may do the
same, by days. A bucket that does not answer is ``StoreUnavailable`` (503 and Retry-After for a
client; a worker lets its claim go, to be tried again), never a lost session.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from scai.errors import ConfigError, StoreUnavailable

log = logging.getLogger("scai.store")

SCHEME = "s3://"
#: A bucket that refuses or drops new connections fails a call within about CONNECT x (1 +
#: RETRIES) seconds and the backoff between them (503), rather than holding a portal thread or a
#: worker. A read that stalls on a connection already open waits up to READ seconds an attempt.
CONNECT_SECONDS, READ_SECONDS, RETRIES = 2.0, 20.0, 2
KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class BlobsURL:
    """Where the files go: parsed from ``SCAI_BLOBS``."""

    bucket: str
    prefix: str
    endpoint: str
    secure: bool
    region: str | None


def parse_url(url: str) -> BlobsURL:
    """``s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R``; without ``endpoint``, AWS."""
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query, strict_parsing=False).items()}
    unknown = set(query) - {"endpoint", "region"}
    if not url.startswith(SCHEME) or not parts.netloc or unknown:
        raise ConfigError(
            f"SCAI_BLOBS must be s3://BUCKET/PREFIX?endpoint=URL&region=REGION, not {url!r}"
            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
        )
    endpoint = urlsplit(query.get("endpoint", "https://s3.amazonaws.com"))
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc or endpoint.path.strip("/"):
        raise ConfigError(f"SCAI_BLOBS: endpoint must be http(s)://HOST[:PORT], not {query['endpoint']!r}")
    prefix = parts.path.strip("/")
    return BlobsURL(
        bucket=parts.netloc,
        prefix=f"{prefix}/" if prefix else "",
        endpoint=endpoint.netloc,
        secure=endpoint.scheme == "https",
        region=query.get("region"),
    )


def credentials(environ: Mapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """The access key pair; both unset is anonymous access (a bucket that allows it). One of them
    set but blank, or only one of them, stops the service: a half-given secret is a mistake."""
    values = [environ.get(name) for name in KEY_VARIABLES]
    if all(value is None for value in values):
        return None, None
    if any(value is None or not value.strip() for value in values):
        raise ConfigError("SCAI_BLOBS: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (not blank), or neither")
    return values[0].strip(), values[1].strip()  # type: ignore[union-attr]


class S3Blobs:
    """The blob seam of the Redis store (``RedisBlobs``'s calls) on an S3 bucket. ``inline`` is
    False: these calls cannot ride a Redis transaction, so the store makes them around it."""

    inline = False

    def __init__(self, url: str, environ: Mapping[str, str] = os.environ) -> None:
        self.where = parse_url(url)
        access, secret = credentials(environ)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_SECONDS, read=READ_SECONDS),
            retries=urllib3.Retry(total=RETRIES, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
            maxsize=16,
        )
        self.client = Minio(
            self.where.endpoint, access_key=access, secret_key=secret, secure=self.where.secure,
            region=self.where.region, http_client=http,
        )  # fmt: skip

    def name(self, session_id: str, name: str) -> str:
        return f"{self.where.prefix}{session_id}/{name}"

    def get(self, session_id: str, name: str) -> bytes | None:
        """The file's bytes, or None if there is no such object."""
        with self._answering():
            try:
                response = self.client.get_object(self.where.bucket, self.name(session_id, name))
            except S3Error as error:
                if error.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def put(self, session_id: str, name: str, data: bytes) -> None:
        with self._answering():
            self.client.put_object(self.where.bucket, self.name(session_id, name), io.BytesIO(data), len(data))

    def delete(self, session_id: str, names: list[str]) -> None:
        """Delete the session's named files (those its state records: no listing)."""
        self._delete([self.name(session_id, name) for name in names])

    def sweep(self, older_than_seconds: float) -> int:
        """Delete every file older than ``older_than_seconds`` (their sessions expired in Redis);
        returns how many."""
        cutoff = time.time() - older_than_seconds
        with self._answering():
            listing = self.client.list_objects(self.where.bucket, prefix=self.where.prefix, recursive=True)
            old = [item.object_name for item in listing if item.last_modified.timestamp() < cutoff]
        self._delete(old)
        return len(old)

    def problem(self) -> str | None:
        """Why files cannot be stored now, or None."""
        try:
            with self._answering():
                if not self.client.bucket_exists(self.where.bucket):
                    return f"the blob store has no bucket {self.where.bucket!r}"
        except StoreUnavailable:
            return "the blob store does not answer"
        return None

    def _delete(self, names: list[str]) -> None:
        if not names:
            return
        with self._answering():  # remove_objects is lazy: listing its errors does the work
            failed = list(self.client.remove_objects(self.where.bucket, (DeleteObject(name) for name in names)))
        if failed:
            log.warning("the blob store kept %d of %d objects: %s", len(failed), len(names), failed[0])

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """S3's and the connection's errors as ``StoreUnavailable``; for a client it names no
        address, bucket or key (the log has them)."""
        try:
            yield
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("the blob store is unavailable: %s", error)
            raise StoreUnavailable("the blob store is unavailable (it does not answer); try again shortly") from None
