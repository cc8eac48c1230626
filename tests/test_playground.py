"""The playground page at `/`, in a real headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by Selenium: type an API key, a prompt and settings, generate, and check the streamed text."""

from __future__ import annotations

import re
import shutil
import threading

import pytest

from lstmgen import Generator
from lstmgen.server import Limits, make_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver packages")


def browser():
    """Headless Chromium at its system paths: with both given, Selenium Manager never downloads anything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,620"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def server(artifacts):
    gens = {"names": Generator.load(artifacts["names"]), "moe": Generator.load(artifacts["moe"])}
    srv = make_server(gens, "127.0.0.1", 0, Limits(), api_key="pg-key")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield srv
    srv.stop()
    thread.join(60)


def fill(driver, field: str, value: str) -> None:
    element = driver.find_element("id", field)
    element.clear()
    element.send_keys(value)


def test_playground_streams_a_completion_with_an_api_key(server, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    gen = server.models.generators["moe"]
    expected = gen.generate(num=1, prompt="moe_szyslak:", max_tokens=40, temperature=0.9, top_k=30, top_p=0.95, seed=5)[0]
    driver = browser()
    try:
        driver.get(f"{server.url}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "API key" in d.find_element("id", "status").text)  # the list needs the key
        fill(driver, "key", "pg-key")
        driver.find_element("id", "prompt").click()  # leaving the key field lists the models
        wait.until(lambda d: len(Select(d.find_element("id", "model")).options) == 2)
        Select(driver.find_element("id", "model")).select_by_value("moe")
        for field, value in (("prompt", "moe_szyslak:"), ("temperature", "0.9"), ("top_k", "30"), ("top_p", "0.95"),
                             ("seed", "5"), ("max_tokens", "40")):
            fill(driver, field, value)
        driver.find_element("id", "go").click()
        wait.until(lambda d: d.find_element("tag name", "body").get_attribute("data-done") == "1")
        assert driver.find_element("id", "output").text == expected.strip()
        status = driver.find_element("id", "status").text
        assert re.fullmatch(r"\d+ tokens in [\d.]+ s: \d+ tokens/s \(first text after [\d.]+ s\)", status), status
        assert driver.save_screenshot(str(tmp_path / "playground.png"))
    finally:
        driver.quit()
