"""Who is registered: each person's face embeddings (128 floats each, never a photo), shared by every
portal through the configured store, the session folder on one machine or Redis across machines.

A register **adds** its embeddings to the person's earlier ones (DeepStack replaced them, so a
client that registers one photo per call, as Double Take does, kept only the last), and
recognition compares a face with every stored embedding: the nearest decides.

Confidence from the Euclidean distance d between two embeddings:
``1 / (1 + exp(SLOPE x (d - MIDPOINT)))``, 0.5 at d = 0.585. dlib's own rule is "the same person
below 0.6"; on the shared face set the same person's photos were at most 0.548 apart and two
people at least 0.606. So DeepStack's thresholds mean what its users expect: recognize's default
0.67 is d < 0.557, deepstack-python's and Home Assistant's 0.45 is d < 0.593, both short of 0.6,
so a stranger is "unknown" at either, and match gives 0.72 or more for one person's two photos
(d <= 0.548) and 0.37 or less for two people (d >= 0.606). (DeepStack's own (cos + 1) / 2 puts
strangers near 0.9 on these embeddings.)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scai.config import Settings
from scai.errors import ConfigError
from scai.files import atomic_write

MIDPOINT = 0.585
SLOPE = 25.0
#: A userid: what a person is called in answers and in ``scai faces``; no slash, no control character.
USERID_RE = re.compile(r"[^\x00-\x1f\x7f/\\]{1,100}")
DIMENSIONS = 128


def confidence(distance: float) -> float:
    """How sure that two faces ``distance`` apart are one person (see the module)."""
    return 1.0 / (1.0 + math.exp(min(50.0, SLOPE * (distance - MIDPOINT))))


def check_userid(userid: str | None) -> str:
    """The userid as given, or ``ConfigError`` saying why it cannot be one."""
    if not userid or not userid.strip():
        raise ConfigError("userid not specified")
    if not USERID_RE.fullmatch(userid):
        raise ConfigError("a userid is 1 to 100 characters, without '/', '\\' or control characters (newlines)")
    return userid


class Faces:
    """What both databases share: the nearest stored embedding, from a table kept in memory and
    read again only when the database changed (``stamp``)."""

    def __init__(self) -> None:
        self._table: tuple[Any, list[str], np.ndarray] | None = None

    def stamp(self) -> Any:
        raise NotImplementedError

    def people(self) -> dict[str, list[list[float]]]:
        raise NotImplementedError

    def table(self) -> tuple[list[str], np.ndarray]:
        """Every stored embedding [N, 128] and the userid of each row."""
        stamp = self.stamp()
        if self._table is None or self._table[0] != stamp:
            owners, rows = [], []
            for userid, embeddings in self.people().items():
                owners += [userid] * len(embeddings)
                rows += embeddings
            matrix = np.asarray(rows, dtype=np.float32).reshape(-1, DIMENSIONS)
            self._table = (stamp, owners, matrix)
        return self._table[1], self._table[2]

    def nearest(self, embedding: np.ndarray) -> tuple[str | None, float]:
        """The userid of the stored embedding nearest to ``embedding`` and the distance (None and
        infinity where nobody is registered)."""
        owners, matrix = self.table()
        if not owners:
            return None, math.inf
        distances = np.linalg.norm(matrix - np.asarray(embedding, dtype=np.float32), axis=1)
        best = int(distances.argmin())
        return owners[best], float(distances[best])

    def names(self) -> list[str]:
        return sorted(self.people())


class FolderFaces(Faces):
    """One JSON file a person in ``SESSION_DIR/faces/`` (named by a digest of the userid, so any
    userid is a safe file name), replaced atomically; registers and deletes take a lock on the
    folder, so two at once never lose one's embeddings."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.folder = Path(root) / "faces"

    def _path(self, userid: str) -> Path:
        return self.folder / (hashlib.sha256(userid.encode("utf-8")).hexdigest()[:40] + ".json")

    @contextmanager
    def _locked(self) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def add(self, userid: str, embeddings: list[np.ndarray]) -> int:
        """Add embeddings to ``userid``'s; how many the person has now."""
        with self._locked():
            path = self._path(userid)
            known = self._read(path)[1] if path.exists() else []
            known += [[round(float(v), 7) for v in e] for e in embeddings]
            atomic_write(path, json.dumps({"userid": userid, "embeddings": known}).encode("utf-8"))
            return len(known)

    def delete(self, userid: str) -> bool:
        with self._locked():
            try:
                self._path(userid).unlink()
            except FileNotFoundError:
                return False
            return True

    def stamp(self) -> Any:
        try:
            return os.stat(self.folder).st_mtime_ns, len(os.listdir(self.folder))
        except FileNotFoundError:
            return None

    def people(self) -> dict[str, list[list[float]]]:
        try:
            files = sorted(self.folder.glob("*.json"))
        except OSError:
            return {}
        found = {}
        for path in files:
            try:
                userid, embeddings = self._read(path)
            except FileNotFoundError:  # deleted meanwhile
                continue
            found[userid] = embeddings
        return found

    @staticmethod
    def _read(path: Path) -> tuple[str, list[list[float]]]:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record["userid"], record["embeddings"]


