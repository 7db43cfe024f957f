"""The DeepStack face routes on a real ``scai serve`` with dlib's models from the shared assets, and
the shared face set (``datasets/faces``): every face found, the registered people recognised, the
others "unknown", at DeepStack's default threshold and at deepstack-python's; the real clients;
bad input refused in DeepStack's shape with the database unchanged."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from codeprojectai.core import CodeProjectAIFace
from conftest import ASSETS, Server, needs_assets, write_usr
from deepstack.core import DeepstackFace
from PIL import Image

from scai import apikeys
from scai.cli import main

pytestmark = [needs_assets, pytest.mark.slow]
FACE_MODELS = ASSETS / "models" / "face"
FACE_SET = ASSETS / "datasets" / "faces"
#: One photo of each registers them; the others stay strangers.
REGISTERED = ("john_salley", "john_savage", "john_schneider", "john_shimkus", "obama")
STRANGERS = ("john_simm", "biden")


def photos_of(person: str) -> list[Path]:
    return sorted((FACE_SET / "people" / person).glob("*.jpg"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("faces")
    usr = write_usr(folder / "usr")
    assert main(["models", "pull", "face", "--from", str(FACE_MODELS), "--usr", str(usr)]) == 0
    assert (
        "LANDMARKS = models/face/shape_predictor_5_face_landmarks.dat" in (usr / "face_recognition.config").read_text()
    )
    running = Server(folder / "session", usr, folder / "serve.log")
    yield running
    running.stop()


def post(server: Server, route: str, files: list | dict, **data: str) -> requests.Response:
    return requests.post(f"{server.url}/v1/vision/face{route}", files=files, data=data, timeout=60)


def recognised(server: Server, photo: Path, data: dict[str, str] | None = None) -> list[str]:
    answer = post(server, "/recognize", {"image": photo.read_bytes()}, **(data or {}))
    assert answer.status_code == 200, answer.text
    return [p["userid"] for p in answer.json()["predictions"]]


def test_every_face_of_the_group_photos_is_found_and_none_on_the_dogs(served: Server) -> None:
    counts = {}
    for line in (FACE_SET / "groups.tsv").read_text().splitlines()[1:]:
        name, faces, _ = line.split("\t", 2)
        answer = post(served, "", {"image": (FACE_SET / name).read_bytes()}).json()
        assert answer["success"] is True and answer["count"] == len(answer["predictions"])
        counts[name] = (len(answer["predictions"]), int(faces))
        scores = [p["confidence"] for p in answer["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(0.55 <= s <= 1 for s in scores)
    assert all(found == expected for found, expected in counts.values()), counts


def test_the_registered_are_recognised_and_strangers_stay_unknown_at_both_defaults(served: Server) -> None:
    for person in REGISTERED:
        answer = post(served, "/register", {"image": photos_of(person)[0].read_bytes()}, userid=person)
        assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
    cases = [(person, photo) for person in REGISTERED for photo in photos_of(person)[1:]]
    cases += [("unknown", photo) for person in STRANGERS for photo in photos_of(person)]
    with ThreadPoolExecutor(4) as pool:
        for threshold in ({}, {"min_confidence": "0.45"}):  # DeepStack's default 0.67, deepstack-python's
            answers = list(
                pool.map(recognised, [served] * len(cases), [photo for _, photo in cases], [threshold] * len(cases))
            )
            wrong = [(who, photo.name, got) for (who, photo), got in zip(cases, answers, strict=True) if got != [who]]
            assert not wrong, (threshold, wrong)
    assert len(cases) >= 50


def test_a_second_register_adds_to_the_first(served: Server) -> None:
    first, second = photos_of("john_simm")[:2]
    assert post(served, "/register", {"image": first.read_bytes()}, userid="simm").json()["faces"] == 1
    answer = post(served, "/register", [("image", second.read_bytes()), ("image1", first.read_bytes())], userid="simm")
    assert answer.json()["added"] == 2 and answer.json()["faces"] == 3
    assert recognised(served, photos_of("john_simm")[5]) == ["simm"]
    assert post(served, "/delete", {}, userid="simm").json()["success"] is True
    assert "simm" not in post(served, "/list", {}).json()["faces"]
    assert recognised(served, photos_of("john_simm")[5]) == ["unknown"]


def test_match_tells_one_person_from_two(served: Server) -> None:
    a, b = photos_of("john_savage")[:2]
    same = post(served, "/match", [("image1", a.read_bytes()), ("image2", b.read_bytes())]).json()
    other = post(served, "/match", [("image1", a.read_bytes()), ("image2", photos_of("john_simm")[0].read_bytes())])
    assert same["similarity"] > 0.65 and other.json()["similarity"] < 0.55, (same, other.json())


def test_the_real_clients(served: Server) -> None:
    """deepstack-python's DeepstackFace (as Home Assistant calls it) and codeproject-ai-api's."""
    deepstack = DeepstackFace(ip="127.0.0.1", port=served.port, timeout=60)
    photo = photos_of("john_schneider")
    assert deepstack.register("schneider-ds", photo[2].read_bytes()) == "face added"
    assert "schneider-ds" in deepstack.get_registered_faces()
    found = deepstack.recognize(photo[3].read_bytes())
    assert [p["userid"] for p in found] in (["john_schneider"], ["schneider-ds"])
    assert len(deepstack.detect(photo[3].read_bytes())) == 1
    codeproject = CodeProjectAIFace(ip="127.0.0.1", port=served.port, timeout=60)
    assert [p["userid"] for p in codeproject.recognize(photo[4].read_bytes())][0] in ("john_schneider", "schneider-ds")
    assert "schneider-ds" in codeproject.get_registered_faces()
    assert post(served, "/delete", {}, userid="schneider-ds").json()["success"] is True


def test_no_face_is_no_error_but_registers_nothing(served: Server) -> None:
    dogs = (FACE_SET / "groups" / "dl_dogs.jpg").read_bytes()
    answer = post(served, "/recognize", {"image": dogs})
    assert answer.status_code == 200 and answer.json()["predictions"] == [] and answer.json()["success"] is True
    before = post(served, "/list", {}).json()["faces"]
    face = photos_of("john_simm")[0].read_bytes()
    refused = post(served, "/register", [("image", ("me.jpg", face)), ("image1", ("dogs.jpg", dogs))], userid="x")
    assert refused.status_code == 400 and refused.json()["error"] == "no face detected in dogs.jpg"
    assert post(served, "/list", {}).json()["faces"] == before


def _png(mode: str) -> bytes:
    out = io.BytesIO()
    Image.open(photos_of("obama")[0]).convert(mode).save(out, "PNG" if mode == "RGBA" else "JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("files", "data", "message"),
    [
        ({"image": b""}, {"userid": "a"}, "empty"),
        ({"image": b"not an image at all"}, {"userid": "a"}, "image"),
        ({"image": b"x"}, {"userid": "a" * 10_000}, "1 to 100 characters"),
        ({"image": b"x"}, {"userid": "../../etc/passwd"}, "without '/'"),
        ({"image": b"x"}, {"userid": "two\nlines"}, "control characters"),
        ({"image": b"x"}, {}, "userid not specified"),
        ([(f"image{i}", b"x") for i in range(100)], {"userid": "a"}, "at most 20"),
    ],
    ids=["0 bytes", "no image", "10,000 characters", "slashes", "newline", "no userid", "100 files"],
)
def test_bad_registers_are_a_deepstack_400_within_a_second(served: Server, files, data, message: str) -> None:
    before = post(served, "/list", {}).json()["faces"]
    started = time.monotonic()
    answer = post(served, "/register", files, **data)
    assert time.monotonic() - started < 1.0
    body = answer.json()
    assert answer.status_code == 400 and body["success"] is False and body["code"] == 400, body
    assert message in body["error"], body
    assert post(served, "/list", {}).json()["faces"] == before


def test_odd_but_valid_images_are_faces(served: Server) -> None:
    """CMYK JPEG, RGBA PNG, a WebP named .jpg, and a 7000x7000 photo."""
    obama = Image.open(photos_of("obama")[0]).convert("RGB")
    variants = {"cmyk": _png("CMYK"), "rgba": _png("RGBA")}
    webp = io.BytesIO()
    obama.save(webp, "WEBP")
    variants["webp"] = webp.getvalue()
    large = Image.new("RGB", (7000, 7000), (200, 200, 200))
    large.paste(obama.resize((obama.width * 3, obama.height * 3)), (1000, 500))
    big = io.BytesIO()
    large.save(big, "JPEG", quality=85)
    variants["7000x7000"] = big.getvalue()
    for name, data in variants.items():
        answer = post(served, "", {"image": (f"{name}.jpg", data)})
        assert answer.status_code == 200 and answer.json()["count"] == 1, (name, answer.text)


def test_with_keys_set_every_face_route_needs_one(served: Server) -> None:
    keys = Path(served.session_dir).parent / "usr" / apikeys.KEYS_FILE
    keys.write_text("door-key\n", encoding="utf-8")
    try:
        for route in ("", "/recognize", "/register", "/list", "/delete", "/match"):
            assert post(served, route, {}).status_code == 401, route
        assert post(served, "/list", {}, api_key="door-key").status_code == 200
    finally:
        keys.unlink()


def test_on_redis_a_person_registered_through_one_portal_is_known_to_another_and_a_killed_worker_costs_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two portals in folders of their own meeting in one redis-server, face workers beside the
    first; a register of 8 photos through the second while its face worker is killed with SIGKILL
    holding claims: answered once, 8 faces added (none lost, none twice), known to the first."""
    import os
    import signal

    import redis
    from conftest import wait_for
    from test_scale_out import FAST_RECOVERY, redis_holders

    from scai.store.redis_streams import GROUP, RedisStore

    url = request.getfixturevalue("redis_url").replace("/0", "/3")
    client = redis.Redis.from_url(url)
    client.flushdb()
    usr = write_usr(tmp_path / "usr")
    assert main(["models", "pull", "face", "--from", str(FACE_MODELS), "--usr", str(usr)]) == 0
    store = ["--store", url]
    first = Server(tmp_path / "a" / "session", usr, tmp_path / "a.log", *store, env=FAST_RECOVERY)
    second = Server(tmp_path / "b" / "session", usr, tmp_path / "b.log", *store, "--portal-only", env=FAST_RECOVERY)
    try:
        photos = photos_of("john_shimkus")
        pool = RedisStore(url, 3600)._pool("face_recognition")
        with ThreadPoolExecutor(1) as pool_of_one:
            files = [(f"image{i}", (photo.name, photo.read_bytes())) for i, photo in enumerate(photos[:8])]
            pending = pool_of_one.submit(post, second, "/register", files, userid="shimkus")
            holder = wait_for(lambda: redis_holders(client, pool), 30, "a face worker to hold a claim")
            os.kill(int(next(iter(holder))), signal.SIGKILL)
            answer = pending.result(90)
        assert answer.status_code == 200, answer.text
        assert answer.json()["added"] == 8 and answer.json()["faces"] == 8, answer.json()
        assert recognised(first, photos[9]) == ["shimkus"] and "shimkus" in post(first, "/list", {}).json()["faces"]
        assert "was killed by SIGKILL" in (tmp_path / "a.log").read_text()
        assert client.xpending(pool, GROUP)["pending"] == 0
    finally:
        second.stop()
        first.stop()
