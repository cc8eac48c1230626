"""generate.onnx: same text as the Python engine for the same seed, its artifact upkeep, and its bad input.

The Node.js and browser runs of the same graph are in test_generate_js.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from lstmgen import rng
from lstmgen.cli import main
from lstmgen.errors import LstmgenError
from lstmgen.generator import Generator
from lstmgen.graph_runner import GraphGenerator
from lstmgen.manifest import GENERATE_FILE, GENERATE_WEB_FILE, read_manifest, sha256_file
from lstmgen.options import graph_omits

from .conftest import EXPORTED, artifact_before_generation_graph

SETTINGS = [dict(temperature=0.8), dict(temperature=0.0), dict(temperature=1.0, top_k=5),
            dict(temperature=0.9, top_p=0.9), dict(temperature=1.2, top_k=10, top_p=0.8)]


def agreement(model: str, num: int, max_tokens: int, prompt: str | None = None, **settings) -> float:
    python = Generator.load(model, device="cpu").generate(num, prompt, max_tokens=max_tokens, seed=11, **settings)
    graph = GraphGenerator.load(model).generate(num, prompt, max_tokens=max_tokens, seed=11, **settings)
    assert len(graph) == num and all(g.startswith(prompt or "") for g in graph)
    return sum(a == b for a, b in zip(python, graph)) / num


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("model,max_tokens,prompt", [("names", 28, None), ("shakespeare", 40, "ROMEO:"),
                                                     ("moe", 24, "homer_simpson:")])
def test_graph_writes_the_python_engines_text_fp32(model, max_tokens, prompt, settings):
    # Same weights, same ONNX Runtime kernels, same uniforms, same sampling rules: fp32 rows agree
    # (measured 100%; the bound leaves room for a rare rounding difference on another CPU).
    assert agreement(model, 100, max_tokens, prompt, **settings) >= 0.98


@pytest.mark.parametrize("model", ["names-int8", "moe-int8"])
def test_graph_writes_the_python_engines_text_int8(model):
    # Dynamic int8 quantizes activations per call, over the rows in the batch: agreement needs the
    # graph to drop finished rows exactly as the Python decode loop does (it does; measured 100%).
    assert agreement(model, 100, 24, temperature=0.8) >= 0.98


def test_graph_draws_lstmgen_rng_numbers():
    # temperature 1, no filter, a constant model would make the graph's choice a pure function of u;
    # instead check the graph's first token against the engine's sampler fed with rng's uniforms.
    gen = Generator.load("names", device="cpu")
    g = GraphGenerator.load("names")
    params = gen.sampling(temperature=1.0)
    tokens, _ = g.run_ids([], 64, 1, 99, params, [])
    logits, _ = gen.backend.prefill(np.asarray([gen.manifest.start_ids], np.int64))
    u = rng.uniforms(rng.row_keys(99, range(64)), 0)
    cdf = np.cumsum(np.exp((logits[0] - logits[0].max()).astype(np.float64)))
    expected = np.searchsorted(cdf, u * cdf[-1], side="right")
    assert np.array_equal(np.where(tokens[:, 0] >= 0, tokens[:, 0], gen.tokenizer.eos_id), expected)


def test_rows_are_the_same_alone_or_batched_and_stop_at_eos():
    g = GraphGenerator.load("names")
    params = g.generator.sampling()
    batch, lengths = g.run_ids([], 8, 28, 5, params, [])
    for n in (1, 3):  # rows 0..n-1 of a smaller batch
        fewer, fewer_len = g.run_ids([], n, 28, 5, params, [])
        assert np.array_equal(batch[:n], fewer) and np.array_equal(lengths[:n], fewer_len)
    for row, n in zip(batch, lengths):
        assert (row[:n] > 0).all() and (row[n:] == -1).all()  # <eos> (id 0) ends a row and is not written


@pytest.mark.parametrize("model", ["names", "moe-int8", "shakespeare-int8"])
def test_shipped_artifacts_list_their_graph_and_what_it_omits(model):
    m = Generator.load(model).manifest
    folder = Generator.load(model).folder
    assert m.generate_sha256 == sha256_file(folder / GENERATE_FILE)
    assert m.generate_web_sha256 == sha256_file(folder / GENERATE_WEB_FILE)
    legacy = {"stop_strings": "stop", "logit_bias": "bias"}  # the names artifacts exported before the options table use
    assert {legacy.get(name, name) for name in m.generate_omits} <= set(graph_omits())
    assert {"repetition_penalty", "min_p"} <= set(m.generate_omits)


old_artifact = artifact_before_generation_graph


def test_old_artifact_still_generates_and_add_graph_upgrades_it(tmp_path, capsys):
    folder = old_artifact(tmp_path)
    model_sha = sha256_file(folder / "model.onnx")
    assert len(Generator.load(folder).generate(3, seed=1)) == 3
    with pytest.raises(LstmgenError, match="has no generate.onnx.*lstmgen add-graph"):
        GraphGenerator.load(folder)
    assert main(["add-graph", str(folder)]) == 0
    assert sha256_file(folder / "model.onnx") == model_sha
    assert read_manifest(folder).generate_sha256 == sha256_file(folder / GENERATE_FILE)
    assert GraphGenerator.load(folder).generate(5, seed=3) == Generator.load(folder).generate(5, seed=3)
    assert not list(folder.glob(".*.tmp"))
    assert capsys.readouterr().out == f"wrote {folder / GENERATE_FILE}\n"
    assert main(["add-graph", str(folder)]) == 0  # again: nothing to add, and it says so
    assert capsys.readouterr().out == f"{folder / GENERATE_FILE}: already up to date (rebuilt to the same bytes)\n"


@pytest.mark.parametrize("graph_file,damage", [(GENERATE_FILE, "append"), (GENERATE_WEB_FILE, "append"),
                                               (GENERATE_FILE, "delete")])
def test_a_graph_that_does_not_match_its_hash_is_refused_by_what_runs_it(tmp_path, capsys, graph_file, damage):
    # The graph runner refuses a damaged or missing generate.onnx; the Python engine, which never reads it,
    # still generates, and `info` says what is wrong with the graph.
    folder = tmp_path / "names"
    shutil.copytree(EXPORTED / "names", folder)
    if damage == "delete":
        (folder / graph_file).unlink()
    else:
        with open(folder / graph_file, "ab") as f:
            f.write(b"\0")
    with pytest.raises(LstmgenError, match=f"{graph_file} is missing or does not match its sha256.*add-graph"):
        GraphGenerator.load(folder)
    assert main(["generate", str(folder), "--seed", "1"]) == 0
    assert capsys.readouterr().out == main_output(["generate", "names", "--seed", "1"], capsys)
    assert main(["info", str(folder)]) == 0
    assert f"graph       unusable: {folder / graph_file} is missing" in capsys.readouterr().out


def main_output(argv, capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="Ab#"), "characters the model's vocabulary lacks"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    (dict(top_k=-3), r"top_k must be an integer in \[0, 1000000\]"),
    (dict(num=0), "num"),
    (dict(max_tokens=-1), "max_tokens"),
    (dict(min_p=0.1), "does not apply min_p"),
    (dict(repetition_penalty=1.3), "does not apply repetition_penalty"),
    (dict(stop=["a"]), "does not apply stop"),
    (dict(bias={"a": 1.0}), "does not apply bias"),
    (dict(logprobs=2), "does not apply logprobs"),
])
def test_bad_input_gets_one_clear_line(kwargs, message):
    with pytest.raises(LstmgenError, match=message) as e:
        GraphGenerator.load("names").generate(**{"num": 2, **kwargs})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model", ["names", "moe-int8"])
def test_plain_onnxruntime_runs_both_layouts_with_no_lstmgen_code(model):
    # generate-web.onnx (the layout ONNX Runtime Web loads) is the same computation as generate.onnx.
    feeds = {"prompt_ids": np.array([1], np.int64), "num": np.array(16, np.int64), "max_tokens": np.array(12, np.int64),
             "seed": np.array(2**40 + 3, np.int64), "temperature": np.array(0.7), "top_k": np.array(0, np.int64),
             "top_p": np.array(1.0), "banned_ids": np.zeros(0, np.int64),
             # no pattern: one state that allows every token (lstmgen.graphs.generation's docstring)
             "pattern_next": np.zeros((1, Generator.load(model).tokenizer.vocab_size), np.int32),
             "pattern_start": np.array(0, np.int64)}
    outputs = [ort.InferenceSession(str(EXPORTED / model / name), providers=["CPUExecutionProvider"]).run(None, feeds)
               for name in (GENERATE_FILE, GENERATE_WEB_FILE)]
    (tokens, lengths), (web_tokens, web_lengths) = outputs
    assert tokens.shape == (16, 12) and lengths.shape == (16,) and (lengths >= 1).all()
    assert np.array_equal(tokens, web_tokens) and np.array_equal(lengths, web_lengths)


@pytest.mark.parametrize("name", ["names", "shakespeare", "moe"])
def test_export_writes_a_generation_graph_that_agrees(artifacts, name):
    # `artifacts` are freshly exported tiny models where torch is present (else the shipped ones).
    folder = artifacts[name]
    m = read_manifest(folder)
    assert m.generate_sha256 == sha256_file(folder / GENERATE_FILE)
    python = Generator.load(folder, device="cpu").generate(40, max_tokens=24, seed=8, temperature=1.0, top_k=6)
    assert GraphGenerator.load(folder).generate(40, max_tokens=24, seed=8, temperature=1.0, top_k=6) == python


def test_int8_export_writes_a_generation_graph(tiny_models, tmp_path):
    from lstmgen.trainer.export import export

    run, _ = tiny_models["names"]
    export(run, tmp_path / "int8", int8=True, allow_int8_loss=True, log=lambda s: None)
    python = Generator.load(tmp_path / "int8", device="cpu").generate(30, seed=4, max_tokens=20)
    assert GraphGenerator.load(tmp_path / "int8").generate(30, seed=4, max_tokens=20) == python


def test_one_token_rows_that_end_at_once_and_bans_as_the_engine():
    # max_tokens 1: the loop never runs; greedy after "noah": every row ends at its first token (<eos>),
    # so the loop never starts either; banned ids are never written.
    g = GraphGenerator.load("names")
    engine = g.generator
    assert g.generate(5, max_tokens=1, seed=3) == engine.generate(5, max_tokens=1, seed=3)
    tokens, lengths = g.run_ids(engine.tokenizer.encode("noah"), 3, 6, 1, engine.sampling(temperature=0.0), [])
    assert tokens.shape == (3, 6) and (tokens == -1).all() and (lengths == 0).all()
    banned = g.generate(40, "ma", max_tokens=12, seed=3, ban=["r", "e"])
    assert banned == engine.generate(40, "ma", max_tokens=12, seed=3, ban=["r", "e"])
    assert not any(c in s[2:] for s in banned for c in "re")


@pytest.mark.parametrize("vocab", [3000, 3001])  # 3000: blocks of 15 ids; 3001 (a prime): blocks of 16 and a ragged tail
def test_preselected_top_k_is_the_kernels_top_k_ties_included(vocab):
    # Large vocabularies take the k best tokens from the best k blocks of BLOCK ids; the order must be the
    # kernel's (higher logit first, lower id first among equals), ties across blocks included.
    from onnx import TensorProto, helper, numpy_helper

    from lstmgen.graphs import generation as gen

    consts: dict = {}
    g = gen._Nodes("t/", consts)
    vals, ids = gen._top_k(g, "x", {"k": "k", **gen._preselect_settings(g, "k", vocab)}, vocab)
    g.nodes += [helper.make_node("Identity", [vals], ["vals"]), helper.make_node("Identity", [ids], ["ids"])]
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", vocab]),
                                             helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("vals", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
                              [numpy_helper.from_array(a, n) for n, a in consts.values()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", gen.OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(vocab)
    x = np.round(rng.standard_normal((6, vocab)) * 2, 1).astype(np.float32)  # one decimal: many exact ties
    x[1] = 0.5  # a row of equals
    block = gen._block_size(vocab)
    assert (vocab % block == 0) == (vocab == 3000)
    x[2, ::block] = 9.0  # every block's maximum ties
    x[3, -3:] = 9.0  # the best tokens in the ragged tail (or the last block)
    assert vocab >= gen.PRESELECT_MIN_VOCAB
    for k in (1, 5, 40, vocab // block + 3, vocab):
        got_vals, got_ids = session.run(None, {"x": x, "k": np.array([k], np.int64)})
        want = np.array([np.lexsort((np.arange(vocab), -row))[:k] for row in x])
        assert np.array_equal(got_ids, want), k
        assert np.array_equal(got_vals, np.take_along_axis(x, want, axis=1))
