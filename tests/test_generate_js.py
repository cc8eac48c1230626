"""generate.onnx from JavaScript with the real runtimes: onnxruntime-node (the Node example) and
onnxruntime-web in a real headless Chromium; both must write Python's text for the same seed.

Needs `node` with `npm ci --prefix js` done, and `chromium` for the browser test; without them these
tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import numpy as np
import pytest

from lstmgen.cli import main
from lstmgen.manifest import GENERATE_FILE, MANIFEST_FILE
from lstmgen.options import option

from .conftest import EXPORTED, REPO, artifact_before_generation_graph

JS = REPO / "js"
EXAMPLE = JS / "examples" / "generate.mjs"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_node = pytest.mark.skipif(not NODE or not (JS / "node_modules" / "onnxruntime-node").is_dir(),
                                reason="needs node and js/node_modules: run `npm ci --prefix js`")
needs_browser = pytest.mark.skipif(not CHROMIUM or not (JS / "node_modules" / "onnxruntime-web").is_dir(),
                                   reason="needs chromium (apt install chromium) and `npm ci --prefix js`")
BROWSER_TIMEOUT_S = 180  # an upper bound for a hung browser, not a race: the page reports when it is done


def python_samples(capsys, model: str, *flags: str) -> list[str]:
    capsys.readouterr()
    assert main(["generate", model, "--json", "--allow-known", *flags]) == 0
    return json.loads(capsys.readouterr().out)["samples"]


def node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300, cwd=REPO)


@needs_node
@pytest.mark.parametrize("model,flags", [
    ("names", ["--num", "10", "--seed", "7"]),
    ("names", ["--num", "6", "--seed", "3", "--prompt", "ma", "--temperature", "1.1", "--top-k", "8"]),
    ("moe", ["--num", "3", "--seed", "5", "--prompt", "Moe_Szyslak: Hey", "--max-tokens", "40", "--top-p", "0.9"]),
    ("shakespeare", ["--num", "2", "--seed", "9", "--max-tokens", "80", "--temperature", "0"]),
    ("names", ["--num", "5", "--seed", "3", "--prompt", "ma", "--no-echo", "--ban", "e", "--ban", "a"]),
])
def test_node_example_writes_lstmgen_generates_text(capsys, model, flags):
    run = node(str(EXPORTED / model), "--json", *flags)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["samples"] == python_samples(capsys, model, *flags)


@needs_node
def test_node_takes_a_shipped_models_name_as_python_does(capsys):
    run = node("moe", "--json", "--seed", "3", "--max-tokens", "12")  # no folder named moe in the repository root
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["samples"] == python_samples(capsys, "moe", "--seed", "3", "--max-tokens", "12")


@needs_node
@pytest.mark.parametrize("name", ["names-tiny-int8", "shakespeare-tiny"])
def test_node_runs_format1_artifacts_and_their_upgrade(tmp_path, capsys, name):
    folder = tmp_path / name
    shutil.copytree(REPO / "tests" / "data" / "format1" / name, folder)
    flags = ["--num", "6", "--seed", "4", "--max-tokens", "20", "--top-k", "5"]
    for upgraded in (False, True):  # its generate.onnx as format 1 wrote it, then the rebuilt one
        run = node(str(folder), "--json", *flags)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["samples"] == python_samples(capsys, str(folder), *flags), upgraded
        assert main(["upgrade", str(folder)]) == 0


def artifact_copy(tmp_path, model: str = "names"):
    folder = tmp_path / model
    shutil.copytree(EXPORTED / model, folder)
    return folder


old_artifact = artifact_before_generation_graph


def corrupt_graph(tmp_path):
    folder = artifact_copy(tmp_path)
    with open(folder / GENERATE_FILE, "ab") as f:
        f.write(b"\0")
    return folder


@needs_node
@pytest.mark.parametrize("make,flags,message", [
    (old_artifact, [], "has no generate.onnx (exported before it existed); re-export it"),
    (corrupt_graph, [], "generate.onnx does not match the sha256 in its manifest"),
    (artifact_copy, ["--prompt", "Zo#"], "characters the model's vocabulary lacks"),
    # Python's options table, in the words Python uses, with the option as a JS caller spells it
    (artifact_copy, ["--temperature", "-1"], f"temperature must be {option('temperature').describe()}, got -1"),
    (artifact_copy, ["--top-p", "1.5"], f"topP must be {option('top_p').describe()}, got 1.5"),
    (artifact_copy, ["--top-k", "-1"], f"topK must be {option('top_k').describe()}, got -1"),
    (artifact_copy, ["--num", "0"], f"num must be {option('num').describe()}, got 0"),
    (artifact_copy, ["--seed", "-4"], "seed must be an integer in [0, 2^63)"),
    (artifact_copy, ["--ban", "Q"], '"Q" is not a token of this model\'s vocabulary'),
    # what the graph leaves out is refused by the generator, in its words, not by the flag parser
    (artifact_copy, ["--min-p", "0.1"], "generate.onnx does not apply minP; leave it out"),
    (artifact_copy, ["--logprobs", "3"], "generate.onnx does not apply logprobs"),
    (artifact_copy, ["--seed", "x"], "--seed must be an integer, got 'x'"),
    (artifact_copy, ["--temperature", "abc"], "--temperature must be a number, got 'abc'"),
    (lambda tmp: "no-such-model", [], "model folder not found: no-such-model"),
])
def test_node_bad_input_gets_one_line(tmp_path, make, flags, message):
    run = node(str(make(tmp_path)), *flags)
    assert run.returncode == 2
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


class _Handler(SimpleHTTPRequestHandler):
    """Static files from the repository, the test's own files at their paths (`files`: path -> JSON bytes),
    and POST /report where the page sends its result."""

    def __init__(self, *args, reports: list, done: threading.Event, files: dict[str, bytes], **kw):
        self.reports, self.done, self.files = reports, done, files
        super().__init__(*args, directory=str(REPO), **kw)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path not in self.files:
            return super().do_GET()
        body = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reports.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        self.done.set()

    def log_message(self, *args):
        pass


def page_report(tmp_path, page: str, query, files: dict[str, bytes] | None = None):
    """Serve the repository (and `files`), open `page` in headless Chromium with the query `query(base)`
    builds from the server's base URL, and return what the page reports (it POSTs /report)."""
    reports, done = [], threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, reports=reports, done=done, files=files or {}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--user-data-dir={tmp_path / 'profile'}", f"{base}/{page}?{urlencode(query(base))}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TMPDIR": str(tmp_path)})  # its singleton folder, left when killed
    try:
        assert done.wait(BROWSER_TIMEOUT_S), "the page never reported a result"
    finally:
        browser.kill()
        browser.wait()
        server.shutdown()
        server.server_close()
    return reports[0]


