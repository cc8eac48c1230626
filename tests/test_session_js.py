"""The JavaScript Session (js/session.mjs) over model.onnx, in onnxruntime-node and in a real headless
Chromium with onnxruntime-web: the same script of calls writes the same text as Python's Session, its
`top` lists the same tokens with the same chances, and a state saved by either runtime continues
exactly in the other. Skips with the reason where node, `npm ci --prefix js` or chromium is missing."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from lstmgen import Generator, rng
from lstmgen.errors import LstmgenError

from .conftest import EXPORTED, REPO
from .test_generate_js import NODE, needs_browser, needs_node, page_report

DRIVER = REPO / "tests" / "js" / "session_node.mjs"


def python_script(gen: Generator, ops: list[dict]) -> list:
    """session_script.mjs's ops, run by Python's Session."""
    session, last_top, saved, out = None, [], None, []
    for op in ops:
        try:
            if "start" in op:  # a seed may be given as text: JSON numbers are doubles in JavaScript
                options = {k: int(v) if k == "seed" else v for k, v in op["start"].items()}
                session = gen.session(**options)
                out.append(session.text)
            elif "sample" in op:
                for _ in range(op["sample"]):
                    if session.ended:
                        break
                    session.sample()
                out.append(session.text)
            elif "top" in op:
                last_top = session.top(op["top"])
                out.append([[t.token, t.id, t.probability, t.text] for t in last_top])
            elif "append" in op:
                session.append(op["append"])
                out.append(session.text)
            elif "append_choice" in op:
                session.append(last_top[op["append_choice"]])
                out.append(session.text)
            elif "save" in op:
                saved = session.save()
                out.append(base64.b64encode(saved).decode())
            elif "load" in op:
                session = gen.session(state=saved if op["load"] == "last" else base64.b64decode(op["load"]))
                out.append(session.text)
        except LstmgenError as e:
            out.append({"error": str(e)})
    return out


def node_script(folder, ops: list[dict]) -> list:
    run = subprocess.run([NODE, str(DRIVER), str(folder)], input=json.dumps(ops), capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def assert_same(js: list, py: list, ops: list[dict], rel: float = 1e-9) -> None:
    """The same texts and tokens; chances equal to `rel` (onnxruntime-node runs Python's kernels: the same
    logits; onnxruntime-web's WebAssembly kernels differ in the last float32 bits)."""
    assert len(js) == len(py)
    for op, a, b in zip(ops, js, py):
        if "save" in op:
            continue  # the same state, but JSON writes 1.0 as 1: compared by loading it in the other runtime
        if "top" in op:
            assert [t[:2] + t[3:] for t in a] == [t[:2] + t[3:] for t in b], op
            assert [t[2] for t in a] == pytest.approx([t[2] for t in b], rel=rel, abs=1e-12), op
        elif isinstance(b, dict):
            assert a["error"] == b["error"], op
        else:
            assert a == b, op


SCRIPTS = {
    "names": [{"start": {"prompt": "Ma", "seed": 7}}, {"top": 5}, {"append_choice": 1}, {"sample": 30}],
    "shakespeare": [{"start": {"prompt": "ROMEO:\n", "seed": 7, "temperature": 0.8, "top_k": 40}}, {"top": 5},
                    {"sample": 120}, {"append": "\nJULIET:\nAy"}, {"top": 8}, {"save": True}, {"sample": 40},
                    {"load": "last"}, {"sample": 40}],
    "shakespeare-penalties": [{"start": {"prompt": "KING:", "seed": str(2**62 + 3), "row": 5, "top_p": 0.9, "min_p": 0.02,
                                         "repetition_penalty": 1.3, "repetition_window": 12, "frequency_penalty": 0.4,
                                         "presence_penalty": 0.3, "bias": {"e": -1.0}, "ban": ["z"]}},
                              {"sample": 300}, {"top": 6}, {"save": True}, {"sample": 30}],
    "moe": [{"start": {"prompt": "Moe_Szyslak: Hey", "seed": 5, "top_k": 100, "logit_bias": {"7": 1.5},
                       "allow_unk": True}}, {"top": 5},
            {"append_choice": 0}, {"sample": 60}, {"append": "homer_simpson: beer"}, {"top": 4}, {"sample": 20}],
    "errors": [{"start": {"prompt": "ma", "num": 2}}, {"start": {"prompt": "ma", "top_k": -1}},
               {"start": {"prompt": "ma", "ban": ["#"]}}, {"load": "bm90IGEgc3RhdGU="}],
}
MODELS = {"names": "names", "shakespeare": "shakespeare", "shakespeare-penalties": "shakespeare", "moe": "moe",
          "errors": "names"}


@pytest.fixture(scope="module")
def shipped_gens():
    return {m: Generator.load(EXPORTED / m) for m in ("names", "shakespeare", "moe")}


@needs_node
@pytest.mark.parametrize("script", [k for k in SCRIPTS if k != "errors"])
def test_node_session_writes_pythons_text(shipped_gens, script):
    model, ops = MODELS[script], SCRIPTS[script]
    py = python_script(shipped_gens[model], ops)
    assert_same(node_script(EXPORTED / model, ops), py, ops)


@needs_node
@pytest.mark.parametrize("folder", ["names-tiny", "shakespeare-tiny-int8"])
def test_node_session_reads_a_format1_model_as_python_does(folder):
    """A format-1 model.onnx (all layers' state in one tensor) runs in the JavaScript session as in Python."""
    path = REPO / "tests" / "data" / "format1" / folder
    ops = [{"start": {"prompt": "a", "seed": 3}}, {"top": 4}, {"sample": 25}, {"save": True}, {"load": "last"},
           {"sample": 10}]
    assert_same(node_script(path, ops), python_script(Generator.load(path), ops), ops)


@needs_node
def test_error_messages_are_pythons_in_javascripts_words(shipped_gens):
    js = node_script(EXPORTED / "names", SCRIPTS["errors"])
    py = python_script(shipped_gens["names"], SCRIPTS["errors"])
    same = [0, 1, 3]  # the ban message is js's own wording (generate's, too)
    assert [js[i]["error"].replace("topK", "top_k") for i in same] == [py[i]["error"] for i in same]
    assert js[0]["error"].startswith("a session draws one token at a time: leave out num")
    assert js[1]["error"].startswith("topK must be an integer in [0, 1000000], got -1")
    assert '"#" is not a token' in js[2]["error"]
    assert js[3]["error"].startswith("this is not an lstmgen session state")
    assert all(r["name"] == "LstmgenError" for r in js)


@needs_node
def test_a_state_saved_in_one_runtime_continues_exactly_in_the_other(shipped_gens):
    gen = shipped_gens["shakespeare"]
    start = [{"start": {"prompt": "ROMEO:\n", "seed": 9, "repetition_penalty": 1.2, "frequency_penalty": 0.3}},
             {"sample": 270}, {"save": True}]
    py_blob = python_script(gen, start)[-1]
    js_blob = node_script(EXPORTED / "shakespeare", start)[-1]
    go_on = [{"load": py_blob}, {"sample": 60}, {"top": 5}]
    python_goes_on = python_script(gen, go_on)
    assert_same(node_script(EXPORTED / "shakespeare", go_on), python_goes_on, go_on)
    assert python_script(gen, [{"load": js_blob}, *go_on[1:]]) == python_goes_on


@needs_node
def test_a_damaged_or_foreign_state_is_refused_in_one_line_in_javascript(shipped_gens):
    blob = base64.b64decode(python_script(shipped_gens["names"], [{"start": {"prompt": "ma", "seed": 1}}, {"save": True}])[-1])
    damaged = bytearray(blob)
    damaged[40] ^= 1
    js = node_script(EXPORTED / "shakespeare", [{"load": base64.b64encode(blob).decode()},
                                                {"load": base64.b64encode(bytes(damaged)).decode()}])
    assert "saved from another model" in js[0]["error"] and "damaged" in js[1]["error"]
    with pytest.raises(LstmgenError, match="saved from another model"):
        shipped_gens["shakespeare"].session(state=blob)


@needs_node
def test_javascript_draws_lstmgen_rngs_numbers():
    seeds, rows, steps = [0, 1, 7, 2**32 + 5, 2**63 - 1], [0, 1, 2**32 + 3, 2**64 - 1], [0, 1, 255, 2**32 + 9]
    script = ("import { rowKey, uniform } from './js/session.mjs';"
              f"const out = []; for (const s of {json.dumps([str(s) for s in seeds])}) for (const r of"
              f" {json.dumps([str(r) for r in rows])}) for (const t of {json.dumps(steps)})"
              " out.push(uniform(rowKey(BigInt(s), BigInt(r)), t)); console.log(JSON.stringify(out));")
    run = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    expected = [float(rng.uniforms(rng.row_keys(s, [r]), t % 2**32)[0]) for s in seeds for r in rows for t in steps]
    assert json.loads(run.stdout) == expected
    assert len(set(expected)) == len(expected)


@needs_browser
@pytest.mark.parametrize("script", ["names", "shakespeare", "moe"])
def test_browser_session_writes_pythons_text(shipped_gens, tmp_path, script):
    model, ops = MODELS[script], SCRIPTS[script]
    report = page_report(tmp_path, "tests/js/session.html",
                         lambda base: {"model": f"{base}/exported/{model}", "ops": f"{base}/ops.json", "report": f"{base}/report"},
                         files={"/ops.json": json.dumps(ops).encode()})
    assert not (isinstance(report, dict) and "error" in report), report
    assert_same(report, python_script(shipped_gens[model], ops), ops, rel=1e-5)


def test_the_scripts_exercise_every_session_option():
    from lstmgen.options import BY_NAME, JS_SESSION, SESSION_OPTIONS

    applied = {name for name in SESSION_OPTIONS if JS_SESSION in BY_NAME[name].runtimes}  # patterns are Python's only
    assert applied <= {k for ops in SCRIPTS.values() for op in ops for k in op.get("start", {})}


@needs_node
@pytest.mark.parametrize("flags,message", [
    (["--seed", "x"], "--seed must be an integer, got 'x'"),
    (["--temperature", "-1"], "temperature must be a number in [0, 100], got -1"),
    (["--load", "/nonexistent/state.bin"], "file not found: /nonexistent/state.bin"),
])
def test_the_node_session_example_gets_one_line_for_bad_input(flags, message):
    run = subprocess.run([NODE, "js/examples/session.mjs", "shakespeare", *flags], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 2 and run.stderr == f"lstmgen: error: {message}\n", run.stderr


@needs_node
def test_the_node_example_autocompletes_and_continues_as_python(shipped_gens):
    run = subprocess.run([NODE, "js/examples/session.mjs", "exported/shakespeare", "--prompt", "ROMEO:", "--top", "3",
                          "--sample", "20", "--seed", "7"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    session = shipped_gens["shakespeare"].session(prompt="ROMEO:", seed=7)
    choices = "".join(f"{json.dumps(t.text):<12} {t.probability:.4f}\n" for t in session.top(3))
    for _ in range(20):
        session.sample()
    assert run.stdout == choices + session.text + "\n"
