"""The face database on both stores: a register adds, a delete removes, recognition takes the nearest
of every stored embedding, the table follows changes made by another process, and registers of one
person at once from several processes all land (no assets: embeddings made here)."""

from __future__ import annotations

import math
import multiprocessing
import secrets
from pathlib import Path

import numpy as np
import pytest

from scai.errors import ConfigError
from scai.facedb import FolderFaces, RedisFaces, check_userid, confidence


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture(params=["folder", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path):
    """A way to open the same database again, as another portal would."""
    if request.param == "folder":
        return lambda: FolderFaces(tmp_path)
    import redis

    url, prefix = request.getfixturevalue("redis_url"), f"t{secrets.token_hex(4)}:"
    return lambda: RedisFaces(redis.Redis.from_url(url), prefix)


def test_registers_add_deletes_remove_and_the_nearest_decides(make) -> None:
    faces, other = make(), make()
    assert faces.nearest(unit(1)) == (None, math.inf) and faces.names() == []
    assert faces.add("ann", [unit(1)]) == 1
    assert faces.add("ann", [unit(2), unit(3)]) == 3, "a second register adds to the first"
    assert other.add("bob", [unit(4)]) == 1
    assert faces.names() == ["ann", "bob"], "another portal's register is seen"
    assert faces.nearest(unit(3) + 0.01)[0] == "ann" and faces.nearest(unit(4))[0] == "bob"
    assert faces.nearest(unit(4))[1] < 1e-5
    assert other.delete("ann") and not other.delete("ann")
    assert faces.names() == ["bob"] and faces.nearest(unit(2))[0] == "bob"


def _register_many(make, count: int) -> None:
    faces = make()
    for i in range(count):
        faces.add("same", [unit(i)])


def test_registers_of_one_person_at_once_all_land(make) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_register_many, args=(make, 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    owners, matrix = make().table()
    assert owners == ["same"] * 100 and matrix.shape == (100, 128)


def test_the_confidence_mapping_keeps_deepstacks_thresholds_meaningful() -> None:
    """The same person's photos were at most 0.548 apart on the shared face set, two people at
    least 0.606: recognize's 0.67 and deepstack-python's 0.45 both fall between."""
    assert confidence(0.548) > 0.67 and confidence(0.606) < 0.45
    assert confidence(0.585) == pytest.approx(0.5) and confidence(0.3) > 0.99 and confidence(0.9) < 0.001
    assert confidence(math.inf) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("userid", "why"),
    [("", "not specified"), ("  ", "not specified"), (None, "not specified"), ("a" * 101, "1 to 100"),
     ("a/b", "'/'"), ("a\\b", "'/'"), ("a\nb", "control"), ("a\x00", "control")],
)  # fmt: skip
def test_userids_that_cannot_be_are_refused(userid: str | None, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        check_userid(userid)
    assert check_userid("Anne-Marie O'Neill") == "Anne-Marie O'Neill"


def test_the_faces_command_lists_deletes_exports_and_imports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scai.cli import main

    FolderFaces(tmp_path / "a").add("ann", [unit(1), unit(2)])
    FolderFaces(tmp_path / "a").add("bob", [unit(3)])
    here = ["--session-dir", str(tmp_path / "a")]
    assert main(["faces", "list", *here]) == 0
    assert capsys.readouterr().out == "ann\t2 faces\nbob\t1 face\n"
    assert main(["faces", "export", str(tmp_path / "all.json"), *here]) == 0
    assert main(["faces", "import", str(tmp_path / "all.json"), "--session-dir", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.endswith("imported 3 faces of 2 people\n")
    owners, matrix = FolderFaces(tmp_path / "b").table()
    assert owners == ["ann", "ann", "bob"] and np.allclose(matrix[2], unit(3), atol=1e-6)
    assert main(["faces", "delete", "ann", *here]) == 0 and FolderFaces(tmp_path / "a").names() == ["bob"]
    assert main(["faces", "delete", "ann", *here]) == 2
    (tmp_path / "bad.json").write_text('{"people": {"x": [[1, 2]]}}')
    assert main(["faces", "import", str(tmp_path / "bad.json"), *here]) == 2
    assert "not 128 numbers" in capsys.readouterr().err and FolderFaces(tmp_path / "a").names() == ["bob"]
