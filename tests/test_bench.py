"""The bench's output contract (JSON schema, table) and its path without PyTorch; not its timings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lstmgen.cli import main

from .conftest import HAS_TORCH

ROW_KEYS = {"backend", "device", "precision", "model", "model_dims", "batch_size", "tokens_per_s",
            "ratio_vs_torch_default", "ratio_vs_torch_tuned"}
MEASURED_KEYS = {"ttft_ms", "peak_rss_mb", "gflops", "pct_of_peak_flops", "step_over_floor", "tokens_per_s_runs",
                 "variant", "step_ms"}


def _check_schema(result: dict, backends: set[str]) -> None:
    assert result["schema"] == "lstmgen-bench/1"
    assert {"cpu", "cores", "onnxruntime"} <= set(result["machine"])
    assert result["ceilings"]["peak_flops"] > 0 and result["ceilings"]["matvec_floor_s"]["char-small"] > 0
    assert {r["backend"] for r in result["rows"]} == backends
    for r in result["rows"]:
        assert ROW_KEYS <= set(r), set(r) ^ ROW_KEYS
        if r["tokens_per_s"] is not None:
            assert MEASURED_KEYS <= set(r)
            assert r["tokens_per_s"] > 0 and len(r["tokens_per_s_runs"]) == 1
            assert np.isclose(r["tokens_per_s"], r["batch_size"] / r["step_ms"] * 1e3)


@pytest.mark.skipif(not HAS_TORCH, reason="the torch rows need torch; the no-torch path is tested below")
def test_bench_json_schema_and_ratios(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--models", "char-small", "--batch-sizes", "1,2", "--steps", "3", "--repeats", "1",
                 "--backends", "torch-default,engine-fp32", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_schema(result, {"torch-default", "engine-fp32"})
    default = [r for r in result["rows"] if r["backend"] == "torch-default"]
    assert all(r["ratio_vs_torch_default"] == pytest.approx(1.0) for r in default)
    assert (tmp_path / "r.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert "engine-fp32" in table and "x default" in table


def test_bench_without_torch_runs_the_engine_and_says_the_baseline_was_skipped(tmp_path):
    # A child process where `import torch` fails, as in an engine-only install.
    out = tmp_path / "r.json"
    code = ("import sys, importlib.util, lstmgen.cli\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name.split('.')[0] == 'torch' else real(name, *a)\n"
            "sys.modules['torch'] = None\n"
            f"sys.exit(lstmgen.cli.main(['bench', '--models', 'char-small', '--batch-sizes', '1', '--steps', '3',"
            f" '--repeats', '1', '--backends', 'torch-default,engine-fp32,engine-int8', '--threads', '1',"
            f" '--json', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    _check_schema(result, {"torch-default", "engine-fp32", "engine-int8"})
    skipped = [row for row in result["rows"] if row["backend"] == "torch-default"]
    assert skipped and all(row["tokens_per_s"] is None and "not installed" in row["skipped"] for row in skipped)
    assert all(row["tokens_per_s"] > 0 for row in result["rows"] if row["backend"].startswith("engine"))
    assert "skipped" in r.stdout


def test_bench_rejects_bad_flags(capsys):
    assert main(["bench", "--batch-sizes", "0"]) == 2
    assert main(["bench", "--backends", "tensorflow"]) == 2
    assert "unknown backend" in capsys.readouterr().err
