"""The demo portal in a real browser (Debian's Chromium, driven by Playwright), and the API page's
curl examples run as they are written."""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from conftest import IMAGES, Server, needs_assets, wait_for, write_usr
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
#: Without the networking flags Chromium stalls on a closed network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}

pytestmark = [needs_assets, pytest.mark.slow]


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("portal")
    usr = write_usr(folder / "usr", ("image_classification", "object_detection"))
    running = Server(folder / "session", usr, folder / "serve.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed at /usr/bin/chromium (apt-get install chromium chromium-driver)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser, portal: Server):
    """A fresh tab that records every URL it loads and every HTTP error it meets."""
    tab = browser.new_page()
    tab.loaded, tab.failures = [], []
    tab.on("request", lambda request: tab.loaded.append(request.url))
    tab.on("response", lambda response: response.status >= 400 and tab.failures.append(response.url))
    yield tab
    tab.close()


def open_service(page, portal: Server, tab: str, model: str, viewport: dict) -> None:
    page.set_viewport_size(viewport)
    page.goto(portal.url + "/")
    if tab != "Classify":
        page.get_by_role("tab", name=tab).click()
    has_model = f"select => [...select.options].some(o => o.value === '{model}')"
    wait_for(lambda: page.locator("#model").evaluate(has_model), 30, f"model {model} in the menu")
    page.get_by_label("Model").select_option(model)


def recognise(page, photo: Path) -> None:
    page.set_input_files("#photo", str(photo))
    page.get_by_role("button", name="Recognise").click()
    page.wait_for_selector(".status.done, #error:not([hidden])", timeout=60_000)


def only_local(page, portal: Server) -> None:
    hosts = {urlparse(url).netloc for url in page.loaded if not url.startswith(("blob:", "data:"))}
    assert hosts == {urlparse(portal.url).netloc}, f"the page loaded from elsewhere: {hosts}"
    assert not page.failures, page.failures


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_classification_shows_the_top_labels_as_bars(page, portal: Server, viewport: dict, tmp_path: Path) -> None:
    open_service(page, portal, "Classify", "mobilenet_v2", viewport)
    recognise(page, IMAGES / "grace_hopper.jpg")
    assert page.locator("#status").inner_text().startswith("Done")
    names = page.locator(".bars .name").all_inner_texts()
    assert names[0] == "military uniform" and len(names) == 5
    assert page.locator(".bars .pct").first.inner_text() == "93.0%"
    width = page.locator(".bars .fill").first.evaluate("e => e.getBoundingClientRect().width")
    track = page.locator(".bars .track").first.evaluate("e => e.getBoundingClientRect().width")
    assert 0.9 < width / track < 0.96, "the bar's length is its score"
    page.screenshot(path=str(tmp_path / "classification.png"), full_page=True)
    only_local(page, portal)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_detection_shows_the_annotated_image_and_table(page, portal: Server, viewport: dict, tmp_path: Path) -> None:
    open_service(page, portal, "Detect objects", "coco", viewport)
    recognise(page, IMAGES / "pets.jpg")
    # Not page.wait_for_function: it evaluates a string inside the page, which the page's
    # Content-Security-Policy rightly forbids.
    wait_for(lambda: page.locator("#annotated").evaluate("img => img.complete && img.naturalWidth > 0"), 30)
    assert page.locator("#annotated").evaluate("img => img.naturalWidth") == Image.open(IMAGES / "pets.jpg").width
    rows = page.locator("tbody tr")
    assert rows.count() == 2 and rows.first.locator("td").first.inner_text() == "dog"
    boxes = page.locator(".figure .box")
    assert boxes.count() == 2 and page.locator(".box.on").count() == 0
    rows.nth(1).hover()
    assert boxes.nth(1).get_attribute("class") == "box on" and page.locator(".box.on").count() == 1
    page.screenshot(path=str(tmp_path / "detection.png"), full_page=True)
    only_local(page, portal)


def test_a_text_file_shows_the_error_in_plain_words(page, portal: Server, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list: milk, eggs\n")
    open_service(page, portal, "Classify", "default", DESKTOP)
    recognise(page, notes)
    error = page.get_by_role("alert")
    assert error.is_visible() and "not a readable image" in error.inner_text()
    assert page.locator("#status").inner_text() == "Failed" and page.locator(".bars").count() == 0
    assert page.locator("#preview").is_hidden(), "no broken preview for a file that is not an image"
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)


def test_tabs_and_upload_work_from_the_keyboard(page, portal: Server) -> None:
    open_service(page, portal, "Classify", "default", DESKTOP)
    page.get_by_role("tab", name="Classify").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Detect objects").get_attribute("aria-selected") == "true"
    assert page.get_by_label("Minimum score").is_visible()
    has_coco = "select => [...select.options].some(o => o.value === 'coco')"
    wait_for(lambda: page.locator("#model").evaluate(has_coco), 30, "the coco model in the menu")
    with page.expect_file_chooser() as chooser:
        page.locator("#drop").focus()
        page.keyboard.press("Enter")
    chooser.value.set_files(str(IMAGES / "pets.jpg"))
    assert page.get_by_role("button", name="Recognise").is_enabled()


def test_with_api_keys_the_page_asks_for_one_and_works(page, portal: Server) -> None:
    keys = portal.session_dir.parent / "usr" / "api_keys"
    keys.write_text("portal-key\n", encoding="utf-8")
    try:
        page.goto(portal.url + "/")
        page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)
        assert "needs an API key" in page.locator("#error").inner_text()
        page.get_by_label("API key").fill("portal-key")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_selector("#key-form[hidden]", state="attached", timeout=30_000)
        page.get_by_label("Model").select_option("mobilenet_v2")
        recognise(page, IMAGES / "grace_hopper.jpg")
        assert page.locator("#status").inner_text().startswith("Done")
        assert page.locator(".bars .name").first.inner_text() == "military uniform"
        assert page.evaluate("localStorage.getItem('scai-api-key')") == "portal-key"
    finally:
        keys.unlink()
        page.evaluate("localStorage.removeItem('scai-api-key')")


