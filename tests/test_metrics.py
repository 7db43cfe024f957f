"""``/metrics``: Prometheus' text format, parsed with prometheus_client's own parser. In process
(the portal and a burst worker share this process's values), and under a real ``scai serve``,
where uwsgi's processes and the workers each write their own files and a scrape merges them."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import IMAGES, Server, needs_assets, wait_for, write_usr
from fakes import POISON, tiny_png, upload
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def test_sessions_requests_and_the_queue_are_counted(client, worker) -> None:
    before = samples(client.get("/metrics").text)
    for _ in range(3):
        upload(client)
    upload(client, tiny_png(POISON))
    waiting = samples(client.get("/metrics").text)
    assert value(waiting, "scai_queue_depth", job="classify") == 4
    assert value(waiting, "scai_queue_oldest_wait_seconds", job="classify") >= 0
    worker.drain()
    after = samples(client.get("/metrics").text)
    assert value(after, "scai_queue_depth", job="classify") == 0

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("scai_sessions_total", job="classify", model="default", state="complete") == 3
    assert grew("scai_sessions_total", job="classify", model="default", state="failure") == 1
    assert grew("scai_inference_seconds_count", job="classify", model="default") == 3
    route = {"route": "/api/v1/<kind>", "method": "POST"}
    assert grew("scai_http_requests_total", **route, status="202") == 4
    assert grew("scai_http_request_duration_seconds_count", route="/api/v1/<kind>") == 4
    assert client.get("/metrics").headers["Content-Type"].startswith("text/plain")


def test_a_model_that_cannot_load_is_counted(client, settings) -> None:
    from fakes import FakeTask

    from scai.config import CLASSIFICATION
    from scai.worker import Worker

    broken = Worker(settings, CLASSIFICATION, task=FakeTask(broken=["other"]))
    before = samples(client.get("/metrics").text)
    upload(client, route="/api/v1/classify?wait=0&model=other")
    broken.drain()
    after = samples(client.get("/metrics").text)
    labels = {"job": "classify", "model": "other"}
    assert (
        value(after, "scai_model_load_failures_total", **labels)
        - value(before, "scai_model_load_failures_total", **labels)
        == 1
    )


@needs_assets
@pytest.mark.slow
def test_a_real_service_merges_every_process(tmp_path: Path) -> None:
    usr = write_usr(tmp_path / "usr")
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log", "--workers", "2")
    try:
        photo = (IMAGES / "parrot.jpg").read_bytes()
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(lambda: server.classify(photo, wait=60).status_code) for _ in range(24)]
            during = requests.get(f"{server.url}/metrics", timeout=10)  # while the uploads run
            answers = [future.result() for future in pending]
        assert answers == [200] * 24
        assert during.status_code == 200 and ("scai_queue_depth", (("job", "classify"),)) in samples(during.text)
        scraped = samples(requests.get(f"{server.url}/metrics", timeout=10).text)
        labels = {"job": "classify", "model": "default"}
        assert value(scraped, "scai_sessions_total", **labels, state="complete") == 24  # both workers' files
        assert value(scraped, "scai_inference_seconds_count", **labels) == 24
        route = {"route": "/api/v1/<kind>", "method": "POST", "status": "200"}
        assert value(scraped, "scai_http_requests_total", **route) == 24  # every uwsgi process's
        assert value(scraped, "scai_workers_live", job="classify") == 2
        assert value(scraped, "scai_queue_depth", job="classify") == 0

        workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker_of(int(p), server)]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        wait_for(
            lambda: value(samples(requests.get(f"{server.url}/metrics", timeout=10).text),
                          "scai_worker_restarts_total", job="classify") == 1,
            30, "the restart to be counted",
        )  # fmt: skip
        assert server.classify(photo, wait=60).status_code == 200
        scraped = samples(requests.get(f"{server.url}/metrics", timeout=10).text)
        assert value(scraped, "scai_sessions_total", **labels, state="complete") == 25, "the dead worker's count stays"
    finally:
        server.stop()


def _is_worker_of(pid: int, server: Server) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return parent == server.process.pid and b"worker" in command


def test_a_store_that_does_not_answer_loses_only_its_gauges(tmp_path) -> None:
    from conftest import free_port
    from fakes import write_fake_usr

    from scai.config import Settings
    from scai.portal import create_app

    settings = Settings(session_dir=tmp_path / "s", usr_dir=write_fake_usr(tmp_path / "usr"))
    settings.store = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    scraped = create_app(settings).test_client().get("/metrics")
    assert scraped.status_code == 200
    assert value(samples(scraped.text), "scai_store_up") == 0 and "scai_http_requests" in scraped.text


@needs_assets
@pytest.mark.slow
def test_job_mode_processes_share_their_slot_files(tmp_path: Path) -> None:
    """Each job-mode process records into the files of the slot it holds: the folder does not
    grow with every upload, and the counts of processes that ended stay."""
    usr = write_usr(tmp_path / "usr")
    metrics_dir = tmp_path / "metrics"
    server = Server(tmp_path / "session", usr, tmp_path / "serve.log", "--runningmode", "job", "--workers", "1",
                    env={"SCAI_METRICS_DIR": str(metrics_dir)})  # fmt: skip
    try:
        photo = (IMAGES / "parrot.jpg").read_bytes()
        for _ in range(6):
            assert server.classify(photo, wait=60).status_code == 200
        owners = {f.stem.split("_", 1)[1] for f in metrics_dir.glob("*.db")}
        by_pid = {owner for owner in owners if owner.isdigit()}
        assert all(Path(f"/proc/{pid}").exists() for pid in by_pid), "only live processes (uwsgi's) own files by pid"
        assert [owner for owner in owners if "slot0" in owner], "the job processes' files are the slot's"
        scraped = samples(requests.get(f"{server.url}/metrics", timeout=10).text)
        assert value(scraped, "scai_sessions_total", job="classify", model="default", state="complete") == 6
    finally:
        server.stop()


def test_the_session_folder_size_is_a_gauge(client, settings, monkeypatch) -> None:
    """What the sessions take on disk (blocks, as ``du`` counts them), how many there are, and the
    disk's free space: under load the folder grows by megabytes a second."""
    from scai import metrics

    for _ in range(4):
        upload(client, tiny_png(size=(64, 64)))
    root = settings.session_dir
    sessions = [folder for folder in root.iterdir() if folder.name.startswith("d-")]
    on_disk = sum(path.stat().st_blocks * 512 for folder in sessions for path in (folder, *folder.iterdir()))
    scraped = samples(client.get("/metrics").text)
    assert value(scraped, "scai_sessions_stored") == 4
    assert value(scraped, "scai_session_folder_bytes") == on_disk > 0
    assert value(scraped, "scai_disk_free_bytes") > 0
    monkeypatch.setattr(metrics, "FOLDER_SAMPLE", 2)  # past the sample: estimated from 2 of the 4
    monkeypatch.setattr(metrics, "_folder_usage", {})
    assert metrics.session_folder_usage(root) == (4, on_disk), "4 sessions of the same size"
