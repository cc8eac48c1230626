"""generate.onnx against the Python engine: tokens/s at several batch sizes, and how often rows agree.

    python -m lstmgen.bench.graph_path --models names,names-int8 --batch-sizes 1,64,256
    python -m lstmgen.bench.graph_path --agreement --rows 1000

Both paths load the same artifact and make the same calls (settings, seeds); each timing is the
median of `--repeats` runs, alternating between the paths, after one warm-up run. The token count
is the same for both (every sampled token, <eos> included), taken from the graph's output lengths.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lstmgen.generator import Generator
from lstmgen.graph_runner import GraphGenerator

AGREEMENT_CASES = [("names", 28, None), ("names-int8", 28, None), ("shakespeare", 40, "ROMEO:"),
                   ("shakespeare-int8", 40, "ROMEO:"), ("moe", 30, "moe_szyslak:"), ("moe-int8", 30, "moe_szyslak:")]


def _median_seconds(fns, repeats: int) -> list[float]:
    """Median wall time of each function; runs alternate between them so that drifting load hits all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def speed(model: str, batch: int, max_tokens: int, repeats: int = 3, threads: int | None = None,
          min_tokens: int = 2048) -> dict:
    """tokens/s of generate.onnx and of Generator.generate for one model and batch size.

    Small batches of short records make few tokens per call, so each timed run makes calls with
    seeds 1, 2, ... until about `min_tokens` tokens are sampled; both paths make the same calls.
    """
    graph = GraphGenerator.load(model, threads)
    engine = graph.generator
    params, banned = engine.sampling(), engine.banned_ids()
    seeds, sampled = [], 0
    while sampled < min_tokens:
        seeds.append(len(seeds) + 1)
        _, lengths = graph.run_ids([], batch, max_tokens, seeds[-1], params, banned)
        sampled += int(lengths.sum() + (lengths < max_tokens).sum())  # <eos> is a sampled token too
    t_graph, t_engine = _median_seconds([lambda: [graph.generate(batch, max_tokens=max_tokens, seed=s) for s in seeds],
                                         lambda: [engine.generate(batch, max_tokens=max_tokens, seed=s) for s in seeds]],
                                        repeats)
    return {"model": model, "batch": batch, "tokens": sampled, "graph_tok_s": sampled / t_graph,
            "engine_tok_s": sampled / t_engine, "graph_over_engine": t_engine / t_graph}


def agreement(model: str, rows: int, max_tokens: int, prompt: str | None, seed: int = 2026, **settings) -> float:
    """Share of rows whose text is the same from generate.onnx and from the Python engine."""
    engine = Generator.load(model, device="cpu")
    graph = GraphGenerator(engine)
    a = engine.generate(rows, prompt, max_tokens=max_tokens, seed=seed, **settings)
    b = graph.generate(rows, prompt, max_tokens=max_tokens, seed=seed, **settings)
    return float(np.mean([x == y for x, y in zip(a, b)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.graph_path", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="names,names-int8", help="comma-separated models (default %(default)s)")
    p.add_argument("--batch-sizes", default="1,64,256", help="comma-separated batch sizes (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=28, help="tokens per row at most (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: engine's)")
    p.add_argument("--agreement", action="store_true", help="measure row agreement instead of speed (default off)")
    p.add_argument("--rows", type=int, default=1000, help="rows per agreement case (default %(default)s)")
    args = p.parse_args(argv)
    if args.agreement:
        for model, max_tokens, prompt in AGREEMENT_CASES:
            for settings in (dict(temperature=0.8), dict(temperature=1.0, top_k=10, top_p=0.9)):
                share = agreement(model, args.rows, max_tokens, prompt, **settings)
                print(f"{model:17s} {str(settings):42s} {share:7.2%} of {args.rows} rows agree", flush=True)
        return 0
    print(f"{'model':12s} {'batch':>5s} {'tokens':>7s} {'graph tok/s':>12s} {'engine tok/s':>13s} {'graph/engine':>13s}")
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            r = speed(model, batch, args.max_tokens, repeats=args.repeats, threads=args.threads)
            print(f"{model:12s} {batch:5d} {r['tokens']:7d} {r['graph_tok_s']:12.0f} {r['engine_tok_s']:13.0f}"
                  f" {r['graph_over_engine']:12.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
