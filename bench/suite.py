"""The bench suite: this machine's ceilings and floors (bench/ceilings.py), one worker process per
(model, backend), then each row's figure, spread and ratios, a table and JSON. Called by
`lstmgen bench` (bench/cli.py); the chart is bench/charts.py.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lstmgen.graphs.step import step_flops
from lstmgen.trainer.machine import cpu_name

from . import ceilings as ceiling_probe
from .child import run_child
from .models import ModelSpec
from .report import blas_line

# engine-*: the Python engine (decode loop, Numba sampler); graph-*: generate.onnx, the whole generation in
# one ONNX Runtime call (top-k sampling inside the graph), as another language would run it.
BACKENDS = ["torch-default", "torch-tuned", "engine-fp32", "engine-int8", "graph-fp32", "graph-int8"]
ARTIFACT_BACKENDS = ("engine", "graph")  # rows that run an exported artifact, not PyTorch
TORCH_BACKENDS = {"torch-default", "torch-tuned"}
NOISY_SPREAD = 0.20  # a row whose (max - min) / median over its repeats exceeds this is marked
COMPILE_LEFT_OUT = "torch.compile variant of PyTorch tuned (left out by --quick or --no-compile)"


CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"  # in a checkout; absent from a wheel


def locked_versions(path: Path = CONSTRAINTS) -> dict | None:
    """Installed versions that differ from the constraints file ({package: [installed, locked]}), or None
    without the file. Figures measured off those versions are not comparable with the committed ones."""
    from importlib.metadata import PackageNotFoundError, version

    if not path.is_file():
        return None
    differ = {}
    for line in path.read_text().splitlines():
        name, sep, locked = line.split("#")[0].strip().partition("==")
        if not sep:
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # an extra this install left out
        if installed.split("+")[0] != locked:
            differ[name] = [installed, locked]
    return differ


def machine() -> dict:
    import onnxruntime

    from lstmgen import __version__

    info = {"lstmgen": __version__, "versions_off_constraints": locked_versions(), "cpu": cpu_name(),
            "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(), "gpu": gpu_name(),
            "load_average": os.getloadavg()}  # 1, 5, 15 minutes, when described: an idle machine reads near 0
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
    return info


def gpu_name() -> str | None:
    """The CUDA GPU PyTorch sees, or None (also when PyTorch is absent)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cuda_unavailable(backend: str) -> str | None:
    """Why `backend` cannot run on CUDA here, or None when it can."""
    if backend in TORCH_BACKENDS:
        return None if gpu_name() else "no CUDA GPU here (torch.cuda.is_available() is False)"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu on a machine with a GPU)"
    return None


def run_worker(job: dict, timeout: float = 1800, log=None) -> dict:
    return run_child("lstmgen.bench.worker", job, timeout, log=log)


# -- one row's figures ----------------------------------------------------------------------------
def candidate(variant: dict, batch: int, steps: int, peak_rss_mb: float) -> dict:
    """One timed variant as tokens/s: the median and every run."""
    return {"variant": variant["variant"], "tokens_per_s": batch * steps / variant["seconds"],
            "tokens_per_s_runs": [batch * steps / s for s in variant["seconds_all"]],
            "step_ms": variant["seconds"] / steps * 1e3, "ttft_ms": variant["ttft_s"] * 1e3, "peak_rss_mb": peak_rss_mb}


def best_candidate(candidates: list[dict]) -> dict:
    """The fastest candidate by median tokens/s (the first of equals)."""
    return max(candidates, key=lambda c: c["tokens_per_s"])


def pick_variant(row: dict) -> dict:
    """Fill the row's figures from its fastest candidate; the JSON keeps every candidate."""
    best = best_candidate(row["candidates"])
    row.update({k: best[k] for k in ("variant", "tokens_per_s", "tokens_per_s_runs", "step_ms", "ttft_ms", "peak_rss_mb")})
    return row


def add_default_to_tuned(rows: list[dict]) -> None:
    """PyTorch tuned is the best of every PyTorch variant, the default row's own run included: never below it."""
    for tuned in rows:
        if tuned["backend"] != "torch-tuned" or tuned.get("tokens_per_s") is None:
            continue
        default = find_row(rows, "torch-default", tuned["model"], tuned["batch_size"])
        if default is not None and default.get("tokens_per_s") is not None:
            tuned["candidates"].append({**best_candidate(default["candidates"]),
                                        "variant": default["variant"] + " (the torch-default run)"})
            pick_variant(tuned)


def find_row(rows: list[dict], backend: str, model: str, batch: int) -> dict | None:
    return next((r for r in rows if r["backend"] == backend and r["model"] == model and r["batch_size"] == batch), None)


def spread(row: dict) -> None:
    """Min, max and relative spread of the row's repeats; `noisy` when the spread exceeds NOISY_SPREAD."""
    runs = row["tokens_per_s_runs"]
    row["tokens_per_s_min"], row["tokens_per_s_max"] = min(runs), max(runs)
    row["spread"] = (max(runs) - min(runs)) / row["tokens_per_s"]
    row["noisy"] = row["spread"] > NOISY_SPREAD


def against_limits(row: dict, spec: ModelSpec, limits: dict) -> None:
    """Achieved ops/s against the ceiling of the row's own precision, and step time over its floor."""
    precision = row["precision"]
    ops = row["tokens_per_s"] * step_flops(spec.vocab, spec.embed, spec.hidden, spec.layers)
    row["gops_per_s"] = ops / 1e9
    row["pct_of_ceiling"] = 100 * ops / limits["peak_ops_per_s"][precision]
    row["above_ceiling"] = row["pct_of_ceiling"] > 100
    row["step_over_floor"] = row["step_ms"] / 1e3 / limits["floor_s"][spec.name][precision]


