"""The files in ``deploy/``, rendered and run for real: uwsgi with the rendered ini, nginx with the
rendered site on loopback ports, the workers started as their units start them, and the cron line
for ``clean.py``. Every request goes through nginx."""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import IMAGES, ROOT, age, free_port, needs_assets, stop, wait_for, write_usr

from scai.config import cpu_count
from scai.deploy import Installation, RenderError, render
from scai.store import PROCESSING
from scai.store.folder import FolderStore

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UWSGI = Path(sys.executable).parent / "uwsgi"

pytestmark = [
    needs_assets,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx)"),
    pytest.mark.skipif(not UWSGI.exists(), reason=f"uwsgi is not installed in {UWSGI.parent}"),
]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(path)
    return parser


def start_as_unit(path: Path, log: Path) -> subprocess.Popen:
    """Run a rendered unit's ExecStart in its WorkingDirectory with its Environment= lines, as
    systemd would."""
    service = unit(path)["Service"]
    variables = [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith("Environment=")]
    return subprocess.Popen(
        shlex.split(service["ExecStart"]),
        cwd=service["WorkingDirectory"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **dict(v.split("=", 1) for v in variables)},
    )


def nginx_main_config(folder: Path, rendered: Path, subpath_port: int) -> Path:
    """An nginx.conf of the test's own that includes the rendered site and the sub-path snippet."""
    for name in ("mime.types", "uwsgi_params"):
        shutil.copy(f"/etc/nginx/{name}", folder / name)
    user = "user root;" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = folder / "nginx.conf"
    config.write_text(
        f"""
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    include {folder}/mime.types;
    access_log {folder}/access.log;
    {temp}
    include {rendered}/nginx/scai-log-format.conf;
    include {rendered}/nginx/scai.conf;
    server {{
        listen 127.0.0.1:{subpath_port};
        location / {{ return 404; }}
        include {rendered}/nginx/scai-subpath.conf;
    }}
}}
"""
    )
    return config


class Deployment:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, self.subpath_port = free_port(), free_port()
        self.url, self.subpath_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.subpath_port}/scai"
        for name in ("run", "log", "session", "nginx"):
            (folder / name).mkdir()
        self.installation = Installation(
            prefix=ROOT,
            user=pwd.getpwuid(os.getuid()).pw_name,
            port=self.port,
            host="127.0.0.1",
            session_dir=folder / "session",
            usr_dir=write_usr(folder / "usr", ("image_classification", "object_detection")),
            run_dir=folder / "run",
            log_dir=folder / "log",
            max_upload_mb=1,
            workers="2",
        )
        self.rendered = folder / "etc"
        render(self.installation, self.rendered)
        self.processes = [
            start_as_unit(self.rendered / "systemd" / name, folder / "log" / f"{name}.log")
            for name in ("scai.service", "scai-classify.service", "scai-detect.service")
        ]
        config = nginx_main_config(folder / "nginx", self.rendered, self.subpath_port)
        self.processes.append(subprocess.Popen([NGINX, "-c", str(config), "-p", str(folder / "nginx")]))
        wait_for(self.healthy, 60, "nginx and uwsgi to answer")

    def healthy(self) -> bool:
        for process in self.processes:
            assert process.poll() is None, f"{process.args[0]} exited; logs in {self.folder}"
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def uwsgi_log(self) -> str:
        return (self.folder / "log" / "uwsgi.log").read_text()

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    running = Deployment(tmp_path_factory.mktemp("deploy"))
    yield running
    running.stop()


def test_classify_through_nginx(deployment: Deployment) -> None:
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    response = requests.post(
        f"{deployment.url}/api/v1/classify",
        params={"model": "mobilenet_v2", "wait": 30},
        files={"photo": ("grace_hopper.jpg", photo)},
    )
    assert response.status_code == 200 and response.headers["Server"].startswith("nginx")
    body = response.json()
    assert body["predictions"][0]["label"] == "military uniform"
    assert requests.get(deployment.url + body["links"]["input"]).content == photo


def test_session_keys_stay_out_of_the_logs(deployment: Deployment) -> None:
    photo = (IMAGES / "grace_hopper.jpg").read_bytes()
    body = requests.post(f"{deployment.url}/api/v1/classify?wait=30", files={"photo": ("p.jpg", photo)}).json()
    key, path = body["sesskey"], f"/api/v1/sessions/{body['sessname']}"
    assert requests.get(f"{deployment.url}{path}", params={"key": key}).status_code == 200
    by_header = requests.get(f"{deployment.url}{path}", headers={"X-Session-Key": key})
    assert by_header.status_code == 200 and "key=" not in by_header.json()["links"]["self"]
    nginx_log = deployment.folder / "log" / "nginx-access.log"
    wait_for(lambda: path in nginx_log.read_text() and path in deployment.uwsgi_log(), 10, "both logs")
    assert key not in nginx_log.read_text() and key not in deployment.uwsgi_log()


