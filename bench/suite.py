"""The bench suite: ceilings of this machine, one worker process per (model, backend), then ratios,
a table, JSON and a chart. Called by `lstmgen bench` (bench/cli.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lstmgen.trainer.graph import step_flops
from lstmgen.trainer.machine import cpu_name

from .models import ModelSpec, random_weights

BACKENDS = ["torch-default", "torch-tuned", "engine-fp32", "engine-int8"]
TORCH_BACKENDS = {"torch-default", "torch-tuned"}


def machine() -> dict:
    import onnxruntime

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers()}
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_flops(n: int = 2048) -> float:
    """FLOP/s of a large float32 matrix product through NumPy's BLAS: the compute ceiling."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    return 2 * n**3 / _median_time(lambda: a @ b, 5)


def matvec_floor(spec: ModelSpec) -> float:
    """Seconds to stream the model's weights once through matrix-vector products: the batch-1 floor."""
    sd = random_weights(spec)
    mats = [np.concatenate([sd[f"lstm.weight_ih_l{i}"], sd[f"lstm.weight_hh_l{i}"]], 1) for i in range(spec.layers)]
    mats.append(sd["head.weight"])
    vecs = [np.ones(m.shape[1], np.float32) for m in mats]

    def once():
        for m, v in zip(mats, vecs):
            m @ v

    return _median_time(once, 200)


def run_worker(job: dict, timeout: float = 1800) -> dict:
    r = subprocess.run([sys.executable, "-m", "lstmgen.bench.worker", json.dumps(job)], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_suite(*, models: list[ModelSpec], backends: list[str], batch_sizes: list[int], steps: int, repeats: int,
              device: str, threads: int, compile_torch: bool, artifact: str | None = None,
              log=print) -> dict:
    has_torch = importlib.util.find_spec("torch") is not None
    ceilings = {"peak_flops": peak_flops(), "matvec_floor_s": {}}
    log(f"ceilings: {ceilings['peak_flops'] / 1e9:.1f} GFLOP/s (float32 matrix product, NumPy BLAS)")
    rows = []
    for spec in models:
        floor = matvec_floor(spec)
        ceilings["matvec_floor_s"][spec.name] = floor
        log(f"{spec.name} ({spec.dims}): batch-1 matrix-vector floor {floor * 1e6:.0f} us/step")
        for backend in backends:
            base = {"backend": backend, "device": device, "model": spec.name, "model_dims": asdict(spec),
                    "precision": "int8" if backend == "engine-int8" else "fp32"}
            if backend in TORCH_BACKENDS and not has_torch:
                rows += [{**base, "batch_size": b, "tokens_per_s": None, "skipped": "PyTorch is not installed"}
                         for b in batch_sizes]
                log(f"  {backend:14s} skipped: PyTorch is not installed (pip install 'lstmgen[train]')")
                continue
            job = {"backend": backend, "device": device, "spec": asdict(spec), "seed": 0, "batch_sizes": batch_sizes,
                   "steps": steps, "repeats": repeats, "threads": threads, "compile": compile_torch}
            if artifact:
                if backend.startswith("engine"):
                    job["artifact"] = artifact  # the CLI keeps only the engine row of the artifact's precision
                else:
                    job["onnx"] = str(Path(artifact) / "model.onnx")
            t0 = time.perf_counter()
            out = run_worker(job)
            if "error" in out:
                rows += [{**base, "batch_size": b, "tokens_per_s": None, "skipped": out["error"]} for b in batch_sizes]
                log(f"  {backend:14s} failed: {out['error']}")
                continue
            for r in out["rows"]:
                B = r["batch_size"]
                tps = B * steps / r["seconds"]
                rows.append({**base, "batch_size": B, "steps": steps, "repeats": repeats, "variant": r["variant"],
                             "tokens_per_s": tps,
                             "tokens_per_s_runs": [B * steps / s for s in r["seconds_all"]],
                             "step_ms": r["seconds"] / steps * 1e3, "ttft_ms": r["ttft_s"] * 1e3,
                             "peak_rss_mb": out["peak_rss_mb"],
                             "gflops": tps * step_flops(spec.vocab, spec.embed, spec.hidden, spec.layers) / 1e9,
                             "step_over_floor": r["seconds"] / steps / floor})
            log(f"  {backend:14s} done in {time.perf_counter() - t0:.0f} s")
    for r in rows:
        r["pct_of_peak_flops"] = None if r.get("gflops") is None else 100 * r["gflops"] * 1e9 / ceilings["peak_flops"]
        for ref in ("torch-default", "torch-tuned"):
            other = next((o for o in rows if o["backend"] == ref and o["model"] == r["model"]
                          and o["batch_size"] == r["batch_size"] and o.get("tokens_per_s")), None)
            key = "ratio_vs_" + ref.replace("-", "_")
            r[key] = r["tokens_per_s"] / other["tokens_per_s"] if other and r.get("tokens_per_s") else None
    return {"schema": "lstmgen-bench/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "settings": {"steps": steps, "repeats": repeats, "threads": threads, "device": device,
                         "sampling": "temperature 0.8, top-k 40, inside the timed loop",
                         "torch_compile": compile_torch},
            "ceilings": ceilings, "rows": rows}


def table(result: dict) -> str:
    head = f"{'model':12s} {'batch':>5s} {'backend':14s} {'tok/s':>10s} {'x default':>9s} {'x tuned':>8s}" \
           f" {'TTFT ms':>8s} {'GFLOP/s':>8s} {'%peak':>6s} {'step/floor':>10s} {'RSS MB':>7s}  variant"
    lines = [head, "-" * len(head)]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in result["rows"]:
        if r.get("tokens_per_s") is None:
            lines.append(f"{r['model']:12s} {r['batch_size']:>5d} {r['backend']:14s} skipped: {r.get('skipped')}")
            continue
        lines.append(f"{r['model']:12s} {r['batch_size']:>5d} {r['backend']:14s} {r['tokens_per_s']:>10,.0f}"
                     f" {fmt(r['ratio_vs_torch_default'], '9.1f')} {fmt(r['ratio_vs_torch_tuned'], '8.2f')}"
                     f" {r['ttft_ms']:>8.2f} {r['gflops']:>8.2f} {r['pct_of_peak_flops']:>6.1f}"
                     f" {r['step_over_floor']:>10.2f} {r['peak_rss_mb']:>7.0f}  {r['variant']}")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=100, squeeze=False)
    for ax, model in zip(axes[0], models):
        for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
            pts = [(r["batch_size"], r["tokens_per_s"]) for r in result["rows"]
                   if r["model"] == model and r["backend"] == backend and r.get("tokens_per_s")]
            if pts:
                ax.plot(*zip(*pts), "o-", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("tokens / s")
    axes[0][-1].legend(fontsize=8)
    cpu = result["machine"].get("cpu", "")
    fig.suptitle(f"lstmgen bench, {result['settings']['device']}: {cpu}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