@needs_browser
@pytest.mark.parametrize("model,settings", [
    ("names", {"num": 10, "seed": 7}),
    ("names", {"num": 5, "seed": 2, "prompt": "ka", "top-k": 5}),
    ("moe", {"num": 3, "seed": 5, "prompt": "Moe_Szyslak: Hey", "max-tokens": 30, "top-p": 0.9}),
])
def test_browser_page_generates_pythons_text(tmp_path, capsys, model, settings):
    report = page_report(tmp_path, "js/web/index.html",
                         lambda base: {"model": f"{base}/exported/{model}", **settings, "run": 1, "report": f"{base}/report"})
    python = python_samples(capsys, model, *[x for k, v in settings.items() for x in (f"--{k}", str(v))])
    assert report == {"samples": python}


@needs_node
def test_js_tokenizer_encodes_and_decodes_as_python():
    from lstmgen.tokenizer import Tokenizer

    manifest = json.loads((EXPORTED / "moe" / MANIFEST_FILE).read_text())
    tok = Tokenizer.from_dict(manifest["tokenizer"])
    rng = np.random.default_rng(0)
    marks = [tok.index[t] for t in ('.', ',', '!', '?', ';', '"', '(', ')', '--', '-', '\n') if t in tok.index]
    sequences = [[int(rng.choice(marks)) if rng.random() < 0.4 else int(rng.integers(tok.vocab_size)) for _ in range(30)]
                 for _ in range(200)]
    texts = ['Moe_Szyslak: (QUIETLY) Hey -- "you" ... Homer?!', "well-well-- a-b (c) d;e\r\nf", "Ünïcode Straße 42"]
    script = ("import { Tokenizer } from './js/lstmgen.mjs';"
              "const { spec, sequences, texts } = JSON.parse(require('fs').readFileSync(0, 'utf-8'));"
              "const t = new Tokenizer(spec);"
              "console.log(JSON.stringify({ decoded: sequences.map((s) => t.decode(s)), encoded: texts.map((x) => t.encode(x)) }));")
    run = subprocess.run([NODE, "--input-type=module", "-e", script.replace("require('fs')", "(await import('node:fs'))")],
                         input=json.dumps({"spec": manifest["tokenizer"], "sequences": sequences, "texts": texts}),
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    js = json.loads(run.stdout)
    assert js["decoded"] == [tok.decode(s) for s in sequences]
    assert js["encoded"] == [tok.encode(x) for x in texts]


@needs_node
def test_an_unknown_js_option_lists_what_the_call_takes_and_suggests_the_spelling():
    script = ("import { load } from './js/node.mjs'; const gen = await load('names');"
              "for (const [call, opts] of [['generate', { topk: 3 }], ['session', { max_tokens: 3 }]]) {"
              "  try { await gen[call](opts); } catch (e) { console.log(e.message); } }")
    run = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    generate, session = run.stdout.splitlines()
    assert generate.startswith("unknown option(s) topk (did you mean topK?) (known: ") and "minP" not in generate
    assert "pattern" in generate.split("known: ")[1]
    assert session.startswith("unknown option(s) max_tokens (known: ") and "state" in session and "num" not in session