def test_detect_through_nginx_and_fetch_the_images(deployment: Deployment) -> None:
    photo = (IMAGES / "pets.jpg").read_bytes()
    created = requests.post(f"{deployment.url}/objectdetection?model=coco", files={"photo": ("pets.jpg", photo)}).json()
    task, key = created["sessname"], created["sesskey"]
    done = requests.get(f"{deployment.url}/api/v1/sessions/{task}", params={"key": key, "wait": 60}).json()
    assert [d["label"] for d in done["detections"]] == ["dog", "dog"]
    params = {"task": task, "key": key}
    upload = requests.get(f"{deployment.url}/objectdetection/odres/odiptimg", params=params)
    annotated = requests.get(f"{deployment.url}/objectdetection/odres/odresimg", params=params)
    assert upload.content == photo
    assert annotated.headers["Content-Type"] == "image/png" and annotated.content.startswith(b"\x89PNG")
    assert requests.get(deployment.url + done["links"]["output"]).content == annotated.content


def test_nginx_answers_an_oversized_header_in_json(deployment: Deployment) -> None:
    response = requests.get(f"{deployment.url}/api/v1/models", headers={"X-Big": "a" * 20000})
    assert response.status_code == 431 and response.json()["status"] == 431, response.text[:300]


def test_nginx_refuses_an_upload_over_the_limit_in_json(deployment: Deployment) -> None:
    before = deployment.uwsgi_log().count("POST /api/v1/classify")
    big = os.urandom(1024 * 1024 + 4096)
    response = requests.post(f"{deployment.url}/api/v1/classify", files={"photo": ("big.jpg", big)})
    assert response.status_code == 413
    assert response.json() == {
        "error": "Request Entity Too Large",
        "message": "the upload is larger than the limit of 1 MB",
        "status": 413,
    }
    assert deployment.uwsgi_log().count("POST /api/v1/classify") == before, "nginx, not the portal, refused it"


def test_cors_headers_on_the_api(deployment: Deployment) -> None:
    origin = {"Origin": "https://example.org"}
    preflight = requests.options(
        f"{deployment.url}/api/v1/classify", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    models = requests.get(f"{deployment.url}/api/v1/models", headers=origin)
    assert models.status_code == 200 and models.headers["Access-Control-Allow-Origin"] == "*"
    assert models.json()["detect"] == ["coco", "default"]


def test_deepstack_clients_metrics_and_openapi_through_nginx(deployment: Deployment) -> None:
    import yaml
    from deepstack.core import DeepstackObject
    from prometheus_client.parser import text_string_to_metric_families

    port = int(deployment.url.rsplit(":", 1)[1])
    client = DeepstackObject(ip="127.0.0.1", port=port, timeout=60, min_confidence=0.5, custom_model="coco")
    assert [p["label"] for p in client.detect((IMAGES / "pets.jpg").read_bytes())] == ["dog", "dog"]
    scraped = requests.get(f"{deployment.url}/metrics", timeout=10)
    assert scraped.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(scraped.text)}
    completed = [s for s in families["scai_sessions"].samples if s.labels.get("model") == "coco"]
    assert completed and completed[0].value >= 1, "the worker units' counts reach the portal's scrape"
    scrape = yaml.safe_load((deployment.rendered / "prometheus" / "scai.yml").read_text())
    target = scrape[0]["static_configs"][0]["targets"][0]
    assert requests.get(f"http://{target}{scrape[0]['metrics_path']}", timeout=10).status_code == 200
    mounted = requests.get(f"{deployment.subpath_url}/openapi.json", timeout=10).json()
    assert mounted["servers"] == [{"url": "/scai"}] and "/v1/vision/detection" in mounted["paths"]


def test_static_files_come_from_nginx(deployment: Deployment) -> None:
    response = requests.get(f"{deployment.url}/static/scai.css")
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/css"
    assert response.content == (ROOT / "static" / "scai.css").read_bytes()
    assert "/static/scai.css" not in deployment.uwsgi_log()
    page = requests.get(f"{deployment.url}/")
    assert page.status_code == 200 and 'href="/static/scai.css"' in page.text


