"""What a pattern costs: tokens/s with and without one, side by side, and how long compiling takes.

    python -m lstmgen.bench.patterns [--model names] [--repeats 15] [--json FILE]

Speed: the same requests with and without a 50-state pattern, `[a-z]{0,49}`, which allows every letter
and the end of a record for 49 characters: names end long before that, so the two write the same text
(checked) with the same rows ending at the same steps, and the difference is the pattern's own work
(the mask before sampling, the state update after). The two are interleaved, run after run, and the
medians, the median ratio of back-to-back pairs and the best runs compared, the order swapped every run. Each run is several requests in a
row (one is too short to time). Compiling: a fresh
compile of typical patterns (the cache emptied), once with the vocabulary's token texts already
known (a pattern's own cost) and once from nothing (the first pattern of a model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

FIFTY_STATES = "[a-z]{0,49}"
MAX_TOKENS = 28  # the names model's own
TYPICAL = {"names": ["[A-Z][a-z]+(dam|burg)", "[a-z]{2,6}(na|ne|ly)", "(ja|ka|ma)[a-z]{1,6}", FIFTY_STATES],
           "moe": ["( [a-z']{1,12}){2,8}[.!?]", " (yeah|no|oh)(, [a-z']{1,9}){1,4}!"]}


def _run(gen, batch: int, requests: int, regex: str | None) -> tuple[float, int, list[str]]:
    """Seconds for `requests` requests of `batch` rows, the tokens they wrote, and the last one's texts."""
    from lstmgen.decoding import DecodeLoop

    jobs = [gen.jobs(num=batch, max_tokens=MAX_TOKENS, seed=100 + i, regex=regex, block_rows=batch)[0]
            for i in range(requests)]
    t0 = time.perf_counter()
    for job in jobs:
        loop = DecodeLoop(gen.backend, gen.tokenizer)
        loop.add(job)
        while loop.blocks:
            loop.step()
    seconds = time.perf_counter() - t0
    tokens = sum(s.completion_tokens for job in jobs for s in job.samples())
    return seconds, tokens, jobs[-1].results()


def speed(gen, batch: int, repeats: int) -> dict:
    requests = 60 if batch == 1 else 12
    _run(gen, batch, 2, None)  # warm-up: Numba, ONNX Runtime's buffers, the compiled pattern
    _run(gen, batch, 2, FIFTY_STATES)
    rates: dict = {None: [], FIFTY_STATES: []}
    texts: dict = {}
    for k in range(repeats):  # interleaved, the order swapped every run (ABBA): a busy moment hits both alike
        for regex in (None, FIFTY_STATES) if k % 2 == 0 else (FIFTY_STATES, None):
            seconds, tokens, texts[regex] = _run(gen, batch, requests, regex)
            rates[regex].append(tokens / seconds)
        assert texts[None] == texts[FIFTY_STATES], "the 50-state pattern should change nothing"
    a, b = statistics.median(rates[None]), statistics.median(rates[FIFTY_STATES])
    best_a, best_b = max(rates[None]), max(rates[FIFTY_STATES])
    # Each pair ran back to back: the median of the pairs' ratios is the least disturbed by other processes.
    paired = statistics.median(p / q for q, p in zip(rates[None], rates[FIFTY_STATES]))
    return {"batch": batch, "tokens_per_s_plain": round(a), "tokens_per_s_pattern": round(b),
            "pattern_cost": round(1 - b / a, 4), "pattern_cost_best": round(1 - best_b / best_a, 4),
            "pattern_cost_paired": round(1 - paired, 4),
            "states": gen.pattern(regex=FIFTY_STATES).states, "tokens_per_run": tokens,
            "runs": {"plain": [round(x) for x in rates[None]], "pattern": [round(x) for x in rates[FIFTY_STATES]]}}


def compile_times(gen, regexes: list[str], repeats: int = 20) -> list[dict]:
    from lstmgen import patterns

    gen.pattern(regex=regexes[0])  # imports interegular
    rows = []
    for regex in regexes:
        warm, cold = [], []
        for _ in range(repeats):
            patterns._cache.clear()
            t0 = time.perf_counter()
            automaton = gen.pattern(regex=regex)
            warm.append(time.perf_counter() - t0)
        for _ in range(max(3, repeats // 5)):
            patterns._cache.clear()
            patterns._texts_cache.clear()
            t0 = time.perf_counter()
            gen.pattern(regex=regex)
            cold.append(time.perf_counter() - t0)
        rows.append({"regex": regex, "states": automaton.states, "compile_ms": round(statistics.median(warm) * 1e3, 2),
                     "first_for_model_ms": round(statistics.median(cold) * 1e3, 2)})
    return rows


def main(argv=None) -> int:
    from lstmgen import Generator

    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.patterns", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="names", help="model for the speed figures (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs of each variant (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the figures to this file (default: none)")
    args = p.parse_args(argv)
    gen = Generator.load(args.model, device="cpu", threads=1)
    out = {"model": args.model, "speed": [speed(gen, b, args.repeats) for b in (1, 64)],
           "compile": {m: compile_times(Generator.load(m, device="cpu"), TYPICAL[m]) for m in TYPICAL}}
    for row in out["speed"]:
        print(f"batch {row['batch']:>3}: {row['tokens_per_s_plain']:>8} tokens/s plain, {row['tokens_per_s_pattern']:>8}"
              f" with a {row['states']}-state pattern (medians): costs {row['pattern_cost']:.1%}"
              f" (paired runs: {row['pattern_cost_paired']:.1%}, best runs: {row['pattern_cost_best']:.1%})")
    for model, rows in out["compile"].items():
        for r in rows:
            print(f"compile {model:<6} {r['regex']!r:<40} {r['states']:>4} states {r['compile_ms']:>7.2f} ms"
                  f" (first pattern of the model: {r['first_for_model_ms']:.1f} ms)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
