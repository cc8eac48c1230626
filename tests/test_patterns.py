"""Constrained generation (lstmgen.patterns): every sample matches its regex and length bounds, in the
Python engine, generate.onnx, Node.js, headless Chromium, the server and the playground, with the same
text for the same seed; bad patterns get one line; logprobs stay the model's; --novel still works.

Patterns here are bounded (`{m,n}`) where a test claims that every sample matches: the automaton then
forces a sample to complete within max_tokens whatever the model prefers. An unbounded pattern the
model finds unlikely is cut at max_tokens, and the sample says so (test_a_cut_sample_says_it_was_cut).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading

import numpy as np
import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.errors import LstmgenError
from lstmgen.graph_runner import GraphGenerator
from lstmgen.manifest import GENERATE_FILE, MANIFEST_FILE, sha256_file
from lstmgen.options import OptionError
from lstmgen.patterns import TokenAutomaton, compile_pattern

from .conftest import EXPORTED, HAS_TORCH, needs_torch, tiny_config
from .test_generate_js import EXAMPLE, NODE, needs_browser, needs_node, page_report

MOE_PROMPT = "moe_szyslak:"


def matches(gen: Generator, regex: str, text: str) -> bool:
    """What a sample promises: the text matches in full (ignoring case where the vocabulary is lower case)."""
    return re.fullmatch(regex, text, re.IGNORECASE if gen.tokenizer.folds_case else 0) is not None


def dutch_like_places(n: int, seed: int = 0) -> list[str]:
    """Place names built from Dutch-looking parts: capitalised, some with ' aan den ' / ' aan Zee' in them."""
    rnd = random.Random(seed)
    heads = ["Amster", "Rotter", "Schie", "Zaan", "Vlaar", "Apel", "Dor", "Gro", "Leeu", "Zwol", "Alk", "Haar", "Hil",
             "Mid", "Neder", "Ooster", "Wester", "Noord", "Zuid", "Bre", "Ede", "Ven", "Wage", "Zee", "Del", "Lei"]
    tails = ["dam", "burg", "dorp", "hout", "veen", "wijk", "stad", "horst", "laar", "broek", "meer", "huizen", "kerk",
             "sluis", "zijl", "ningen", "lo", "de", "den"]
    out = []
    for _ in range(n):
        name = rnd.choice(heads) + rnd.choice(["", "e", "en", "s"][: rnd.randint(1, 4)]) + rnd.choice(tails)
        if rnd.random() < 0.15:
            name += rnd.choice([" aan den Rijn", " aan Zee", " aan de Maas", " aan den IJssel"])
        out.append(name)
    return out


@pytest.fixture(scope="module")
def dutch(tmp_path_factory):
    """A tiny records model trained on Dutch-like place names (capitalised, with spaces): needs torch."""
    if not HAS_TORCH:
        pytest.skip("needs torch to train (the 'train' extra)")
    from lstmgen.trainer.export import export
    from lstmgen.trainer.train import train

    root = tmp_path_factory.mktemp("dutch")
    corpus = root / "places.txt"
    corpus.write_text("\n".join(dutch_like_places(1500)) + "\n")
    cfg = tiny_config(corpus, "char", True, max_steps=400)
    train(cfg, root / "run", progress=False, log=lambda m: None)
    export(root / "run", root / "art", log=lambda m: None)
    return root / "art"


# -- every sample matches -----------------------------------------------------------------------------------
RECORD_PATTERNS = [
    dict(regex="[a-z]{2,6}(na|ne|ly)"),  # suffix
    dict(regex="(ja|ka|ma)[a-z]{1,6}"),  # alternation
    dict(min_length=7, max_length=9),  # length range
    dict(regex="[a-z]*(an|en)[a-z]*", min_length=5, max_length=8),  # both
]


@pytest.mark.parametrize("kw", RECORD_PATTERNS, ids=str)
@pytest.mark.parametrize("model", ["names", "names-int8"])
def test_every_record_matches_its_pattern(model, kw):
    gen = Generator.load(model)
    samples = gen.generate(200, seed=3, temperature=1.0, **kw)
    for s in samples:
        assert s.finish_reason == "end_of_record" and s.pattern_accepted is True
        assert "regex" not in kw or matches(gen, kw["regex"], s.text), s.text
        assert kw.get("min_length", 0) <= len(s.text) <= kw.get("max_length", 10**6), s.text
    assert len(set(samples)) > 100  # a pattern masks; it does not collapse the distribution


@pytest.mark.parametrize("regex", ["[A-Z][a-z]{2,8}(dam|burg)", "[A-Z][a-z]{2,7} aan (den|de) [A-Z][a-z]{1,6}",
                                   "(Amster|Rotter|Zaan)[a-z]{1,5}"])
def test_every_record_of_a_trained_names_like_model_matches(dutch, regex):
    gen = Generator.load(dutch)
    samples = gen.generate(100, seed=1, regex=regex, max_tokens=40)
    assert all(s.finish_reason == "end_of_record" and re.fullmatch(regex, s.text) for s in samples), samples


@pytest.mark.parametrize("regex", ["( [a-z']{1,12}){2,8}[.!?]", "( [a-z']{1,10}){0,3} beer( [a-z']{1,10}){0,3}[.!?]",
                                   " (yeah|no|oh)(, [a-z']{1,9}){1,4}!"])
def test_running_text_matches_after_the_prompt_and_ends_with_the_pattern(regex):
    gen = Generator.load("moe")
    samples = gen.generate(40, MOE_PROMPT, seed=2, regex=regex, max_tokens=40, echo=False)
    for s in samples:
        assert s.finish_reason == "pattern_end" and matches(gen, regex, s.text), s.text
    assert len(set(samples)) > 20


def test_a_word_model_writes_a_space_before_its_next_word():
    with pytest.raises(OptionError, match="begin the pattern with one"):
        Generator.load("moe").generate(1, MOE_PROMPT, regex="hey.*")
    [s] = Generator.load("moe").generate(1, regex="hey[a-z ]{1,20}", seed=1)  # no prompt: the text starts the line
    assert s.text.startswith("hey")


def test_a_records_prompt_begins_the_record_that_matches():
    gen = Generator.load("names")
    samples = gen.generate(30, "mar", seed=4, regex="ma[a-z]{1,5}a")
    assert all(s.startswith("mar") and re.fullmatch("ma[a-z]{1,5}a", s) for s in samples)
    with pytest.raises(OptionError, match="the prompt cannot begin a record that matches"):
        gen.generate(1, "jo", regex="ma[a-z]+")


def test_masking_then_temperature_zero_is_the_best_allowed_token():
    gen = Generator.load("names")
    regex = "[a-z]{6,9}"
    automaton = gen.pattern(regex=regex)
    for s in gen.generate(5, prompt="a", seed=0, temperature=0.0, regex=regex, logprobs=20, echo=False):
        state = automaton.start(s.prompt_ids)
        for t in s.logprobs:  # greedy among the allowed: the likeliest token (under the model) the pattern allowed
            allowed = [tok for tok, _ in t.top if automaton.allowed[state, gen.tokenizer.index[tok]]]
            assert t.token == allowed[0]
            state = automaton.next[state, t.id]
        assert re.fullmatch(regex, s.text)


# -- the same text in every runtime ---------------------------------------------------------------------------
GRAPH_CASES = [("names", None, dict(regex="[a-z]{2,6}(na|ne|ly)")),
               ("names", "ka", dict(min_length=6, max_length=8, top_k=8)),
               ("names-int8", None, dict(regex="(ja|ka|ma)[a-z]{1,6}", temperature=1.1)),
               ("moe", MOE_PROMPT, dict(regex="( [a-z']{1,12}){2,8}[.!?]", max_tokens=30, top_p=0.9)),
               ("shakespeare", "ROMEO:", dict(regex="\n[A-Z][a-z]+ [a-z ,]{5,40}[.!?\n]", max_tokens=60))]


@pytest.mark.parametrize("model,prompt,kw", GRAPH_CASES, ids=lambda x: str(x))
def test_generate_onnx_writes_the_engines_constrained_text(model, prompt, kw):
    python = [s.text for s in Generator.load(model).generate(60, prompt, seed=9, **kw)]
    graph = GraphGenerator.load(model).generate(60, prompt, seed=9, **kw)
    assert sum(a == b for a, b in zip(python, graph)) >= 59  # fp32 agreed fully; int8 leaves room for one rounding


@needs_node
@pytest.mark.parametrize("model,prompt,kw", [c for c in GRAPH_CASES if c[0] != "names-int8"], ids=lambda x: str(x))
def test_node_writes_pythons_constrained_text(tmp_path, capsys, model, prompt, kw):
    flags = {k: v for k, v in kw.items() if k not in ("regex", "min_length", "max_length")}
    pattern_flags = [x for k in ("regex", "min_length", "max_length") if k in kw
                     for x in (f"--{k.replace('_', '-')}", str(kw[k]))]
    assert main(["compile-pattern", model, *pattern_flags, "--out", str(tmp_path / "p.json")]) == 0
    common = ["--num", "12", "--seed", "9", *(["--prompt", prompt] if prompt else []),
              *[x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    run = subprocess.run([NODE, str(EXAMPLE), str(EXPORTED / model), "--json", "--pattern", str(tmp_path / "p.json"),
                          *common], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    capsys.readouterr()
    assert main(["generate", model, "--json", "--allow-known", *pattern_flags, *common]) == 0
    assert json.loads(run.stdout)["samples"] == json.loads(capsys.readouterr().out)["samples"]


@needs_node
@pytest.mark.parametrize("flags,message", [
    (["--ban", "e"], "compiled with banned tokens [] but this call bans [\"e\"]"),  # tokens as text, not ids
    (["--regex", "x"], "regex is compiled in Python: write the tables with `lstmgen compile-pattern MODEL --regex"),
    (["--min-length", "3"], "minLength is compiled in Python"),
    (["--max-tokens", "3"], "the shortest sample that matches the pattern takes"),
])
def test_node_refuses_a_pattern_it_cannot_apply_in_one_line(tmp_path, flags, message):
    assert main(["compile-pattern", "names", "--regex", "[a-z]{4,6}", "--out", str(tmp_path / "p.json")]) == 0
    run = subprocess.run([NODE, str(EXAMPLE), str(EXPORTED / "names"), "--pattern", str(tmp_path / "p.json"), *flags],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@needs_browser
@pytest.mark.parametrize("model,settings,kw", [
    ("names", {"num": 10, "seed": 7}, dict(regex="[a-z]{2,6}(na|ne|ly)")),
    ("moe", {"num": 3, "seed": 5, "prompt": MOE_PROMPT, "max-tokens": 30}, dict(regex="( [a-z']{1,12}){2,8}[.!?]")),
])
def test_browser_page_writes_pythons_constrained_text(tmp_path, model, settings, kw):
    gen = Generator.load(model)
    pattern = json.dumps(gen.pattern(**kw).to_dict(model)).encode()
    report = page_report(tmp_path, "js/web/index.html",
                         lambda base: {"model": f"{base}/exported/{model}", **settings, "pattern": f"{base}/pattern.json",
                                       "run": 1, "report": f"{base}/report"}, files={"/pattern.json": pattern})
    python = gen.generate(settings["num"], settings.get("prompt"), seed=settings["seed"],
                          max_tokens=settings.get("max-tokens"), **kw)
    assert report == {"samples": [s.text for s in python]}


def old_graph_artifact(tmp_path):
    """names with a generate.onnx as built before patterns: the two pattern inputs fixed inside the graph."""
    import shutil

    import onnx

    folder = tmp_path / "names"
    shutil.copytree(EXPORTED / "names", folder)
    model = onnx.load(str(folder / GENERATE_FILE), load_external_data=False)
    vocab = model.graph.input[-2].type.tensor_type.shape.dim[1].dim_value
    keep = [i for i in model.graph.input if i.name not in ("pattern_next", "pattern_start")]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros((1, vocab), np.int32), "pattern_next"),
                                    onnx.numpy_helper.from_array(np.array(0, np.int64), "pattern_start")])
    onnx.save(model, str(folder / GENERATE_FILE))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["generate_sha256"] = sha256_file(folder / GENERATE_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def test_a_graph_built_before_patterns_runs_without_one_and_refuses_one(tmp_path):
    folder = old_graph_artifact(tmp_path)
    g = GraphGenerator.load(folder)
    assert g.generate(5, seed=3) == [s.text for s in Generator.load(folder).generate(5, seed=3)]
    with pytest.raises(LstmgenError, match="built before patterns.*lstmgen add-graph") as e:
        g.generate(2, regex="ma.*")
    assert "\n" not in str(e.value)


@needs_node
def test_node_refuses_a_pattern_for_a_graph_built_before_patterns(tmp_path):
    folder = old_graph_artifact(tmp_path)
    assert main(["compile-pattern", "names", "--regex", "[a-z]{4,6}", "--out", str(tmp_path / "p.json")]) == 0
    run = subprocess.run([NODE, str(EXAMPLE), str(folder), "--pattern", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "built before patterns" in run.stderr and "add-graph" in run.stderr, run.stderr


# -- novel, logprobs, cut samples -----------------------------------------------------------------------------
def test_novel_samples_with_a_pattern_are_new_distinct_and_match():
    gen = Generator.load("names")
    samples = gen.generate(40, seed=5, regex="(ja|ka|ma)[a-z]{1,6}", novel=True)
    assert len(samples) == 40 and len(set(samples)) == 40
    assert all(re.fullmatch("(ja|ka|ma)[a-z]{1,6}", s) and not gen.in_corpus(s) for s in samples)


@pytest.mark.parametrize("model,prompt,kw", [("names", None, dict(regex="[a-z]{2,6}(na|ne|ly)")),
                                             ("names", "ka", dict(min_length=6, max_length=8)),
                                             ("moe", MOE_PROMPT, dict(regex="( [a-z']{1,12}){2,6}[.!?]"))])
def test_model_logprobs_of_a_constrained_sample_are_its_score(model, prompt, kw):
    gen = Generator.load(model)
    for s in gen.generate(6, prompt, seed=8, logprobs=2, **kw):
        # as for any sample (test_generation_features): running text is scored from the start tokens
        scored = s.text if gen.records else gen.tokenizer.decode(gen.manifest.start_ids) + s.text
        assert sum(t.logprob for t in s.logprobs) == pytest.approx(-gen.score(scored).nats, abs=1e-4)
        written = s.logprobs[len(s.prompt_ids):]
        # renormalised over what the pattern allowed: never less likely than under the whole vocabulary
        assert all(t.constrained_logprob >= t.logprob - 1e-9 and t.constrained_logprob <= 0 for t in written)
        assert any(t.constrained_logprob > t.logprob + 1e-6 for t in written)


def test_a_cut_sample_says_it_was_cut(capsys):
    # the names model hardly ever ends a name in 'q': at max_tokens 6 the samples are cut, and say so
    gen = Generator.load("names")
    samples = gen.generate(10, seed=1, regex="[a-z]+q", max_tokens=6)
    assert all(s.finish_reason == "length" and s.pattern_accepted is False for s in samples)
    assert main(["generate", "names", "--regex", "[a-z]+q", "--max-tokens", "6", "--seed", "1", "--json",
                 "--allow-known"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["pattern_accepted"] == [False] * 10
    assert "10 of 10 samples were cut at --max-tokens 6 before they matched the pattern" in out.err
    # novel (the default here): a cut sample is no record, so none is new; the warning names --max-tokens
    assert main(["generate", "names", "--regex", "[a-z]+q", "--max-tokens", "6", "--seed", "1", "--num", "3"]) == 0
    assert "found only 0 novel samples of 3 asked for" in (err := capsys.readouterr().err)
    assert "samples cut at --max-tokens 6 before they matched the pattern are not counted: raise --max-tokens" in err


def test_novel_leaves_out_samples_cut_before_they_matched():
    gen = Generator.load("names")
    plain = gen.generate(30, seed=2, regex="[a-z]+(ly|na)", max_tokens=9)
    assert any(s.pattern_accepted is False for s in plain)  # the model often runs past 9 letters here
    novel = gen.generate(30, seed=2, regex="[a-z]+(ly|na)", max_tokens=9, novel=True)
    assert len(novel) == 30 and all(s.pattern_accepted and re.fullmatch("[a-z]+(ly|na)", s) for s in novel)


# -- bad input: one line --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["names", "--regex", "a(?=b)c"], "--regex uses look-ahead, which is not supported"),
    (["names", "--regex", "(?<!a)b"], "--regex uses look-behind, which is not supported"),
    (["names", "--regex", "(a)b\\1"], "--regex uses a back-reference, which is not supported"),
    (["names", "--regex", "a\\bc"], "--regex uses an anchor or \\b inside the pattern"),
    (["names", "--regex", "a++"], "--regex uses a possessive quantifier"),
    (["names", "--regex", "(a"], "--regex is not a valid regular expression: missing ), unterminated subpattern"),
    (["names", "--regex", "[0-9]+x"], "--regex needs characters this model's vocabulary lacks: '0', '1'"),
    (["names", "--regex", "é+"], "--regex needs characters this model's vocabulary lacks: 'É', 'é'"),
    (["names", "--regex", "e+", "--ban", "e"], "no sample can match --regex without the banned tokens"),
    (["names", "--regex", "e+", "--ban", "<eos>"], "no sample can match --regex without the banned tokens"),
    (["names", "--min-length", "9", "--max-length", "4"], "--min-length (9) is above the maximum length (4)"),
    (["names", "--regex", "[a-z]{30,40}"], "--max-tokens is 28, but the shortest sample that matches the pattern takes 31"),
    (["names", "--prompt", "jo", "--regex", "ma.*"], "the prompt cannot begin a record that matches regex 'ma.*'"),
    (["shakespeare", "--min-length", "3"], "--min-length applies to records models"),
    (["moe", "--prompt", "moe_szyslak:", "--regex", "hey.*"], "begin the pattern with one"),
    (["names", "--regex", ""], "--regex must be a non-empty text of at most 1000 characters"),
    (["names", "--regex", "(a{100}b){50}"], "--regex spells out about 5050 characters with its repeats (at most 2000)"),
    (["names", "--regex", "a{4294967296}"], "--regex is not a valid regular expression: the repetition number is too large"),
    (["names", "--regex", "[^a-z]+"], "--regex needs characters this model's vocabulary lacks: ones outside it"),
])
def test_each_bad_pattern_gets_one_line(capsys, args, message):
    assert main(["generate", *args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lstmgen: error: ") and message in err[-1], err
    assert all(line.startswith("lstmgen: ") for line in err)  # notes and the error, no traceback


def test_compile_pattern_bad_input_gets_one_line(capsys, tmp_path):
    assert main(["compile-pattern", "names", "--out", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.strip() == "lstmgen: error: give a pattern: --regex, --min-length or --max-length"


# -- the automaton --------------------------------------------------------------------------------------------
def test_the_pattern_file_holds_the_same_automaton():
    gen = Generator.load("moe")
    a = gen.pattern(regex="( [a-z']{1,12}){2,8}[.!?]")
    b = TokenAutomaton.from_dict(json.loads(json.dumps(a.to_dict("moe"))))
    for name in ("next", "accepting", "terminal", "start_by_mode", "mode_next", "min_tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_dead_states_are_pruned_and_bans_left_out():
    gen = Generator.load("names")
    a = gen.pattern(regex="[a-z]{1,3}(x|qq)", ban=["q"])
    reachable_accept = a.min_tokens >= 0
    assert reachable_accept.all() and (a.next[:, gen.token_id("q")] == -1).all()
    assert not a.terminal.any()  # records: every state can still write something (the end marker where it accepts)
    assert a.allowed[:, gen.tokenizer.eos_id].sum() == a.accepting.sum()


def test_compiling_is_cached_per_vocabulary_and_pattern():
    tok = Generator.load("names").tokenizer
    a = compile_pattern(tok, regex="ma[a-z]+", records=True)
    assert compile_pattern(tok, regex="ma[a-z]+", records=True) is a
    assert compile_pattern(tok, regex="ma[a-z]+", records=True, banned=(5,)) is not a


def test_a_prompt_no_record_begins_with_gets_a_hint(dutch, capsys):
    gen = Generator.load(dutch)
    hint = gen.prompt_hint("ams")
    assert hint is not None and "capital letter" in hint and "'Ams'" in hint
    assert gen.prompt_hint("Ams") is None and Generator.load("names").prompt_hint("ma") is None
    assert main(["generate", str(dutch), "--prompt", "ams", "--num", "1", "--seed", "1"]) == 0
    assert "lstmgen: hint: this model's records begin with a capital letter" in capsys.readouterr().err


@needs_torch
def test_tiny_trained_models_keep_to_patterns(artifacts):
    gen = Generator.load(artifacts["moe"])
    for s in gen.generate(10, seed=1, regex="( [a-z]{1,8}){1,5}\\.", max_tokens=20, echo=False, prompt="moe_szyslak:"):
        assert s.finish_reason == "pattern_end" and re.fullmatch("( [a-z]{1,8}){1,5}\\.", s.text)


# -- the server and the playground -----------------------------------------------------------------------------
def test_the_server_applies_patterns_and_compiles_them_for_browsers():
    from lstmgen.server import Limits

    from .conftest import serving
    from .test_playground import call

    gen = Generator.load("names")
    with serving({"names": gen}, Limits()) as srv:
        body = {"model": "names", "num": 5, "seed": 3, "regex": "(ja|ka|ma)[a-z]{1,6}", "min_length": 5}
        status, raw, _ = call(srv, "/v1/generate", body, key=None)
        expected = [s.text for s in gen.generate(5, seed=3, regex="(ja|ka|ma)[a-z]{1,6}", min_length=5)]
        assert status == 200 and json.loads(raw)["samples"] == expected
        status, raw, _ = call(srv, "/v1/completions", {"model": "names", "n": 5, "seed": 3, "regex": "(ja|ka|ma)[a-z]{1,6}",
                                                       "min_length": 5}, key=None)
        assert status == 200 and [c["text"] for c in json.loads(raw)["choices"]] == expected
        status, raw, _ = call(srv, "/v1/pattern", {"model": "names", "regex": "(ja|ka|ma)[a-z]{1,6}"}, key=None)
        assert status == 200 and json.loads(raw) == gen.pattern(regex="(ja|ka|ma)[a-z]{1,6}").to_dict("names")
        status, raw, _ = call(srv, "/v1/completions", {"model": "names", "regex": "(a)\\1"}, key=None)
        error = json.loads(raw)["error"]
        assert status == 400 and error["param"] == "regex" and "back-reference" in error["message"]


def test_the_playground_keeps_to_a_pattern_on_the_server_and_in_the_browser(tmp_path):
    from lstmgen.server import Limits, make_server

    from .test_playground import browser, fill, generate_on_page, needs_chromium, needs_ort_web, open_playground

    for mark in (needs_chromium, needs_ort_web):
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    gens = {"names": Generator.load("names"), "moe": Generator.load("moe")}
    srv = make_server(gens, "127.0.0.1", 0, Limits(), api_key="pg-key")
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    driver = browser(tmp_path)
    try:
        open_playground(driver, srv)
        settings = {"prompt": "ka", "seed": "4", "regex": "ka[a-z]{2,5}(na|ne)", "min_length": "6"}
        expected = gens["names"].generate(1, "ka", seed=4, regex="ka[a-z]{2,5}(na|ne)", min_length=6)[0].text
        assert generate_on_page(driver, "names", settings) == expected  # streamed from /v1/completions
        driver.find_element("id", "in_browser").click()
        assert generate_on_page(driver, "names", settings) == expected  # generate-web.onnx, tables from /v1/pattern
        assert "in this browser" in driver.find_element("id", "status").text
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("id", "model")).select_by_value("moe")  # running text: no length fields
        assert not driver.find_element("id", "min_length").is_displayed()
        fill(driver, "regex", "(?<=a)b")
        driver.find_element("id", "go").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 60).until(lambda d: "look-behind" in d.find_element("id", "status").text)
    finally:
        driver.quit()
        srv.stop()
        thread.join(60)
