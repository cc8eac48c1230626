"""The bench's console tables: the summary a newcomer reads (tokens/s of every backend side by side),
the detail table (every figure of every row, `--detail`), and the comparison with a saved run
(`--baseline`). Each table ends with one line per column saying what it is.
"""

from __future__ import annotations

NOISY_MARK = "!"
ENGINE_VS_TORCH = "engine x torch"


def _find(rows: list[dict], backend: str, model: str, batch: int) -> dict | None:
    return next((r for r in rows if (r["backend"], r["model"], r["batch_size"]) == (backend, model, batch)), None)


def _tokens(row: dict | None) -> str:
    if row is None:
        return "-"
    if row.get("tokens_per_s") is None:
        return "skipped"
    return f"{row['tokens_per_s']:,.0f}{NOISY_MARK if row['noisy'] else ''}"


def blas_line(limits: dict) -> str:
    """Which BLAS kernel the ceiling probe ran, or how to get it named."""
    libs = [b for b in limits.get("blas", []) if b.get("internal_api")]
    if not libs:
        return ("BLAS kernel of the ceiling probe: not named (pip install 'lstmgen[bench]' adds threadpoolctl, which"
                " names it)")
    removed = ", ".join(f"{k}={v}" for k, v in limits.get("blas_env_removed", {}).items()) or "nothing"
    named = ", ".join(f"{b['internal_api']} {b.get('version') or ''} {b.get('architecture') or 'kernel unknown'}".replace("  ", " ")
                      for b in libs)
    return f"BLAS kernel of the ceiling probe: {named} (removed from its environment: {removed})"


def engine_vs_torch(rows: list[dict], model: str, batch: int) -> float | None:
    """engine-fp32 over torch-tuned (the same precision), or None when either did not run."""
    engine, torch = _find(rows, "engine-fp32", model, batch), _find(rows, "torch-tuned", model, batch)
    if not (engine and torch and engine.get("tokens_per_s") and torch.get("tokens_per_s")):
        return None
    return engine["tokens_per_s"] / torch["tokens_per_s"]


BACKEND_HELP = {
    "torch-default": "PyTorch as users write it (eager nn.LSTM, default settings)",
    "torch-tuned": "the best of every PyTorch variant for the row, the default one included (named under --detail)",
    "engine-fp32": "the Python engine: ONNX Runtime step + Numba sampler, fp32 weights",
    "engine-int8": "the same with int8 weights",
    "graph-fp32": "generate.onnx: the whole generation in one ONNX Runtime call (as JS, C#, C++ apps run it), fp32",
    "graph-int8": "the same with int8 weights",
}


