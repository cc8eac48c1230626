"""The playground page at `/`, in a real headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by Selenium: type an API key, a prompt and settings, generate (on the server, or in the browser
with onnxruntime-web), and check the text; inspect a text and check its colours. Also the endpoints
behind it (/v1/inspect, the browser generator's files) over real HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from lstmgen import Generator
from lstmgen.inspect import inspect_text
from lstmgen.options import OPENAI, on_surface
from lstmgen.server import Limits, make_server
from lstmgen.server import playground as pg

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                    reason="needs Debian's chromium and chromium-driver packages")
needs_ort_web = pytest.mark.skipif(pg.browser_runtime_missing() is not None,
                                   reason=f"no browser generator here: {pg.browser_runtime_missing()}")
KEY = "pg-key"


def browser(tmp_path):
    """Headless Chromium at its system paths: with both given, Selenium Manager never downloads anything.
    Its temporary files (a singleton socket folder per run, left behind when it ends) go in `tmp_path`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,620"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": str(tmp_path)})
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def server(artifacts):
    gens = {"names": Generator.load(artifacts["names"]), "moe": Generator.load(artifacts["moe"])}
    srv = make_server(gens, "127.0.0.1", 0, Limits(), api_key=KEY)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield srv
    srv.stop()
    thread.join(60)


def fill(driver, field: str, value: str) -> None:
    element = driver.find_element("id", field)
    element.clear()
    element.send_keys(value)


def open_playground(driver, server) -> None:
    """Load the page, type the API key and wait for the model list."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(f"{server.url}/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: "API key" in d.find_element("id", "status").text)  # the list needs the key
    fill(driver, "key", KEY)
    driver.find_element("id", "model").click()  # leaving the key field lists the models
    wait.until(lambda d: len(Select(d.find_element("id", "model")).options) == 2)


def wait_for(driver, attribute: str) -> None:
    """Wait until the page marks <body> with data-`attribute`="1" (it does when its work is done)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 120).until(lambda d: d.find_element("tag name", "body").get_attribute(f"data-{attribute}") == "1")


def generate_on_page(driver, model: str, settings: dict[str, str]) -> str:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "model")).select_by_value(model)
    for field, value in settings.items():
        fill(driver, field, value)
    driver.find_element("id", "go").click()
    wait_for(driver, "done")
    return driver.find_element("id", "output").text


@needs_chromium
def test_playground_streams_a_completion_with_an_api_key(server, tmp_path):
    gen = server.models.generators["moe"]
    expected = gen.generate(num=1, prompt="moe_szyslak:", max_tokens=40, temperature=0.9, top_k=30, top_p=0.95, seed=5)[0]
    driver = browser(tmp_path)
    try:
        open_playground(driver, server)
        text = generate_on_page(driver, "moe", {"prompt": "moe_szyslak:", "temperature": "0.9", "top_k": "30",
                                                "top_p": "0.95", "seed": "5", "max_tokens": "40"})
        assert text == expected.strip()
        status = driver.find_element("id", "status").text
        assert re.fullmatch(r"\d+ tokens in [\d.]+ s: \d+ tokens/s \(first text after [\d.]+ s\)", status), status
        assert driver.save_screenshot(str(tmp_path / "playground.png"))
    finally:
        driver.quit()


