"""`lstmgen bench`: parse flags, run lstmgen.bench.suite, print the table, write JSON and a chart."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from lstmgen.cli import OneLineParser
from lstmgen.errors import LstmgenError

from .charts import chart
from .models import SPECS, ModelSpec
from .report import baseline_table, compare, detail_table, summary_table
from .suite import BACKENDS, run_suite

DEFAULT_CHART = "lstmgen-bench.png"


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lstmgen bench", description="Tokens/s of the engine against PyTorch, and"
                                " how close each comes to this machine's limits.")
    p.add_argument("--quick", action="store_true", help="batch sizes 1 and 64, fewer steps, and no torch.compile"
                   " variant in PyTorch tuned (about 2 minutes; default: off)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here (default: not written)")
    p.add_argument("--chart", metavar="PATH", help="write the PNG chart here (default: beside --json, else"
                   f" ./{DEFAULT_CHART})")
    p.add_argument("--no-chart", action="store_true", help="write no chart (default: off)")
    p.add_argument("--model", help="bench this artifact folder instead of the standard random-weight models"
                   " (default: the standard models)")
    p.add_argument("--models", default=",".join(SPECS), help="standard models to run (default: %(default)s)")
    p.add_argument("--batch-sizes", help="comma-separated (default 1,8,64,256; quick 1,64)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="default: %(default)s")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both PyTorch and the engine run;"
                   " on a machine without CUDA the cuda rows say so and are skipped (default: %(default)s)")
    p.add_argument("--steps", type=int, help="tokens per row per timed run (default 64; quick 32)")
    p.add_argument("--repeats", type=int, help="timed runs per row; the median is reported (default 5; quick 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for PyTorch and the engine (default: %(default)s, this machine's cores)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the tuned PyTorch row (default: off)")
    p.add_argument("--detail", action="store_true", help="also print every figure of every row: spread, time to first"
                   " token, memory, ops/s against this machine's ceiling, step time over its floor (default: off)")
    p.add_argument("--baseline", metavar="OLD.json", help="also print each row's tokens/s over a saved run's (a --json"
                   " file); indicative only: another run, maybe another machine (default: none)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LstmgenError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 or v > 4096 for v in vals):
        raise LstmgenError(f"{flag} values must be in [1, 4096], got {text!r}")
    return vals


def read_baseline(path: str) -> dict:
    """A saved `lstmgen bench --json` run, checked enough to compare rows with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LstmgenError(f"--baseline {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LstmgenError(f"--baseline {path} is not JSON (give a file written by lstmgen bench --json)") from None
    if not isinstance(data, dict) or data.get("schema") != "lstmgen-bench/2" or not isinstance(data.get("rows"), list):
        raise LstmgenError(f"--baseline {path} is not a bench result (schema lstmgen-bench/2, written by lstmgen bench --json)")
    return data


def main(argv: Sequence[str]) -> int:
    rest = list(argv[1:])
    try:
        return _run(_parser().parse_args(rest))
    except LstmgenError as e:
        if "--debug" in rest:
            raise
        print(f"lstmgen: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes") if args.batch_sizes else ([1, 64] if args.quick else [1, 8, 64, 256])
    steps = (32 if args.quick else 64) if args.steps is None else args.steps  # 0 is refused, not a default
    repeats = (3 if args.quick else 5) if args.repeats is None else args.repeats
    for flag, value, low in (("--steps", steps, 2), ("--repeats", repeats, 1), ("--threads", args.threads, 1)):
        if value < low:
            raise LstmgenError(f"{flag} must be an integer >= {low}, got {value}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise LstmgenError(f"unknown backend(s) {', '.join(sorted(unknown))} (known: {', '.join(BACKENDS)})")
    if args.model:
        from lstmgen.generator import resolve_model
        from lstmgen.manifest import read_manifest

        folder = resolve_model(args.model)
        m = read_manifest(folder)
        d = m.dims
        models = [ModelSpec(m.name or folder.name, d.vocab_size, d.embed_dim, d.hidden_size, d.num_layers)]
        # the artifact's own precision only: its engine row and, when it has generate.onnx, its graph row
        backends = [b.rsplit("-", 1)[0] + "-" + m.precision if b.startswith(("engine", "graph")) else b for b in backends]
        if m.generate_sha256 is None:
            backends = [b for b in backends if not b.startswith("graph")]
        backends = list(dict.fromkeys(b for b in backends if m.precision == "fp32" or b.startswith(("engine", "graph"))))
        artifact = str(folder)
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        bad = [n for n in names if n not in SPECS]
        if bad:
            raise LstmgenError(f"unknown model(s) {', '.join(bad)} (known: {', '.join(SPECS)})")
        models = [SPECS[n] for n in names]
        artifact = None
    baseline = read_baseline(args.baseline) if args.baseline else None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = run_suite(models=models, backends=backends, batch_sizes=batch_sizes, steps=steps, repeats=repeats,
                       device=args.device, threads=args.threads, compile_torch=not (args.quick or args.no_compile),
                       artifact=artifact, log=log)
    print(summary_table(result))
    if args.detail:
        print("\n" + detail_table(result))
    else:
        print("--detail adds each row's spread, time to first token, memory and how close it comes to this machine's limits.")
    if baseline is not None:
        result["baseline"] = {"file": args.baseline, "created": baseline.get("created"), "machine": baseline["machine"],
                              "rows": compare(result, baseline), "note": "indicative only: another run"}
        print("\n" + baseline_table(result, baseline, args.baseline))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {path}")
    if not args.no_chart:
        chart_path = Path(args.chart) if args.chart else (Path(args.json).with_suffix(".png") if args.json else Path(DEFAULT_CHART))
        log(f"wrote {chart_path}" if chart(result, chart_path) else "no chart: matplotlib is not installed")
    return 0