def test_pages_reference_no_outside_resources(portal: Server) -> None:
    for path in ("/", "/docs"):
        text = requests.get(portal.url + path).text
        links = re.findall(r"""(?:src|href)=["']([^"']+)""", text)
        assert links and not [link for link in links if re.match(r"(https?:)?//", link)], links


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_the_api_page_curl_examples_work_as_written(portal: Server, tmp_path: Path) -> None:
    page = requests.get(portal.url + "/docs").text
    blocks = [html.unescape(b) for b in re.findall(r"<pre><code>(.*?)</code></pre>", page, flags=re.S)]
    commands = [line.split("  #")[0] for b in blocks for line in b.splitlines() if line.startswith("curl")]
    assert len(commands) >= 15 and all(portal.url in c for c in commands)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((IMAGES / "pets.jpg").read_bytes())
    names = {}
    for command in commands:
        for placeholder, value in names.items():
            command = command.replace(placeholder, value)
        run = subprocess.run(shlex.split(command) + ["-sS", "-w", "\n%{http_code}"], cwd=tmp_path, capture_output=True)
        assert run.returncode == 0, (command, run.stderr)
        status = run.stdout.rsplit(b"\n", 1)[-1].decode() if b"-o" not in command.encode() else "saved"
        assert status in ("200", "saved"), (command, run.stdout[-300:])
        if "-F photo" in command:  # the following examples use this session, once it is done
            body = json.loads(run.stdout.rsplit(b"\n", 1)[0])
            names = {"SESSNAME": body["sessname"], "SESSKEY": body["sesskey"]}
            wait = {"key": body["sesskey"], "wait": 30}
            requests.get(f"{portal.url}/api/v1/sessions/{body['sessname']}", params=wait)
    assert (tmp_path / "annotated.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "upload.jpg").read_bytes() == photo.read_bytes()
