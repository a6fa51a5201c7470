"""The pages for people, in a real headless browser (Debian's Chromium, driven by Selenium over
chromedriver): a model's /docs page (fill the form, send, see the prediction; a file as the
body; streamed events appearing while the stream runs) and the local gateway's index page,
followed to a model's docs through the gateway. A screenshot of each page is kept in
$ML_TEST_ARTIFACTS (pants.toml: dist/test/artifacts/)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
from served_model import ServedModel
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

IRIS = Path("models.iris/iris")
PROBE = Path("tests.models.probe/probe")
GATEWAY_PEX = Path("gateway.pex")  # //platform:gateway
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert os.access(path, os.X_OK), f"{path} is missing: install Debian's {package} (.ci/install-deps does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1600", "--no-first-run", "--disable-background-networking"):
        options.add_argument(argument)
    # The given driver: Selenium Manager would look for one on the network.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(browser: WebDriver, name: str) -> None:
    directory = Path(os.environ.get("ML_TEST_ARTIFACTS", "test-artifacts")) / "pages"
    directory.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(directory / f"{name}.png"))


def until(what: str, check: Callable[[], object], browser: WebDriver) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT_SECONDS} s: {what}\n{browser.page_source[-3000:]}")


def open_docs(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/docs")
    until("the page built its forms", lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), browser)


def operation(browser: WebDriver, path: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'section.operation[data-path="{path}"]')


def send(browser: WebDriver, section: WebElement) -> str:
    section.find_element(By.NAME, "send").click()
    output = section.find_element(By.CSS_SELECTOR, "pre.output")
    until("the answer", lambda: output.get_attribute("data-done") == "true", browser)
    return output.text


@pytest.fixture(scope="module")
def iris(tmp_path_factory) -> Iterator[ServedModel]:
    served = ServedModel(IRIS, tmp_path_factory.mktemp("iris"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Iterator[ServedModel]:
    served = ServedModel(PROBE, tmp_path_factory.mktemp("probe"))
    yield served
    served.stop()


def test_the_docs_page_sends_the_form_and_shows_the_prediction(browser: WebDriver, iris: ServedModel) -> None:
    open_docs(browser, iris.url)
    assert "iris model API" in browser.find_element(By.ID, "title").text
    section = operation(browser, "/v1/predict")
    body = section.find_element(By.NAME, "body")
    flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    body.clear()
    body.send_keys(json.dumps({"flowers": [flower]}))
    answer = json.loads(send(browser, section))
    assert answer[0]["species"] == "virginica"
    assert "200" in section.find_element(By.CLASS_NAME, "status").text
    screenshot(browser, "iris-docs")
    # The example the page starts from is the document's, and a wrong body shows the 422.
    body.clear()
    body.send_keys(json.dumps({"flowers": [{"sepal_length": "long"}]}))
    assert json.loads(send(browser, section))["error"] == "invalid request"
    assert "422" in section.find_element(By.CLASS_NAME, "status").text


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes([x % 256, 90, 200]) * width for x in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_file_is_sent_as_the_body(browser: WebDriver, probe: ServedModel, tmp_path: Path) -> None:
    image = tmp_path / "picture.png"
    image.write_bytes(png(16, 8))
    open_docs(browser, probe.url)
    section = operation(browser, "/v1/upload")
    section.find_element(By.NAME, "upload").send_keys(str(image))
    answer = json.loads(send(browser, section))
    assert answer == {"length": image.stat().st_size, "first": 0x89}


def test_streamed_events_appear_as_they_come(browser: WebDriver, probe: ServedModel) -> None:
    open_docs(browser, probe.url)
    section = operation(browser, "/v1/ticks")
    body = section.find_element(By.NAME, "body")
    body.clear()
    body.send_keys(json.dumps({"to": 6, "delay": 0.25}))  # within the probe's 2 s timeout
    assert section.find_element(By.NAME, "stream").is_selected()
    section.find_element(By.NAME, "send").click()
    output = section.find_element(By.CSS_SELECTOR, "pre.output")
    # The first ticks are on the page while the stream still runs (1.25 s in all).
    until("a tick before the end", lambda: '"n":0' in output.text and output.get_attribute("data-done") != "true",
          browser)
    until("the whole stream", lambda: output.get_attribute("data-done") == "true", browser)
    assert output.text.count('"n":') == 6
    screenshot(browser, "probe-docs-stream")


def test_the_openai_chat_stream_shows_its_tokens(browser: WebDriver, probe: ServedModel) -> None:
    open_docs(browser, probe.url)
    section = operation(browser, "/v1/openai/v1/chat/completions")
    body = section.find_element(By.NAME, "body")
    body.clear()
    body.send_keys(json.dumps({"model": "probe", "messages": [{"role": "user", "content": "hello there"}]}))
    assert send(browser, section) == "user: hello there"


def test_the_gateway_index_lists_the_model_and_links_to_its_docs(browser: WebDriver, iris: ServedModel,
                                                                  tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"generation": 1, "domain": "localhost", "models": {
        "iris": {"1": {"backend": f"127.0.0.1:{iris.port}", "digest": "sha256:" + "ab" * 32}}}}))
    ready = tmp_path / "gateway-url"
    gateway = subprocess.Popen([str(GATEWAY_PEX.resolve()), "--routes", str(routes), "--port", "0", "--ready-file", str(ready)],
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "gateway.log").open("wb"))
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not ready.exists():
            assert gateway.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.05)
        port = int(ready.read_text().rsplit(":", 1)[1])
        # *.localhost is the loopback address in the browser (RFC 6761), as for any client here.
        browser.get(f"http://ml.localhost:{port}/")
        row = browser.find_element(By.CSS_SELECTOR, "#models tbody tr")
        assert row.find_element(By.CLASS_NAME, "model").text == "iris"
        assert "ready" == row.find_element(By.CLASS_NAME, "ready").text
        assert "sha256:abababab" in row.text
        screenshot(browser, "gateway-index")
        row.find_element(By.LINK_TEXT, "docs").click()
        until("the model's page through the gateway", lambda: browser.current_url == f"http://iris.ml.localhost:{port}/docs"
              and browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), browser)
        answer = json.loads(send(browser, operation(browser, "/v1/predict")))
        assert answer[0]["species"] in {"setosa", "versicolor", "virginica"}
        # The index counts that request (and the page's own) for iris v1.
        browser.get(f"http://ml.localhost:{port}/")
        rate = browser.find_element(By.CSS_SELECTOR, "#models tbody tr .rate").text
        assert rate != "0.00/s", rate
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)


def test_no_page_reaches_beyond_its_server(browser: WebDriver, iris: ServedModel) -> None:
    """Everything the page loads comes from the model's server: no CDN."""
    open_docs(browser, iris.url)
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(iris.url) for r in resources), resources
