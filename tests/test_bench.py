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
                 "--json", str(out)]) == 0
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
    table = capsys.readouterr().out
    assert "engine-fp32" in table and "x default" in table and "left out: torch.compile" in table
    assert ("GPU: none on this machine" in table) == (result["machine"]["gpu"] is None)


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


def test_breakdown_per_layer_state_graph_computes_what_the_shipped_graph_computes(tmp_path):
    # The breakdown's scratch graph shape is only a fair candidate if it does the same step.
    import onnxruntime as ort

    from lstmgen.bench.breakdown import per_layer_state_graph, save_graph
    from lstmgen.bench.models import ModelSpec, random_weights, write_artifact

    spec = ModelSpec("tiny", 11, 6, 8, 2)
    sd = random_weights(spec, seed=3)
    shipped = ort.InferenceSession(str(write_artifact(tmp_path / "a", spec, sd) / "model.onnx"))
    scratch = ort.InferenceSession(str(save_graph(per_layer_state_graph(sd, spec.layers), tmp_path / "s.onnx", False)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.vocab, (3, 1))
    h, c = rng.standard_normal((2, spec.layers, 3, spec.hidden)).astype(np.float32)
    logits, h1, c1 = shipped.run(["logits", "h1", "c1"], {"tokens": tokens, "h0": h, "c0": c})
    feeds = {"tokens": tokens} | {f"{k}0_{i}": s[i:i + 1] for k, s in (("h", h), ("c", c)) for i in range(spec.layers)}
    out = dict(zip([o.name for o in scratch.get_outputs()], scratch.run(None, feeds)))
    np.testing.assert_allclose(out["logits"], logits[:, 0], rtol=1e-5, atol=1e-6)
    for i in range(spec.layers):
        np.testing.assert_allclose(out[f"h1_{i}"][0], h1[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"c1_{i}"][0], c1[i], rtol=1e-5, atol=1e-6)


def test_two_ceiling_probes_combine_to_the_higher_ceilings_and_the_lower_floors():
    def probe(fp32, int8, floor):
        return {"blas": [], "peak_ops_per_s": {"fp32": fp32, "int8": int8}, "floor_s": {"m": {"fp32": floor, "int8": floor / 2}},
                "peak_probes": {"fp32": {"numpy": fp32}}, "floor_probes": {"m": {}}}

    both = ceilings.best_of(probe(100.0, 50.0, 2.0), probe(80.0, 70.0, 3.0))
    assert both["peak_ops_per_s"] == {"fp32": 100.0, "int8": 70.0}
    assert both["floor_s"] == {"m": {"fp32": 2.0, "int8": 1.0}}
    assert [p["fp32"]["numpy"] for p in both["peak_probes"]] == [100.0, 80.0]