class RedisFaces(Faces):
    """A list of embeddings a person (``scai:face:<userid>``), the userids in a set, and a counter
    that every change increments (the table's stamp); each change is one transaction."""

    def __init__(self, client: Any, prefix: str = "scai:") -> None:
        super().__init__()
        self.redis, self.prefix = client, prefix

    def _key(self, userid: str) -> str:
        return f"{self.prefix}face:{userid}"

    def add(self, userid: str, embeddings: list[np.ndarray]) -> int:
        rows = [json.dumps([round(float(v), 7) for v in e]) for e in embeddings]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._key(userid), *rows)
            pipe.sadd(f"{self.prefix}faces", userid)
            pipe.incr(f"{self.prefix}faces:version")
            count, _, _ = pipe.execute()
        return int(count)

    def delete(self, userid: str) -> bool:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(userid))
            pipe.srem(f"{self.prefix}faces", userid)
            pipe.incr(f"{self.prefix}faces:version")
            removed, _, _ = pipe.execute()
        return bool(removed)

    def stamp(self) -> Any:
        return self.redis.get(f"{self.prefix}faces:version")

    def people(self) -> dict[str, list[list[float]]]:
        userids = sorted(u.decode("utf-8") for u in self.redis.smembers(f"{self.prefix}faces"))
        with self.redis.pipeline(transaction=True) as pipe:
            for userid in userids:
                pipe.lrange(self._key(userid), 0, -1)
            lists = pipe.execute()
        return {u: [json.loads(row) for row in rows] for u, rows in zip(userids, lists, strict=True) if rows}


def run_command(settings: Settings, action: str, userid: str | None, file: Path | None) -> int:
    """``scai faces list|delete|export|import``, on the store the settings name."""
    import sys

    from scai.store import open_store

    faces = open_faces(settings, open_store(settings))
    if action == "list":
        for name, embeddings in sorted(faces.people().items()):
            print(f"{name}\t{len(embeddings)} face{'s' if len(embeddings) != 1 else ''}")
        return 0
    if action == "delete":
        if not faces.delete(check_userid(userid)):
            raise ConfigError(f"nobody is registered as {userid!r}")
        print(f"deleted {userid}")
        return 0
    if action == "export":
        text = json.dumps({"version": 1, "people": faces.people()}) + "\n"
        sys.stdout.write(text) if str(file) == "-" else atomic_write(Path(file), text.encode("utf-8"))
        return 0
    people = _imported(sys.stdin.read() if str(file) == "-" else Path(file).read_text(encoding="utf-8"))
    for name, embeddings in people.items():
        faces.add(name, [np.asarray(e, dtype=np.float32) for e in embeddings])
    print(f"imported {sum(len(e) for e in people.values())} faces of {len(people)} people")
    return 0


def _imported(text: str) -> dict[str, list[list[float]]]:
    """The people of an export, checked whole before anything is added."""
    try:
        people = json.loads(text)["people"]
        for name, embeddings in people.items():
            check_userid(name)
            if not all(len(e) == DIMENSIONS and all(math.isfinite(float(v)) for v in e) for e in embeddings):
                raise ValueError(f"{name!r} has an embedding that is not {DIMENSIONS} numbers")
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"not an export of `scai faces export`: {error}") from None
    return people


def open_faces(settings: Settings, store: Any) -> Faces:
    """The face database of the configured store: Redis's where the sessions are there."""
    client = getattr(store, "redis", None)
    if client is not None:
        return RedisFaces(client, getattr(store, "prefix", "scai:"))
    return FolderFaces(settings.session_dir)
