"""Where a batch-1 engine token goes, and what removing fixed cost buys, measured side by side.

`python -m lstmgen.bench.breakdown --models char-medium` builds the bench's random-weight artifact
(fp32 and int8) and times, per token at batch 1:

- parts: the whole decode loop (`lstmgen.decoding.DecodeLoop`, text included), one backend step, the ONNX
  Runtime run alone (IOBinding, buffers bound once), the sampler alone (`RowSampler.sample`), the
  decode loop around a no-op backend (its Python and sampler only), an ONNX Runtime run of a one-node
  graph (what any call costs), and the same model's graph on a tiny model (what its nodes cost, compute
  next to nothing);
- the account: the decode loop split into the floor and what each part adds above it, so that every
  microsecond is named (see `account`);
- before and after: the decode loop and the ORT run of the same weights as a format-1 artifact (stacked
  state, Slice/Concat around the layers: what lstmgen shipped before format 2);
- candidates for the fixed cost, the whole decode loop and the ORT run alone: one intra-op thread, no
  spinning, dynamic blocks in the thread pool, other graph optimization levels, no memory pattern;
- parts and threads by batch size: the parts at batch 8, 64, 256, and the ORT run with 1 and with the
  machine's threads;
- the floors of bench/ceilings.py, measured in this run.

Candidates run interleaved, round after round, so a busy machine slows them alike; each figure is
the best round (other processes only ever add time), with the median over rounds beside it. Writes breakdown-<model>.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lstmgen.manifest import STATE_PER_LAYER, STATE_STACKED

from . import ceilings
from .models import SPECS, ModelSpec, random_weights, write_artifact

PROBE_BATCHES = [1, 8, 64, 256]
# Pause before each timed block: the previous session's intra-op threads spin for a while after its
# last run, and on a 2-core machine they would steal the next block's cores.
SETTLE_S = 0.05


# -- sessions and their ping-pong bindings --------------------------------------------------------
def session(path: Path, threads: int, *, spinning: bool = True, level: str = "ORT_ENABLE_ALL", mem_pattern: bool = True,
            dynamic_blocks: int | None = None):
    """An ONNX Runtime session with the engine's options (lstmgen.backend.session_options) unless told otherwise."""
    import onnxruntime as ort

    from lstmgen.backend import session_options

    opts = session_options(threads, spinning)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.enable_mem_pattern = mem_pattern
    if dynamic_blocks:  # parallel loops cut into shrinking blocks that idle threads take: no thread waits on a late one
        opts.add_session_config_entry("session.dynamic_block_base", str(dynamic_blocks))
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def bound_step(sess, batch: int, spec: ModelSpec):
    """A function running one step at `batch` through IOBinding, the state ping-ponging between two buffer sets.

    Works for both graph shapes: it binds whatever inputs and outputs the graph declares, feeding each
    state output back into the input of the same name with "1" for "0" (h1 -> h0, h1_0 -> h0_0).
    """
    ins = {i.name: i for i in sess.get_inputs()}
    outs = [o.name for o in sess.get_outputs()]
    tokens = np.zeros((batch, 1), np.int64)
    states = [{n: np.zeros([batch if d == "batch" else d for d in ins[n].shape], np.float32) for n in ins if n != "tokens"}
              for _ in range(2)]
    logits_out = next(o for o in sess.get_outputs() if o.name == "logits")
    logits = np.empty([batch, 1, spec.vocab] if len(logits_out.shape) == 3 else [batch, spec.vocab], np.float32)
    bindings = []
    for k in range(2):
        b = sess.io_binding()
        b.bind_cpu_input("tokens", tokens)
        for n, arr in states[k].items():
            b.bind_cpu_input(n, arr)
        for n in outs:
            arr = logits if n == "logits" else states[1 - k][n.replace("1", "0", 1)]
            b.bind_output(n, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        bindings.append(b)
    flip = [0]

    def step():
        sess.run_with_iobinding(bindings[flip[0]])
        flip[0] = 1 - flip[0]

    step.buffers = (tokens, states, logits)  # ONNX Runtime writes into them through raw pointers: keep them alive
    return step


# -- timing ---------------------------------------------------------------------------------------
def per_token(fn, tokens: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per call of fn over `tokens` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        fn()
    return (time.perf_counter() - w0) / tokens, (time.process_time() - c0) / tokens


def interleaved(fns: dict, tokens: int, rounds: int) -> dict:
    """Per-token microseconds of each fn, all fns timed in every round: wall time (best round, median, every
    round) and process CPU time (best round; with one thread it barely moves on a busy machine)."""
    for fn in fns.values():
        per_token(fn, 10)  # warm-up: first runs allocate
    runs = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            runs[name].append(per_token(fn, tokens))
    return {name: {"best_us": min(w for w, _ in r) * 1e6, "median_us": statistics.median(w for w, _ in r) * 1e6,
                   "runs_us": [w * 1e6 for w, _ in r], "cpu_best_us": min(c for _, c in r) * 1e6}
            for name, r in runs.items()}


def loop_fns(gen, batch: int, spec: ModelSpec) -> dict:
    """The engine's own path at `batch`: decode loop, backend step, ORT run, sampler (public API only)."""
    from lstmgen.sampling import RowSampler, SamplingParams

    params = SamplingParams(temperature=0.8, top_k=min(40, spec.vocab))
    start = list(gen.manifest.start_ids)
    backend = gen.backend
    logits, state = backend.prefill(np.asarray([start], np.int64))
    logits = logits[:, -1, :]  # prefill gives every position's logits; the next token's are the last
    held = {"state": backend.expand(state, batch)}
    tokens = np.zeros(batch, np.int64)

    def step():
        _, held["state"] = backend.step(tokens, held["state"])

    sampler = RowSampler(params, 1234, range(batch), start)
    active = np.arange(batch)
    saved = np.repeat(logits, batch, axis=0)

    def sample():
        sampler.sample(saved.copy(), active)

    def copy_only():
        saved.copy()

    return {"decode loop": loop_stepper(gen, backend, batch, spec), "backend step": step,
            "ORT run (IOBinding)": bound_step(backend.session, batch, spec),
            "sampler (+ logits copy)": sample, "logits copy": copy_only,
            "decode loop, no-op backend": loop_stepper(gen, NoOpBackend(np.repeat(logits, batch, axis=0)), batch, spec)}


def loop_stepper(gen, backend, batch: int, spec: ModelSpec):
    """One call = one step of the engine's decode loop (lstmgen.decoding) over `backend`, rows and
    text included as in Generator.generate; a new job joins when the last one has ended."""
    from lstmgen.decoding import DecodeLoop

    loop = DecodeLoop(backend, gen.tokenizer)

    def advance():
        if not loop.blocks:
            [job] = gen.jobs(num=batch, max_tokens=100_000 // batch, temperature=0.8, top_k=min(40, spec.vocab),
                             seed=1234, allow_unk=True, block_rows=batch)
            loop.add(job)
        loop.step()

    return advance


class NoOpBackend:
    """A backend whose step returns fixed logits at once: the decode loop around it costs its Python and its sampler."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def prefill(self, ids):
        return np.repeat(self.logits[:1, None, :], ids.shape[1], axis=1), None

    def expand(self, state, n: int):
        return state

    def select(self, state, keep):
        return state

    def join(self, state, other):
        return state

    def step(self, tokens, state):
        return self.logits[: len(tokens)], state


def empty_run(threads: int):
    """One IOBinding run of a one-node graph (Identity of a float): what any ONNX Runtime call costs."""
    from onnx import TensorProto, helper

    sess = ceilings.ort_session([helper.make_node("Identity", ["x"], ["y"])],
                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [], threads)
    x, y = np.zeros(1, np.float32), np.zeros(1, np.float32)
    b = sess.io_binding()
    b.bind_cpu_input("x", x)
    b.bind_output("y", "cpu", 0, np.float32, [1], y.ctypes.data)
    run = lambda: sess.run_with_iobinding(b)  # noqa: E731
    run.buffers = (x, y)
    return run


TINY = ModelSpec("tiny", 65, 8, 8, 2)  # compute next to nothing: what remains is each graph shape's fixed cost


def tiny_run(tmp: Path, precision: str, threads: int, state: str = STATE_PER_LAYER):
    """One IOBinding run of the engine's graph (format 2, or `state`) on the tiny model."""
    folder = tmp / f"tiny-{precision}-{state}"
    if not folder.exists():
        write_artifact(folder, TINY, random_weights(TINY), int8=precision == "int8", state=state)
    return bound_step(session(folder / "model.onnx", threads), 1, TINY)


def graph_fixed_cost(tmp: Path, tokens: int, rounds: int) -> dict:
    """The ORT run of both formats' graphs on a tiny model, one thread, fp32 and int8: per-node overhead alone."""
    return {precision: interleaved({"format 2 graph (shipped)": tiny_run(tmp, precision, 1),
                                    "format 1 graph (before)": tiny_run(tmp, precision, 1, STATE_STACKED),
                                    "one-node graph": empty_run(1)}, tokens, rounds)
            for precision in ("fp32", "int8")}


def loop_candidates(gen, before, threads: int, spec: ModelSpec) -> dict:
    """The whole batch-1 decode loop (what a user's token costs) over the engine's backend and the candidates:
    the same weights as a format-1 artifact (`before`), one intra-op thread, no spinning."""
    from lstmgen.backend import OrtBackend

    m = gen.manifest
    backends = {f"engine ({threads} threads)": gen.backend, "format-1 artifact (before)": before.backend,
                "1 intra-op thread": OrtBackend(gen.folder, m, "cpu", 1),
                "no spinning": OrtBackend(gen.folder, m, "cpu", threads, spinning=False)}
    return {name: loop_stepper(gen, backend, 1, spec) for name, backend in backends.items()}


def ort_candidates(shipped: Path, before: Path, threads: int, spec: ModelSpec) -> dict:
    """The ORT run alone at batch 1 with the engine's options and with each candidate's."""
    sessions = {f"engine options ({threads} threads)": session(shipped, threads),
                "format-1 graph (before)": session(before, threads),
                "1 intra-op thread": session(shipped, 1),
                "no spinning": session(shipped, threads, spinning=False),
                "dynamic blocks (base 4)": session(shipped, threads, dynamic_blocks=4),
                "graph optimization: extended": session(shipped, threads, level="ORT_ENABLE_EXTENDED"),
                "graph optimization: basic": session(shipped, threads, level="ORT_ENABLE_BASIC"),
                "no memory pattern": session(shipped, threads, mem_pattern=False)}
    return {name: bound_step(s, 1, spec) for name, s in sessions.items()}


def measure_model(spec: ModelSpec, threads: int, tokens: int, rounds: int, tmp: Path, log) -> dict:
    from lstmgen.generator import Generator

    sd = random_weights(spec)
    out = {"model": asdict(spec), "threads": threads, "tokens_per_round": tokens, "rounds": rounds}
    floors = ceilings.floor_probes(asdict(spec), threads)
    out["graph_fixed_cost"] = graph_fixed_cost(tmp, tokens * 10, rounds)
    for precision in ("fp32", "int8"):
        log(f"{spec.name} {precision}: parts, before and after, candidates")
        int8 = precision == "int8"
        art = write_artifact(tmp / f"{spec.name}-{precision}", spec, sd, int8=int8)
        old = write_artifact(tmp / f"{spec.name}-{precision}-format1", spec, sd, int8=int8, state=STATE_STACKED)
        gen, before = (Generator.load(folder, device="cpu", threads=threads) for folder in (art, old))
        parts = {**loop_fns(gen, 1, spec), "ORT run of a one-node graph": empty_run(threads),
                 "ORT run of the graph on a tiny model": tiny_run(tmp, precision, threads)}
        out[precision] = {"parts": interleaved(parts, tokens, rounds)}
        log(f"{spec.name} {precision}: parts at batch {', '.join(map(str, PROBE_BATCHES[1:]))}")
        out[precision]["parts_by_batch"] = {str(b): interleaved(loop_fns(gen, b, spec), max(4, tokens // b), rounds)
                                            for b in PROBE_BATCHES[1:]}
        out[precision]["loop_candidates"] = interleaved(loop_candidates(gen, before, threads, spec), tokens, rounds)
        out[precision]["candidates"] = interleaved(ort_candidates(art / "model.onnx", old / "model.onnx", threads, spec),
                                                   tokens, rounds)
        log(f"{spec.name} {precision}: threads by batch size")
        out[precision]["threads_by_batch"] = threads_by_batch(art / "model.onnx", spec, threads, rounds)
    # The floors probed before and after everything else: the lower of the two (as the bench does).
    after = ceilings.floor_probes(asdict(spec), threads)
    out["floor_us"] = {p: min(min(v.values()), min(after[p].values())) * 1e6 for p, v in floors.items()}
    for precision in ("fp32", "int8"):
        out[precision]["account"] = account(out[precision]["parts"], out["floor_us"][precision])
    return out


def account(parts: dict, floor: float) -> list[list]:
    """The batch-1 decode loop as the floor plus what each part adds above it (best rounds, microseconds); the
    terms sum to the decode loop exactly, so every microsecond is named. A negative term is noise."""
    best = {k: v["best_us"] for k, v in parts.items()}
    run, step, loop = best["ORT run (IOBinding)"], best["backend step"], best["decode loop"]
    tiny, call = best["ORT run of the graph on a tiny model"], best["ORT run of a one-node graph"]
    sampler = best["sampler (+ logits copy)"] - best["logits copy"]
    no_op = best["decode loop, no-op backend"]
    return [["floor: one pass over the weights (bench/ceilings.py)", floor],
            ["ORT kernels above the floor (run - floor - tiny-model run)", run - floor - tiny],
            ["ORT per-node cost of the graph (tiny-model run - one-node run)", tiny - call],
            ["ORT call (a one-node graph's run)", call],
            ["binding bookkeeping (backend step - ORT run)", step - run],
            ["sampler (Numba)", sampler],
            ["decode loop's Python (no-op-backend loop - sampler)", no_op - sampler],
            ["alternation: the parts run in turn, not each in a tight loop (loop - step - no-op loop)", loop - step - no_op],
            ["= decode loop", loop]]


def threads_by_batch(path: Path, spec: ModelSpec, threads: int, rounds: int) -> dict:
    """Per-step microseconds of the engine's graph at each probe batch size, 1 thread against `threads`."""
    out = {}
    for batch in PROBE_BATCHES:
        fns = {f"{n} threads": bound_step(session(path, n), batch, spec) for n in sorted({1, threads})}
        out[str(batch)] = interleaved(fns, max(8, 400 // batch), rounds)
    return out


# -- report ---------------------------------------------------------------------------------------
def report(result: dict) -> str:
    lines = []
    for m in result["models"]:
        name, floor = m["model"]["name"], m["floor_us"]
        lines += [f"== {name} ({m['threads']} threads): best of {m['rounds']} interleaved rounds, median in brackets,"
                  " then the best round's process CPU time; per token at batch 1, per step at larger batches"]
        for precision in ("fp32", "int8"):
            f, r = floor[precision], m[precision]
            lines.append(f"-- {precision}: floor {f:.1f} us (one batch-1 pass over the {precision} weights)")
            lines.append("   where a batch-1 token goes (best rounds):")
            lines += [f"     {label:84s} {us:9.1f} us  {us / f:5.2f}x floor" for label, us in r["account"]]
            lines += section("parts at batch 1", r["parts"], f) + derived(r["parts"])
            lines += section("before (format 1) and after, and candidates: the whole decode loop at batch 1",
                             r["loop_candidates"], f)
            lines += section("before and after, and candidates: the ORT run alone at batch 1", r["candidates"], f)
            lines += section(f"fixed cost of each format's graph: ORT run of a {TINY.dims} model, 1 thread",
                             m["graph_fixed_cost"][precision], None)
            for batch, parts in r["parts_by_batch"].items():
                lines += section(f"parts at batch {batch}", parts, None) + derived(parts)
            lines.append("   threads by batch size, ORT run per step:")
            for batch, v in r["threads_by_batch"].items():
                cells = "  ".join(f"{k}: {x['best_us']:9.1f} us [{x['median_us']:9.1f}]" for k, x in v.items())
                lines.append(f"     batch {batch:>4s}  {cells}")
    return "\n".join(lines)


def section(title: str, figures: dict, floor: float | None) -> list[str]:
    lines = [f"   {title}:"]
    for k, v in figures.items():
        ratio = f"  {v['best_us'] / floor:5.2f}x floor" if floor else ""
        lines.append(f"     {k:40s} {v['best_us']:9.1f} us [{v['median_us']:9.1f}] cpu {v['cpu_best_us']:9.1f}{ratio}")
    return lines


def derived(parts: dict) -> list[str]:
    """What the parts imply, from the best rounds: the binding bookkeeping and the Python loop."""
    best = lambda k: parts[k]["best_us"]  # noqa: E731
    sampler = best("sampler (+ logits copy)") - best("logits copy")
    return [f"     {'= binding bookkeeping (step - ORT run)':40s} {best('backend step') - best('ORT run (IOBinding)'):9.1f} us",
            f"     {'= loop and alternation (loop - step - sampler)':40s} {best('decode loop') - best('backend step') - sampler:9.1f} us"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.breakdown", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="char-medium", help="standard models (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the engine's threads (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=300, help="tokens per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--out", default="bench/results", help="folder for breakdown-<model>.json/.txt (default: %(default)s)")
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    from .suite import machine

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown or args.threads < 1 or args.tokens < 1 or args.rounds < 1:
        print(f"breakdown: error: models must be among {', '.join(SPECS)} (got {', '.join(unknown) or 'those'}),"
              " and --threads, --tokens, --rounds >= 1", file=sys.stderr)
        return 2
    for name in names:
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            m = measure_model(SPECS[name], args.threads, args.tokens, args.rounds, Path(tmp), log)
        result = {"schema": "lstmgen-breakdown/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "machine": {**machine(), "load_average_at_start": load_before},
                  "blas_env": {k: os.environ.get(k) for k in ceilings.BLAS_HANDICAP_VARS},
                  "models": [m]}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"breakdown-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        text = report(result)
        (out / f"breakdown-{name}.txt").write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