@needs_chromium
@needs_ort_web
def test_run_in_my_browser_writes_pythons_text(server, tmp_path):
    """With the switch on, onnxruntime-web runs generate.onnx in the page: Python's text for the same seed."""
    from selenium.webdriver.support.ui import WebDriverWait

    names, moe = server.models.generators["names"], server.models.generators["moe"]
    generation_calls = server_generation_calls(server)
    driver = browser(tmp_path)
    try:
        open_playground(driver, server)
        driver.find_element("id", "in_browser").click()
        for model, gen, settings in (
                ("names", names, {"prompt": "", "seed": "7", "temperature": "0.8", "max_tokens": "200"}),
                ("names", names, {"prompt": "ka", "seed": "2", "top_k": "5", "temperature": "1"}),
                ("moe", moe, {"prompt": "moe_szyslak: hey", "seed": "5", "top_k": "", "top_p": "0.9", "max_tokens": "30"})):
            text = generate_on_page(driver, model, settings)

            def field(name: str, kind=float):  # a field left empty is the model's default
                value = driver.find_element("id", name).get_attribute("value")
                return kind(value) if value else None

            expected = gen.generate(num=1, prompt=settings["prompt"] or None, seed=int(settings["seed"]),
                                    temperature=field("temperature"), top_k=field("top_k", int),
                                    top_p=field("top_p"), max_tokens=field("max_tokens", int))[0]
            assert text == expected.strip(), (model, settings)
            assert "in this browser" in driver.find_element("id", "status").text
        fill(driver, "min_p", "0.1")  # the Python engine's only: the browser's generator refuses it in one line
        driver.find_element("id", "go").click()
        WebDriverWait(driver, 60).until(lambda d: "does not apply minP" in d.find_element("id", "status").text)
    finally:
        driver.quit()
    assert server_generation_calls(server) == generation_calls  # the server only sent files


def test_the_page_has_a_field_per_option_of_the_table(server):
    status, raw, _ = call(server, "/")
    fields = json.loads(re.search(rb'<script type="application/json" id="options">(.*?)</script>', raw).group(1))
    expected = [o.name for o in on_surface(OPENAI) if o.kind in ("int", "float", "text") and o.name not in ("num", "logprobs")]
    assert status == 200 and [f["name"] for f in fields] == expected
    assert {f["name"]: f["browser"] for f in fields}["min_p"] is False


@needs_chromium
def test_inspect_view_colours_the_text_by_surprisal_and_by_a_cell(server, tmp_path):
    text = "moe_szyslak: hey, homer. what'll it be?\nhomer_simpson: a beer, moe.\n"
    driver = browser(tmp_path)
    try:
        open_playground(driver, server)
        from selenium.webdriver.support.ui import Select

        driver.find_element("css selector", "input[name=view][value=inspect]").click()
        Select(driver.find_element("id", "model")).select_by_value("moe")
        fill(driver, "inspect_text", text)
        driver.find_element("id", "inspect_go").click()
        wait_for(driver, "inspected")
        pieces = inspect_text(server.models.generators["moe"], text).pieces
        shown = driver.find_element("id", "ins-output").get_attribute("textContent")
        assert shown == "".join("↵\n" if p == "\n" else p for p in pieces)  # every token, in order
        spans = driver.find_elements("css selector", "#ins-output span")
        by_surprisal = [s.value_of_css_property("background-color") for s in spans]
        assert len(set(by_surprisal)) > 3  # coloured by value, not one colour
        assert "nats" in spans[-1].get_attribute("title")
        assert re.fullmatch(r"[\d.]+ nats/token over \d+ tokens \([\d.]+ nats in all\)",
                            driver.find_element("id", "ins-summary").text)
        cell_button = driver.find_element("css selector", "#ins-features button[data-cell]")
        cell_button.click()
        assert driver.find_element("id", "colour-name").text == f"cell {cell_button.get_attribute('data-cell')}"
        spans = driver.find_elements("css selector", "#ins-output span")
        assert [s.value_of_css_property("background-color") for s in spans] != by_surprisal
        assert driver.save_screenshot(str(tmp_path / "inspect.png"))
    finally:
        driver.quit()


