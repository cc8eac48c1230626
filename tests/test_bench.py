"""The bench's output contract (JSON schema, table) and its path without PyTorch; not its timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lstmgen.bench import ceilings
from lstmgen.bench.cli import DEFAULT_CHART
from lstmgen.bench.suite import COMPILE_LEFT_OUT, NOISY_SPREAD, add_default_to_tuned, pick_variant, spread
from lstmgen.cli import main

from .conftest import HAS_TORCH

ROW_KEYS = {"backend", "device", "precision", "model", "model_dims", "batch_size", "tokens_per_s",
            "ratio_vs_torch_default", "ratio_vs_torch_tuned"}
MEASURED_KEYS = {"ttft_ms", "peak_rss_mb", "gops_per_s", "pct_of_ceiling", "above_ceiling", "step_over_floor",
                 "tokens_per_s_runs", "tokens_per_s_min", "tokens_per_s_max", "spread", "noisy", "variant", "candidates",
                 "step_ms"}


def _check_schema(result: dict, backends: set[str]) -> None:
    assert result["schema"] == "lstmgen-bench/2"
    assert {"cpu", "cores", "onnxruntime", "gpu"} <= set(result["machine"])
    limits = result["ceilings"]
    assert limits["peak_ops_per_s"]["fp32"] > 0 and limits["peak_ops_per_s"]["int8"] > 0
    assert limits["floor_s"]["char-small"]["fp32"] > 0 and limits["floor_s"]["char-small"]["int8"] > 0
    assert isinstance(limits["blas"], list)
    assert {r["backend"] for r in result["rows"]} == backends
    for r in result["rows"]:
        assert ROW_KEYS <= set(r), set(r) ^ ROW_KEYS
        if r["tokens_per_s"] is not None:
            assert MEASURED_KEYS <= set(r)
            assert r["tokens_per_s"] > 0 and len(r["tokens_per_s_runs"]) == 1
            assert r["tokens_per_s_min"] <= r["tokens_per_s"] <= r["tokens_per_s_max"]
            assert np.isclose(r["tokens_per_s"], r["batch_size"] / r["step_ms"] * 1e3)


@pytest.mark.skipif(not HAS_TORCH, reason="the torch rows need torch; the no-torch path is tested below")
def test_bench_json_schema_and_ratios(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--models", "char-small", "--batch-sizes", "1,2", "--steps", "3", "--repeats", "1",
                 "--backends", "torch-default,torch-tuned,engine-fp32", "--threads", "1", "--no-compile",
                 "--json", str(out), "--detail"]) == 0
    result = json.loads(out.read_text())
    _check_schema(result, {"torch-default", "torch-tuned", "engine-fp32"})
    default = [r for r in result["rows"] if r["backend"] == "torch-default"]
    assert all(r["ratio_vs_torch_default"] == pytest.approx(1.0) for r in default)
    for tuned in (r for r in result["rows"] if r["backend"] == "torch-tuned"):
        names = [c["variant"] for c in tuned["candidates"]]
        assert "eager nn.LSTM" in names and "eager nn.LSTM (the torch-default run)" in names
        assert tuned["ratio_vs_torch_default"] >= 1.0 and tuned["variant"] in names
    assert result["settings"]["left_out"] == [COMPILE_LEFT_OUT]
    assert (tmp_path / "r.png").stat().st_size > 1000
    captured = capsys.readouterr()
    table = captured.out
    assert "engine-fp32" in table and "engine x torch" in table and "x default" in table and "left out: torch.compile" in table
    assert ("GPU: none on this machine" in table) == (result["machine"]["gpu"] is None)
    for backend in ("torch-default", "torch-tuned", "engine-fp32"):  # progress: model, backend and batch, as they come
        assert f"char-small {backend} batch 1: " in captured.err and f"char-small {backend} batch 2: " in captured.err
    assert result["machine"]["versions_off_constraints"] == {}  # CI and the README install through constraints.txt


def test_bench_without_torch_runs_the_engine_and_says_the_baseline_was_skipped(tmp_path):
    # A child process where `import torch` fails, as in an engine-only install.
    out = tmp_path / "r.json"
    code = ("import sys, importlib.util, lstmgen.cli\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'torch' else real(name, *a)\n"
            "sys.modules['torch'] = None\n"
            f"sys.exit(lstmgen.cli.main(['bench', '--models', 'char-small', '--batch-sizes', '1', '--steps', '3',"
            f" '--repeats', '1', '--backends', 'torch-default,engine-fp32,engine-int8,graph-int8', '--threads', '1',"
            f" '--json', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    _check_schema(result, {"torch-default", "engine-fp32", "engine-int8", "graph-int8"})
    skipped = [row for row in result["rows"] if row["backend"] == "torch-default"]
    assert skipped and all(row["tokens_per_s"] is None and "not installed" in row["skipped"] for row in skipped)
    assert all(row["tokens_per_s"] > 0 for row in result["rows"] if row["backend"].startswith(("engine", "graph")))
    [graph] = [row for row in result["rows"] if row["backend"] == "graph-int8"]
    assert graph["precision"] == "int8" and graph["variant"] == "generate.onnx (one call)"
    assert "skipped" in r.stdout


def test_bench_rejects_bad_flags(capsys):
    assert main(["bench", "--batch-sizes", "0"]) == 2
    assert main(["bench", "--backends", "tensorflow"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    for flag, low in (("--steps", 2), ("--repeats", 1), ("--threads", 1)):  # 0 is refused, not taken as the default
        assert main(["bench", "--quick", flag, "0"]) == 2
        assert capsys.readouterr().err == f"lstmgen: error: {flag} must be an integer >= {low}, got 0\n"


def _row(backend: str, *candidates: tuple[str, float]) -> dict:
    return pick_variant({"backend": backend, "model": "m", "batch_size": 64, "candidates": [
        {"variant": name, "tokens_per_s": tps, "tokens_per_s_runs": [tps], "step_ms": 1.0, "ttft_ms": 1.0,
         "peak_rss_mb": 1.0} for name, tps in candidates]})


def test_tuned_is_the_best_pytorch_variant_the_default_run_included():
    # The tuned process's own variants are all slower than the default row's run: tuned takes that run.
    rows = [_row("torch-default", ("eager nn.LSTM", 430.0)),
            _row("torch-tuned", ("eager nn.LSTM", 410.0), ("fused cell loop", 250.0), ("nn.LSTM, oneDNN off", 300.0))]
    add_default_to_tuned(rows)
    tuned = rows[1]
    assert tuned["tokens_per_s"] == 430.0 and tuned["variant"] == "eager nn.LSTM (the torch-default run)"
    assert len(tuned["candidates"]) == 4
    # A faster tuned variant keeps its own figure and name.
    rows = [_row("torch-default", ("eager nn.LSTM", 430.0)), _row("torch-tuned", ("fused cell loop", 900.0))]
    add_default_to_tuned(rows)
    assert rows[1]["tokens_per_s"] == 900.0 and rows[1]["variant"] == "fused cell loop"


def test_spread_marks_rows_whose_repeats_differ_by_more_than_the_threshold():
    steady = {"tokens_per_s": 100.0, "tokens_per_s_runs": [100.0, 100.0 + 100 * NOISY_SPREAD, 100.0]}
    noisy = {"tokens_per_s": 100.0, "tokens_per_s_runs": [90.0, 100.0, 90.0 + 100 * NOISY_SPREAD + 1]}
    spread(steady)
    spread(noisy)
    assert not steady["noisy"] and steady["spread"] == pytest.approx(NOISY_SPREAD)
    assert noisy["noisy"] and (noisy["tokens_per_s_min"], noisy["tokens_per_s_max"]) == (90.0, 90.0 + 100 * NOISY_SPREAD + 1)


def test_ceiling_probe_runs_without_the_blas_handicap_and_leaves_the_parent_env_alone(monkeypatch):
    parent = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    assert ceilings.probe_env(parent) == {"PATH": "/bin"} and len(parent) == 3
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    spec = {"name": "tiny", "vocab": 16, "embed": 8, "hidden": 16, "layers": 1}
    limits = ceilings.measure([spec], threads=1, peak_n=64)
    assert limits["blas_env_in_probe"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert limits["blas_env_removed"] == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell" and os.environ["OPENBLAS_L2_SIZE"] == "1048576"
    assert any(lib.get("architecture") for lib in limits["blas"])  # the kernel is named (threadpoolctl)
    assert limits["floor_s"]["tiny"]["fp32"] > 0 and limits["peak_ops_per_s"]["int8"] > 0


def test_quick_without_json_writes_its_chart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", "--models", "char-small", "--backends", "engine-fp32,engine-int8",
                 "--batch-sizes", "1,2", "--steps", "3", "--repeats", "1", "--threads", "1"]) == 0
    assert (tmp_path / DEFAULT_CHART).stat().st_size > 1000
    assert "wrote " + DEFAULT_CHART in capsys.readouterr().err


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="this machine has CUDA: the rows would run")
def test_cuda_rows_without_a_gpu_are_skipped_with_the_reason(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--device", "cuda", "--models", "char-small", "--backends", "engine-fp32",
                 "--batch-sizes", "1", "--steps", "3", "--repeats", "1", "--json", str(out), "--no-chart"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["tokens_per_s"] is None and "CUDA provider" in r["skipped"] for r in rows)
    assert "skipped: onnxruntime has no CUDA provider" in capsys.readouterr().out


def test_breakdown_binds_either_format_and_its_account_names_every_microsecond(tmp_path):
    # The breakdown times format-1 artifacts (its "before") with the same bound step as format 2: both must run
    # the same computation; and its account must add up to the decode loop it splits.
    import onnxruntime as ort

    from lstmgen.bench.breakdown import account, bound_step
    from lstmgen.bench.models import ModelSpec, random_weights, write_artifact
    from lstmgen.manifest import STATE_STACKED

    spec = ModelSpec("tiny", 11, 6, 8, 2)
    sd = random_weights(spec, seed=3)
    steps = []
    for state in ("per_layer", STATE_STACKED):
        folder = write_artifact(tmp_path / state, spec, sd, state=state)
        step = bound_step(ort.InferenceSession(str(folder / "model.onnx")), 3, spec)
        step.buffers[0][:, 0] = [1, 4, 7]
        for _ in range(3):
            step()
        steps.append(step.buffers[2].copy())
    np.testing.assert_array_equal(steps[0], steps[1])
    names = ["decode loop", "backend step", "ORT run (IOBinding)", "sampler (+ logits copy)", "logits copy",
             "decode loop, no-op backend", "ORT run of a one-node graph", "ORT run of the graph on a tiny model"]
    parts = {name: {"best_us": us} for name, us in zip(names, [150.0, 120.0, 117.0, 9.0, 1.0, 14.0, 3.0, 11.0])}
    terms = account(parts, floor=90.0)
    assert terms[-1] == ["= decode loop", 150.0] and sum(us for _, us in terms[:-1]) == pytest.approx(150.0)
    assert dict(terms)["alternation: the parts run in turn, not each in a tight loop (loop - step - no-op loop)"] == 16.0


def test_two_ceiling_probes_combine_to_the_higher_ceilings_and_the_lower_floors():
    def probe(fp32, int8, floor):
        return {"blas": [], "peak_ops_per_s": {"fp32": fp32, "int8": int8}, "floor_s": {"m": {"fp32": floor, "int8": floor / 2}},
                "peak_probes": {"fp32": {"numpy": fp32}}, "floor_probes": {"m": {}}}

    both = ceilings.best_of(probe(100.0, 50.0, 2.0), probe(80.0, 70.0, 3.0))
    assert both["peak_ops_per_s"] == {"fp32": 100.0, "int8": 70.0}
    assert both["floor_s"] == {"m": {"fp32": 2.0, "int8": 1.0}}
    assert [p["fp32"]["numpy"] for p in both["peak_probes"]] == [100.0, 80.0]


def _result(rows: list[dict], blas: list | None = None) -> dict:
    """A bench result as run_suite writes it, with made-up figures (the tables' layout, not a machine's speed)."""
    full = []
    for backend, model, batch, tps, noisy in rows:
        row = {"backend": backend, "model": model, "batch_size": batch, "device": "cpu", "tokens_per_s": tps}
        if tps is None:
            row["skipped"] = "PyTorch is not installed"
        else:
            row |= {"noisy": noisy, "tokens_per_s_min": tps * 0.9, "tokens_per_s_max": tps * 1.1, "spread": 0.2,
                    "ratio_vs_torch_default": None, "ratio_vs_torch_tuned": None, "ttft_ms": 1.0, "gops_per_s": 1.0,
                    "pct_of_ceiling": 1.0, "above_ceiling": False, "step_over_floor": 1.5, "peak_rss_mb": 100.0,
                    "variant": "v"}
        full.append(row)
    return {"schema": "lstmgen-bench/2", "created": "then", "rows": full,
            "machine": {"cpu": "CPU", "onnxruntime": "1.0", "numpy": "2.0", "gpu": None},
            "settings": {"threads": 2, "device": "cpu", "repeats": 5, "steps": 32, "sampling": "top-k 40",
                         "noisy_spread": NOISY_SPREAD, "left_out": []},
            "ceilings": {"peak_ops_per_s": {"fp32": 1e11, "int8": 4e11}, "blas_env_removed": {},
                         "blas": blas if blas is not None else [{"internal_api": "openblas", "version": "0.3",
                                                                 "architecture": "Haswell"}]}}


def test_summary_table_has_each_backend_side_by_side_and_explains_every_column():
    from lstmgen.bench.report import BACKEND_HELP, summary_table

    rows = [("torch-default", "m", 1, 100.0, False), ("torch-tuned", "m", 1, 400.0, False),
            ("engine-fp32", "m", 1, 1000.0, True), ("graph-int8", "m", 1, 3000.0, False),
            ("torch-default", "m", 64, None, False), ("engine-fp32", "m", 64, 5000.0, False)]
    text = summary_table(_result(rows))
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("model"))
    assert head.split() == ["model", "batch", "torch-default", "torch-tuned", "engine-fp32", "graph-int8", "engine", "x", "torch"]
    [one] = [line.split() for line in lines if line.startswith("m ") and line.split()[1] == "1"]
    assert one == ["m", "1", "100", "400", "1,000!", "3,000", "2.50!"]  # ! marks a noisy row, and a ratio made of one
    [other] = [line.split() for line in lines if line.startswith("m ") and line.split()[1] == "64"]
    assert other == ["m", "64", "skipped", "-", "5,000", "-", "-"]
    for backend in ("torch-default", "torch-tuned", "engine-fp32", "graph-int8"):
        assert f"  {backend}: {BACKEND_HELP[backend]}" in lines
    assert any(line.startswith("  engine x torch: ") for line in lines)
    assert "BLAS kernel of the ceiling probe: openblas 0.3 Haswell" in text and len(max(lines[:10], key=len)) < 120
    assert "model (random weights of its size)" in text and "WARNING: load average" not in text


def test_summary_warns_of_a_busy_machine_and_names_a_real_artifact():
    from lstmgen.bench.report import summary_table

    result = _result([("engine-fp32", "m", 1, 1000.0, False)])
    result["machine"]["load_average_at_start"] = [1.9, 1.5, 1.2]
    result["settings"]["artifact"] = "exported/names"
    text = summary_table(result)
    assert "WARNING: load average 1.9 when the run began" in text
    assert "model, batch: the artifact exported/names and the rows generated at once" in text


def test_detail_table_explains_each_of_its_columns():
    from lstmgen.bench.report import DETAIL_HELP, detail_table

    result = _result([("engine-fp32", "m", 1, 1000.0, False)])
    result["ceilings"]["floor_s"] = {"m": {"fp32": 2.5e-4, "int8": 1e-4}}
    text = detail_table(result)
    assert "Floors (one batch-1 pass over the weights, us): m fp32 250.0, int8 100.0" in text
    head = text.splitlines()[0]
    for names, _ in DETAIL_HELP:
        assert all(name in head for name in names.split(", ")), names
        assert any(line.startswith(f"  {names}: ") for line in text.splitlines())


def test_the_blas_line_names_the_kernel_or_says_how_to_get_it_named():
    from lstmgen.bench.report import blas_line

    assert "pip install 'lstmgen[bench]'" in blas_line({"blas": [{"note": "threadpoolctl is not installed"}]})
    assert "None" not in blas_line({"blas": []})
    named = blas_line({"blas": [{"internal_api": "openblas", "version": "0.3.31", "architecture": "SkylakeX"}],
                       "blas_env_removed": {"OPENBLAS_CORETYPE": "Haswell"}})
    assert "openblas 0.3.31 SkylakeX" in named and "OPENBLAS_CORETYPE=Haswell" in named


def test_baseline_ratios_match_rows_and_say_they_are_indicative():
    from lstmgen.bench.report import baseline_table, compare

    now = _result([("engine-fp32", "m", 1, 1000.0, False), ("engine-int8", "m", 1, 900.0, False)])
    then = _result([("engine-fp32", "m", 1, 800.0, False), ("engine-fp32", "m", 8, 5.0, False)])
    assert [(c["backend"], c["ratio"]) for c in compare(now, then)] == [("engine-fp32", 1.25), ("engine-int8", None)]
    text = baseline_table(now, then, "old.json")
    assert "INDICATIVE ONLY" in text.splitlines()[0] and "1.25" in text and "settings differ" not in text
    then["settings"]["repeats"], then["rows"][0]["noisy"] = 3, True
    text = baseline_table(now, then, "old.json")
    assert "settings differ (baseline -> now): repeats 3 -> 5" in text and "1.25!" in text


def test_bench_baseline_prints_and_records_each_rows_ratio(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_result([("engine-fp32", "char-small", 1, 1e9, False)])))
    out = tmp_path / "new.json"
    assert main(["bench", "--models", "char-small", "--backends", "engine-fp32", "--batch-sizes", "1", "--steps", "3",
                 "--repeats", "1", "--threads", "1", "--no-chart", "--json", str(out), "--baseline", str(old)]) == 0
    result = json.loads(out.read_text())
    [row] = result["baseline"]["rows"]
    assert row["ratio"] == pytest.approx(result["rows"][0]["tokens_per_s"] / 1e9)
    assert "INDICATIVE ONLY" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [(None, "cannot read it"), ("{", "is not JSON"),
                                             ('{"schema": "other"}', "is not a bench result")])
def test_a_bad_baseline_is_one_line_before_anything_runs(tmp_path, capsys, content, message):
    path = tmp_path / "old.json"
    if content is not None:
        path.write_text(content)
    assert main(["bench", "--baseline", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_engine_rows_of_a_records_model_write_every_token_they_count():
    """The rate counts rows x steps tokens; a records model's rows must not stop at <eos> before that."""
    from lstmgen import Generator
    from lstmgen.bench.worker import engine_request
    from lstmgen.decoding import DecodeLoop

    gen = Generator.load("names")
    request = engine_request(gen, 8, 40)  # names end after about 7 tokens when left to themselves
    loop = DecodeLoop(gen.backend, gen.tokenizer)
    loop.add(request)
    while loop.blocks:
        loop.step()
    assert [len(s.token_ids) for s in request.samples()] == [40] * 8


def test_sampler_ops_times_the_graphs_top_k_against_the_engine_sampler(tmp_path, capsys):
    # The bench behind the graph's sampling figures: the graph's own top-k nodes (block pre-selection on a
    # large vocabulary) and a whole-row TopK must pick the same ids (it asserts so), and every row is reported.
    pytest.importorskip("onnx")
    from lstmgen.bench.sampler_ops import main as sampler_ops

    out = tmp_path / "ops.json"
    assert sampler_ops(["--vocab", "3001", "--top-k", "5", "--batches", "1,3", "--rounds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-5 of 3,001 logits" in text and text.count("x the engine's sampler") == 6
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"1", "3"} and all(np.isfinite(r["best_us"]) for rows in results.values() for r in rows.values())