def test_mounted_under_a_sub_path(deployment: Deployment) -> None:
    page = requests.get(f"{deployment.subpath_url}/")
    assert page.status_code == 200 and 'href="/scai/static/scai.css"' in page.text
    assert requests.get(f"{deployment.subpath_url}/static/scai.js").status_code == 200
    response = requests.post(
        f"{deployment.subpath_url}/api/v1/classify",
        params={"wait": 30, "model": "mobilenet_v2"},
        files={"photo": ("p.jpg", (IMAGES / "parrot.jpg").read_bytes())},
    )
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "macaw"
    assert response.json()["links"]["self"].startswith("/scai/api/v1/sessions/")
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed (apt-get install systemd)"
)
def test_rendered_units_pass_systemd_analyze_verify(deployment: Deployment) -> None:
    units = sorted((deployment.rendered / "systemd").glob("*.service"))
    assert [u.name for u in units] == [
        "scai-classify.service",
        "scai-detect.service",
        "scai-face.service",
        "scai.service",
    ]
    run = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in ("scai-classify.service", "scai-detect.service"):
        service = unit(deployment.rendered / "systemd" / name)["Service"]
        assert service["Restart"] == "always" and service["NoNewPrivileges"] == "yes"
        assert str(deployment.installation.session_dir) in service["ReadWritePaths"]


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_rendered_sizing_runs_that_many_workers_and_no_harakiri(deployment: Deployment) -> None:
    ini = (deployment.rendered / "uwsgi" / "scai.ini").read_text()
    assert f"processes = {min(cpu_count(), 8)}" in ini and "threads = 16" in ini
    assert not [line for line in ini.splitlines() if line.startswith("harakiri")]
    classify = deployment.processes[1]
    assert "--workers 2" in unit(deployment.rendered / "systemd" / "scai-classify.service")["Service"]["ExecStart"]
    workers = wait_for(lambda: len(children(classify.pid)) == 2 and children(classify.pid), 30, "two workers")
    for pid in workers:
        assert "--siblings 2" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def test_render_refuses_an_unknown_user(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="no user 'no-such-scai-user'"):
        render(Installation(prefix=ROOT, user="no-such-scai-user", port=80), tmp_path)


def test_clean_runs_as_the_cron_line_runs_it(deployment: Deployment) -> None:
    store = FolderStore(deployment.installation.session_dir)
    photo = (IMAGES / "parrot.jpg").read_bytes()
    old, fresh, busy = (store.create("image_classification", "default", photo, "jpg", "p.jpg")[0] for _ in range(3))
    wait_for(lambda: all(store.state(s)["state"] == "complete" for s in (old, fresh, busy)), 30, "the workers")
    age(store, old, 2 * 86400)
    age(store, busy, 2 * 86400)
    store.update(busy, state=PROCESSING)

    lines = [line for line in (deployment.rendered / "cron" / "scai-clean").read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    environment = dict(line.split("=", 1) for line in lines if "=" in line.split()[0])  # as cron sets them
    fields = next(line for line in lines if "=" not in line.split()[0]).split(None, 6)
    assert fields[5] == deployment.installation.user
    run = subprocess.run(["/bin/sh", "-c", fields[6]], env=environment, timeout=60)
    assert run.returncode == 0
    assert not store.path(old).exists() and store.path(fresh).exists() and store.path(busy).exists()
    assert f"removed {old}" in (deployment.folder / "log" / "clean.log").read_text()


def test_job_mode_under_uwsgi(tmp_path: Path) -> None:
    """In job mode the portal starts a worker per upload; under uwsgi, sys.executable is uwsgi."""
    port = free_port()
    usr = write_usr(tmp_path / "usr")
    command = [
        str(UWSGI), "--http-socket", f"127.0.0.1:{port}", "--module", "run:application", "--chdir", str(ROOT),
        "--virtualenv", str(Path(sys.executable).parent.parent), "--master", "--processes", "1", "--threads", "4",
        "--need-app", "--env", "SCAI_RUNNING_MODE=job", "--env", f"SCAI_SESSION_DIR={tmp_path / 'session'}",
        "--env", f"SCAI_USR_DIR={usr}", "--die-on-term",
    ]  # fmt: skip
    log = tmp_path / "uwsgi.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"spawned uWSGI worker" in log.read_bytes(), 30, "uwsgi to start")
        response = requests.post(
            f"http://127.0.0.1:{port}/api/v1/classify",
            params={"model": "mobilenet_v2", "wait": 30},
            files={"photo": ("p.jpg", (IMAGES / "parrot.jpg").read_bytes())},
        )
        assert response.status_code == 200, (response.text, log.read_text()[-2000:])
        assert response.json()["predictions"][0]["label"] == "macaw"
    finally:
        stop(process)


def test_the_redis_variant_points_every_unit_at_the_same_store(tmp_path: Path) -> None:
    url = "redis://10.0.0.5:6379/0"
    render(Installation(prefix=ROOT, user="root", port=80, store=url), tmp_path)
    assert f"env = SCAI_STORE={url}\n" in (tmp_path / "uwsgi" / "scai.ini").read_text()
    for kind in ("classify", "detect"):
        assert f"Environment=SCAI_STORE={url}\n" in (tmp_path / "systemd" / f"scai-{kind}.service").read_text()
    assert f"SCAI_STORE={url}\n" in (tmp_path / "cron" / "scai-clean").read_text()
    with pytest.raises(RenderError, match="must be a redis:// URL"):
        render(Installation(prefix=ROOT, user="root", port=80, store="memcached://x"), tmp_path)