def ratios(rows: list[dict]) -> None:
    for r in rows:
        for ref in ("torch-default", "torch-tuned"):
            other = find_row(rows, ref, r["model"], r["batch_size"])
            ok = other is not None and other.get("tokens_per_s") and r.get("tokens_per_s")
            r["ratio_vs_" + ref.replace("-", "_")] = r["tokens_per_s"] / other["tokens_per_s"] if ok else None


# -- the suite -----------------------------------------------------------------------------------
def run_suite(*, models: list[ModelSpec], backends: list[str], batch_sizes: list[int], steps: int, repeats: int,
              device: str, threads: int, compile_torch: bool, artifact: str | None = None,
              log=print) -> dict:
    has_torch = importlib.util.find_spec("torch") is not None
    load_at_start = os.getloadavg()
    left_out = [] if compile_torch or not has_torch or "torch-tuned" not in backends else [COMPILE_LEFT_OUT]
    for note in left_out:
        log(f"left out: {note}")
    differ = locked_versions()
    if differ:
        log("installed versions differ from constraints.txt (figures not comparable with bench/results): "
            + ", ".join(f"{k} {v[0]} (locked {v[1]})" for k, v in differ.items()))
    limits = ceiling_probe.measure([asdict(s) for s in models], threads)
    log_limits(limits, models, log)
    rows = []
    for spec in models:
        for backend in backends:
            rows += backend_rows(spec, backend, batch_sizes=batch_sizes, steps=steps, repeats=repeats, device=device,
                                 threads=threads, compile_torch=compile_torch, artifact=artifact,
                                 has_torch=has_torch, log=log)
    limits = ceiling_probe.best_of(limits, ceiling_probe.measure([asdict(s) for s in models], threads))
    log_limits(limits, models, log, "after the rows, best of both probes")
    add_default_to_tuned(rows)
    specs = {s.name: s for s in models}
    for r in rows:
        if r.get("tokens_per_s") is not None:
            spread(r)
            against_limits(r, specs[r["model"]], limits)
    ratios(rows)
    return {"schema": "lstmgen-bench/2", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {**machine(), "load_average_at_start": load_at_start},
            "settings": {"steps": steps, "repeats": repeats, "threads": threads, "device": device,
                         "sampling": "temperature 0.8, top-k 40, inside the timed loop",
                         "torch_compile": compile_torch, "left_out": left_out, "noisy_spread": NOISY_SPREAD,
                         "artifact": artifact},
            "ceilings": limits, "rows": rows}


def log_limits(limits: dict, models: list[ModelSpec], log, when: str = "before the rows") -> None:
    peaks = limits["peak_ops_per_s"]
    log(f"ceilings ({when}): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, int8 {peaks['int8'] / 1e9:.1f} Gop/s")
    log(blas_line(limits))
    for spec in models:
        f = limits["floor_s"][spec.name]
        log(f"{spec.name} ({spec.dims}): batch-1 floor fp32 {f['fp32'] * 1e6:.0f} us/step, int8 {f['int8'] * 1e6:.0f} us/step")


def backend_rows(spec: ModelSpec, backend: str, *, batch_sizes: list[int], steps: int, repeats: int, device: str,
                 threads: int, compile_torch: bool, artifact: str | None, has_torch: bool, log) -> list[dict]:
    base = {"backend": backend, "device": device, "model": spec.name, "model_dims": asdict(spec),
            "precision": "int8" if backend.endswith("int8") else "fp32"}
    skipped = lambda why: [{**base, "batch_size": b, "tokens_per_s": None, "skipped": why} for b in batch_sizes]  # noqa: E731
    if backend in TORCH_BACKENDS and not has_torch:
        log(f"{spec.name} {backend}: skipped: PyTorch is not installed (pip install 'lstmgen[train]')")
        return skipped("PyTorch is not installed")
    why_not = cuda_unavailable(backend) if device == "cuda" else None
    if why_not:
        log(f"{spec.name} {backend}: skipped: {why_not}")
        return skipped(why_not)
    job = {"backend": backend, "device": device, "spec": asdict(spec), "seed": 0, "batch_sizes": batch_sizes,
           "steps": steps, "repeats": repeats, "threads": threads, "compile": compile_torch}
    if artifact:
        if backend.startswith(ARTIFACT_BACKENDS):
            job["artifact"] = artifact  # the CLI keeps only the engine row of the artifact's precision
        else:
            job["onnx"] = str(Path(artifact) / "model.onnx")
    t0 = time.perf_counter()
    log(f"{spec.name} {backend}: batch {', '.join(map(str, batch_sizes))} ...")
    out = run_worker(job, log=lambda line: log(f"  {line}"))
    if "error" in out:
        log(f"{spec.name} {backend}: failed: {out['error']}")
        return skipped(out["error"])
    log(f"{spec.name} {backend}: done in {time.perf_counter() - t0:.0f} s")
    return [pick_variant({**base, "batch_size": r["batch_size"], "steps": steps, "repeats": repeats,
                          "candidates": [candidate(v, r["batch_size"], steps, out["peak_rss_mb"]) for v in r["variants"]]})
            for r in out["rows"]]