def summary_table(result: dict) -> str:
    """model, batch, tokens/s of each backend side by side, and the engine's ratio to the best PyTorch."""
    rows, s = result["rows"], result["settings"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    keys = list(dict.fromkeys((r["model"], r["batch_size"]) for r in rows))
    widths = [max(len(b), 9) for b in backends]
    with_ratio = "engine-fp32" in backends and "torch-tuned" in backends
    head = f"{'model':12s} {'batch':>5s}  " + "  ".join(f"{b:>{w}s}" for b, w in zip(backends, widths))
    head += f"  {ENGINE_VS_TORCH:>14s}" if with_ratio else ""
    lines = [f"tokens/s ({result['machine'].get('cpu', '?')}, {s['threads']} threads, {s['device']})", head, "-" * len(head)]
    for model, batch in keys:
        cells = "  ".join(f"{_tokens(_find(rows, b, model, batch)):>{w}s}" for b, w in zip(backends, widths))
        line = f"{model:12s} {batch:>5d}  {cells}"
        if with_ratio:
            ratio = engine_vs_torch(rows, model, batch)
            noisy = any((r or {}).get("noisy") for r in (_find(rows, b, model, batch) for b in ("engine-fp32", "torch-tuned")))
            line += f"  {'-' if ratio is None else format(ratio, '.2f') + (NOISY_MARK if noisy else ''):>14s}"
        lines.append(line)
    skipped = dict.fromkeys((r["backend"], r["skipped"]) for r in rows if r.get("tokens_per_s") is None)
    lines += [f"{backend} skipped: {why}" for backend, why in skipped]
    what = f"the artifact {s['artifact']}" if s.get("artifact") else "the model (random weights of its size)"
    lines += ["", "Columns:", f"  model, batch: {what} and the rows generated at once"]
    lines += [f"  {b}: {BACKEND_HELP.get(b, b)}" for b in backends]
    if with_ratio:
        lines.append(f"  {ENGINE_VS_TORCH}: engine-fp32 tokens/s over torch-tuned's (same precision; above 1 the engine is faster;"
                     f" {NOISY_MARK} when either is)")
    lines.append(f"Each figure: tokens/s, the median of {s['repeats']} runs of {s['steps']} tokens per row ({s['sampling']});"
                 f" {NOISY_MARK} marks runs that spread over {100 * s['noisy_spread']:.0f}%: rerun those before reading a ratio.")
    return "\n".join(lines + load_line(result) + footer(result))


DETAIL_HELP = [
    ("tok/s, min, max", "median tokens/s of the repeats and the slowest and fastest of them"),
    ("spread", f"(max - min) / median; {NOISY_MARK} above the noisy threshold"),
    ("x default, x tuned", "tokens/s over torch-default's and torch-tuned's for the same model and batch"),
    ("TTFT ms", "time to the first token (graph rows: the whole call, which returns every token at once)"),
    ("Gop/s", "achieved operations/s: tokens/s x the multiply-adds x 2 of one step"),
    ("%ceil", "Gop/s over this machine's ceiling at the row's precision (see below; ^ marks a row above it)"),
    ("step/floor", "time per step over the batch-1 floor: one pass over the model's weights at the row's precision"),
    ("RSS MB", "peak resident memory of the row's process"),
    ("variant", "what ran (torch-tuned: the fastest PyTorch variant)"),
]


def detail_table(result: dict) -> str:
    """Every figure of every row, each column explained under the table."""
    head = (f"{'model':12s} {'batch':>5s} {'backend':14s} {'tok/s':>10s} {'min':>9s} {'max':>9s} {'spread':>7s}"
            f" {'x default':>9s} {'x tuned':>8s} {'TTFT ms':>8s} {'Gop/s':>7s} {'%ceil':>6s} {'step/floor':>10s}"
            f" {'RSS MB':>7s}  variant")
    lines = [head, "-" * len(head)]
    fmt = lambda v, width, f: f"{'-':>{width}}" if v is None else format(v, f"{width}{f}")  # noqa: E731
    for r in result["rows"]:
        if r.get("tokens_per_s") is None:
            lines.append(f"{r['model']:12s} {r['batch_size']:>5d} {r['backend']:14s} skipped: {r.get('skipped')}")
            continue
        mark = NOISY_MARK if r["noisy"] else " "
        lines.append(f"{r['model']:12s} {r['batch_size']:>5d} {r['backend']:14s} {r['tokens_per_s']:>10,.0f}"
                     f" {r['tokens_per_s_min']:>9,.0f} {r['tokens_per_s_max']:>9,.0f} {100 * r['spread']:>5.0f}%{mark}"
                     f" {fmt(r['ratio_vs_torch_default'], 9, '.1f')} {fmt(r['ratio_vs_torch_tuned'], 8, '.2f')}"
                     f" {r['ttft_ms']:>8.2f} {r['gops_per_s']:>7.1f} {r['pct_of_ceiling']:>5.1f}{'^' if r['above_ceiling'] else ' '}"
                     f" {r['step_over_floor']:>10.2f} {r['peak_rss_mb']:>7.0f}  {r['variant']}")
    lim = result["ceilings"]
    lines += ["", "Columns:"] + [f"  {name}: {text}" for name, text in DETAIL_HELP]
    lines.append(f"Ceilings: fp32 {lim['peak_ops_per_s']['fp32'] / 1e9:.1f} GFLOP/s (the best float32 matrix product of"
                 f" NumPy, ONNX Runtime and PyTorch), int8 {lim['peak_ops_per_s']['int8'] / 1e9:.1f} Gop/s (ONNX Runtime"
                 " MatMulInteger); floors: bench/README.md.")
    floors = lim.get("floor_s", {})
    if floors:  # step/floor's denominators, so that the column can be checked from this table alone
        lines.append("Floors (one batch-1 pass over the weights, us): " + "; ".join(
            f"{model} " + ", ".join(f"{precision} {seconds * 1e6:.1f}" for precision, seconds in per.items())
            for model, per in floors.items()))
    return "\n".join(lines + footer(result))


BUSY_LOAD = 0.5  # a 1-minute load average above this at the start: other processes shared the cores


def load_line(result: dict) -> list[str]:
    """A warning when the machine was busy as the run began (its figures then swing), else nothing."""
    load = (result["machine"].get("load_average_at_start") or [0.0])[0]
    if load <= BUSY_LOAD:
        return []
    return [f"WARNING: load average {load:.1f} when the run began (an idle machine reads near 0): other processes"
            " shared the cores, so these figures are low and uneven; compare only ratios measured side by side,"
            " or rerun on an idle machine"]


def footer(result: dict) -> list[str]:
    """The lines every table ends with: what was left out, the BLAS kernel, the GPU."""
    out = [f"left out: {n}" for n in result["settings"]["left_out"]]
    out.append(blas_line(result["ceilings"]))
    gpu = result["machine"].get("gpu")
    out.append(f"GPU: {gpu}" if gpu else "GPU: none on this machine, so no CUDA rows (--device cuda runs them where one is)")
    return out


def compare(result: dict, baseline: dict) -> list[dict]:
    """Each row measured in both runs, with its tokens/s now, then, and their ratio."""
    out = []
    for r in result["rows"]:
        old = next((b for b in baseline["rows"] if (b["backend"], b["model"], b["batch_size"], b.get("device", "cpu"))
                    == (r["backend"], r["model"], r["batch_size"], r["device"])), None)
        now, then = r.get("tokens_per_s"), old.get("tokens_per_s") if old else None
        out.append({"model": r["model"], "batch_size": r["batch_size"], "backend": r["backend"], "tokens_per_s": now,
                    "baseline_tokens_per_s": then, "ratio": now / then if now and then else None,
                    "noisy": bool(r.get("noisy") or (old or {}).get("noisy"))})
    return out


def baseline_table(result: dict, baseline: dict, path: str) -> str:
    """This run's tokens/s against a saved run's, row by row: indicative only."""
    def describe(run: dict) -> str:
        m = run["machine"]
        return (f"{run.get('created', '?')}, {m.get('cpu', '?')}, onnxruntime {m.get('onnxruntime', '?')},"
                f" numpy {m.get('numpy', '?')}, torch {m.get('torch', 'absent')}")

    head = f"{'model':12s} {'batch':>5s} {'backend':14s} {'tok/s now':>11s} {'baseline':>11s} {'now/baseline':>13s}"
    lines = [f"Against the saved run {path}: INDICATIVE ONLY (another run, maybe another machine, load and versions)",
             f"  now:      {describe(result)}", f"  baseline: {describe(baseline)}", head, "-" * len(head)]
    num = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    lines[3:3] = settings_differ(result, baseline)
    for c in compare(result, baseline):
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}{NOISY_MARK if c['noisy'] else ''}"
        lines.append(f"{c['model']:12s} {c['batch_size']:>5d} {c['backend']:14s} {num(c['tokens_per_s']):>11s}"
                     f" {num(c['baseline_tokens_per_s']):>11s} {ratio:>13s}")
    lines.append("now/baseline: this run's tokens/s over the saved run's for the same model, batch and backend"
                 f" ('-': one of them did not run it; {NOISY_MARK}: either run of the row was noisy)")
    return "\n".join(lines)


def settings_differ(result: dict, baseline: dict) -> list[str]:
    """One line naming the settings the two runs did not share (steps, repeats, threads, torch.compile)."""
    now, then = result["settings"], baseline.get("settings", {})
    keys = ("steps", "repeats", "threads", "device", "torch_compile")
    diff = [f"{k} {then.get(k, '?')} -> {now.get(k)}" for k in keys if then.get(k) != now.get(k)]
    return [f"  settings differ (baseline -> now): {', '.join(diff)}"] if diff else []