# -- the endpoints behind the page, over real HTTP ----------------------------------------------------------
def call(server, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, bytes, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def server_generation_calls(server) -> float:
    """Requests to the generation endpoints so far, from /metrics."""
    _, raw, _ = call(server, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in raw.decode().splitlines()
               if line.startswith("lstmgen_http_requests_total{") and ('"/v1/completions"' in line or '"/v1/generate"' in line))


@pytest.mark.parametrize("model,text", [
    ("moe", "moe_szyslak: hey, homer. what'll it be?\nhomer_simpson: a beer, moe. (sighs) \"duff\".\n" * 3),
    ("names", "anna\nbob\nkatherine\n"),
])
def test_inspect_endpoint_totals_equal_the_score(server, model, text):
    status, raw, _ = call(server, "/v1/inspect", {"model": model, "text": text, "top": 2, "cells": ["h0:1"]})
    assert status == 200, raw
    got = json.loads(raw)
    score = server.models.generators[model].score(text)
    assert abs(sum(v for v in got["surprisal"] if v is not None) - score.nats) < 1e-4
    assert abs(got["nats"] - score.nats) < 1e-4 and got["tokens_predicted"] == score.tokens
    n = len(got["pieces"])
    assert len(got["surprisal"]) == n and got["features"]
    for feature in got["features"].values():
        assert len(feature["top"]) == 2
        assert all(len(got["activations"][t["cell"]]) == n for t in feature["top"])
    assert len(got["activations"]["h0:1"]) == n


@pytest.mark.parametrize("body,message", [
    ({"model": "moe", "text": ""}, "the text is empty"),
    ({"model": "moe"}, "text is required"),
    ({"model": "moe", "text": "hey", "colour": 1}, "unknown field 'colour' (known: cells, model, text, top)"),
    ({"model": "moe", "text": "hey moe", "top": 0}, "top: input should be greater than or equal to 1, got 0"),
    ({"model": "moe", "text": "hey moe", "cells": "c1:2"}, "cells: input should be a valid array, got \"c1:2\""),
    ({"model": "moe", "text": "hey moe", "cells": ["c9:0"]}, "layer 9 is out of range"),
    ({"model": "moe", "text": "hey"}, "text too short to score"),
    ({"model": "moe", "text": "moe " * 20_001}, "inspect reads at most 20,000 at once"),
])
def test_inspect_bad_input_gets_a_one_line_400(server, body, message):
    status, raw, _ = call(server, "/v1/inspect", body)
    error = json.loads(raw)["error"]
    assert status == 400 and message in error and "\n" not in error, error


def test_inspect_needs_the_api_key(server):
    status, _, _ = call(server, "/v1/inspect", {"model": "moe", "text": "hey moe"}, key=None)
    assert status == 401


def test_artifact_files_are_served_read_only_with_the_key(server):
    folder = server.models.generators["names"].folder
    status, raw, _ = call(server, "/artifacts/names/manifest.json")
    assert status == 200 and raw == (folder / "manifest.json").read_bytes()
    assert call(server, "/artifacts/names/model.onnx", key=None)[0] == 401
    assert call(server, "/artifacts/names/records.u64")[0] == 404  # only the files the browser loads
    assert call(server, "/artifacts/other/manifest.json")[0] == 404  # only served models
    assert call(server, "/artifacts/names/..%2Fmanifest.json")[0] == 404


@needs_ort_web
def test_browser_runtime_files_are_served_without_the_key(server):
    status, raw, headers = call(server, "/js/web.mjs", key=None)
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"export async function load" in raw
    status, _, headers = call(server, "/js/ort/ort.wasm.min.mjs", key=None)
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert call(server, "/js/ort/ort.wasm.min.mjs.map", key=None)[0] == 404  # .mjs and .wasm only
    assert call(server, "/js/node.mjs", key=None)[0] == 404


def test_without_onnxruntime_web_the_switch_is_off_with_the_reason(monkeypatch, server):
    monkeypatch.setattr(pg, "ORT_DIST", pg.JS_DIR / "no-such-folder")
    reason = pg.browser_runtime_missing()
    if all((pg.JS_DIR / f).is_file() for f in pg.JS_FILES):  # a checkout (editable install)
        assert reason == "onnxruntime-web is not installed: run `npm ci --prefix js` in the repository"
    else:  # an installed wheel carries no js/ at all
        assert reason.startswith("the JavaScript generator (js/) is not installed with this lstmgen")
    srv = make_server(server.models.generators, "127.0.0.1", 0, Limits())  # built now, so it sees no runtime
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        status, page, _ = call(srv, "/", key=None)
    finally:
        srv.stop()
        thread.join(60)
    assert status == 200 and f'<body data-browser-off="{reason}"'.encode() in page


def test_inspect_leaves_out_what_the_vocabulary_lacks_as_score_does(server):
    status, raw, _ = call(server, "/v1/inspect", {"model": "names", "text": "z#"})
    out = json.loads(raw)
    assert status == 200 and out["oov"] == 1 and out["pieces"] == ["", "z", "\n"]


# -- the interactive view ------------------------------------------------------------------------------------------
def start_interactive(driver, model: str, settings: dict[str, str], in_browser: bool = False) -> list:
    """Switch to the Interactive view, start from the prompt, and return the choice buttons."""
    from selenium.webdriver.support.ui import Select

    driver.find_element("css selector", "input[name=view][value=interactive]").click()
    Select(driver.find_element("id", "model")).select_by_value(model)
    if in_browser != driver.find_element("id", "in_browser").is_selected():
        driver.find_element("id", "in_browser").click()
    for field, value in settings.items():
        fill(driver, field, value)
    driver.find_element("id", "int_start").click()
    wait_for(driver, "interactive")
    return driver.find_elements("css selector", "#choices button")


def press(driver, element) -> None:
    driver.execute_script("document.body.dataset.interactive = ''")
    element.click()
    wait_for(driver, "interactive")


def shown_choices(buttons) -> list[str]:
    return [b.get_attribute("textContent") for b in buttons]


def as_buttons(top) -> list[str]:
    return [("↵" if t.token == "\n" else "␣" if t.token == " " else t.token) + f"{100 * t.probability:.1f}%" for t in top]


@needs_chromium
def test_interactive_view_on_the_server_offers_next_tokens_and_samples(server, tmp_path):
    gen = server.models.generators["names"]
    driver = browser(tmp_path)
    try:
        open_playground(driver, server)
        buttons = start_interactive(driver, "names", {"prompt": "Ma", "seed": "3", "temperature": "1", "choices_n": "5"})
        session = gen.session(prompt="Ma", seed=3, temperature=1.0)
        top = session.top(5)
        assert shown_choices(buttons) == as_buttons(top)  # /v1/next: a session's top, as the page shows it
        press(driver, buttons[1])
        text = "ma" + top[1].text
        assert driver.find_element("id", "int-text").get_attribute("textContent") == text
        press(driver, driver.find_element("id", "sample_20"))
        [sample] = gen.generate(prompt=text, max_tokens=20, echo=False, seed=3, temperature=1.0)
        ended = " (end of record)" if sample.finish_reason == "end_of_record" else ""
        assert driver.find_element("id", "int-text").get_attribute("textContent") == text + sample + ended
        assert driver.save_screenshot(str(tmp_path / "interactive.png"))
    finally:
        driver.quit()


@needs_chromium
@needs_ort_web
def test_interactive_view_in_the_browser_writes_pythons_session_text(server, tmp_path):
    gen = server.models.generators["moe"]
    calls = server_calls(server, ("/v1/next", "/v1/generate", "/v1/completions"))
    driver = browser(tmp_path)
    try:
        open_playground(driver, server)
        buttons = start_interactive(driver, "moe", {"prompt": "Moe_Szyslak: hey", "seed": "5", "top_k": "40",
                                                    "choices_n": "6"}, in_browser=True)
        session = gen.session(prompt="Moe_Szyslak: hey", seed=5, top_k=40)
        top = session.top(6)
        assert [b.get_attribute("title").split(":")[0] for b in buttons] == [f"id {t.id}" for t in top]
        press(driver, buttons[2])
        session.append(top[2])
        press(driver, driver.find_element("id", "sample_20"))
        press(driver, driver.find_element("id", "sample_1"))
        for _ in range(21):
            session.sample()
        assert driver.find_element("id", "int-text").get_attribute("textContent") == session.text
        assert "in this browser" in driver.find_element("id", "status").text
    finally:
        driver.quit()
    assert server_calls(server, ("/v1/next", "/v1/generate", "/v1/completions")) == calls  # the page did it all


def server_calls(server, paths) -> float:
    """Requests to these paths so far, from /metrics."""
    _, raw, _ = call(server, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in raw.decode().splitlines()
               if line.startswith("lstmgen_http_requests_total{") and any(f'"{p}"' in line for p in paths))
