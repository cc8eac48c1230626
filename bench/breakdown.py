"""Where a batch-1 engine token goes, and what removing fixed cost buys, measured side by side.

`python -m lstmgen.bench.breakdown --model char-medium` builds the bench's random-weight artifact
(fp32 and int8) and times, per token at batch 1:

- parts: the whole decode loop (`lstmgen.decoding.DecodeLoop`, text included), one backend step, the ONNX
  Runtime run alone (IOBinding, buffers bound once), the sampler alone (`RowSampler.sample`), the
  decode loop around a no-op backend (its Python and sampler only); the binding bookkeeping is step
  minus run; loop minus step minus sampler is the loop's Python plus what the parts lose by running
  alternately rather than each in a tight loop (colder caches);
- the fixed cost of each graph shape: both graphs on a tiny model, where compute is next to nothing;
- candidates: the ONNX Runtime run with other session options (intra-op threads, spinning, graph
  optimization level, memory pattern) and another graph shape (per-layer state inputs and outputs,
  no Slice/Concat/Squeeze between layers: a scratch graph built here from the same weights, never shipped);
- threads by batch size: the run at batch 1, 8, 64, 256 with 1 and with the machine's threads;
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

from . import ceilings
from .models import SPECS, ModelSpec, random_weights, write_artifact

PROBE_BATCHES = [1, 8, 64, 256]
# Pause before each timed block: the previous session's intra-op threads spin for a while after its
# last run, and on a 2-core machine they would steal the next block's cores.
SETTLE_S = 0.05


# -- sessions and their ping-pong bindings --------------------------------------------------------
def session(path: Path, threads: int, *, spinning: bool = True, level: str = "ORT_ENABLE_ALL", mem_pattern: bool = True):
    """An ONNX Runtime session with the engine's options (lstmgen.backend.session_options) unless told otherwise."""
    import onnxruntime as ort

    from lstmgen.backend import session_options

    opts = session_options(threads)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.enable_mem_pattern = mem_pattern
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


# -- the scratch graph shape ------------------------------------------------------------------------
def per_layer_state_graph(sd: dict[str, np.ndarray], layers: int):
    """tokens [B,1], h0_l/c0_l [1,B,H] per layer -> logits [B,V], h1_l/c1_l: 5 + L nodes instead of 7 + 4L."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lstmgen.graphs.step import build_step_graph

    shipped = build_step_graph(sd, layers)  # same weights, same gate order as the artifact
    init = {t.name: t for t in shipped.graph.initializer}
    V, H = sd["head.weight"].shape
    nodes = [helper.make_node("Transpose", ["tokens"], ["tokens_tb"], perm=[1, 0]),
             helper.make_node("Gather", ["embedding", "tokens_tb"], ["x0"])]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 1])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", V])]
    keep = ["embedding", "head_w", "head_b"]
    x = "x0"
    for layer in range(layers):
        keep += [f"W{layer}", f"R{layer}", f"B{layer}"]
        for kind in ("h", "c"):
            inputs.append(helper.make_tensor_value_info(f"{kind}0_{layer}", TensorProto.FLOAT, [1, "batch", H]))
            outputs.append(helper.make_tensor_value_info(f"{kind}1_{layer}", TensorProto.FLOAT, [1, "batch", H]))
        nodes.append(helper.make_node("LSTM", [x, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}", f"c0_{layer}"],
                                      ["", f"h1_{layer}", f"c1_{layer}"], hidden_size=H, direction="forward"))
        x = f"h1_{layer}"  # Y_h [1,B,H] is the next layer's input at T=1: no Squeeze
    nodes += [helper.make_node("Squeeze", [x, "axis0"], ["top"]),
              helper.make_node("MatMul", ["top", "head_w"], ["scores"]),
              helper.make_node("Add", ["scores", "head_b"], ["logits"])]
    inits = [init[n] for n in keep] + [numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    m = helper.make_model(helper.make_graph(nodes, "per_layer_state", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def save_graph(model, path: Path, int8: bool) -> Path:
    import onnx

    if not int8:
        onnx.save(model, path)
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_suffix(".fp32.onnx")
    onnx.save(model, fp32)
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul", "Gather"])
    return path


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


def graph_fixed_cost(tmp: Path, tokens: int, rounds: int) -> dict:
    """The ORT run of both graph shapes on a tiny model, one thread, fp32 and int8: per-node overhead alone."""
    sd = random_weights(TINY)
    out = {}
    for precision in ("fp32", "int8"):
        int8 = precision == "int8"
        shipped = write_artifact(tmp / f"tiny-{precision}", TINY, sd, int8=int8) / "model.onnx"
        scratch = save_graph(per_layer_state_graph(sd, TINY.layers), tmp / f"tiny-per-layer-{precision}.onnx", int8)
        out[precision] = interleaved({"shipped graph": bound_step(session(shipped, 1), 1, TINY),
                                      "per-layer state graph": bound_step(session(scratch, 1), 1, TINY),
                                      "one-node graph": empty_run(1)}, tokens, rounds)
    return out


def measure_model(spec: ModelSpec, threads: int, tokens: int, rounds: int, tmp: Path, log) -> dict:
    from lstmgen.generator import Generator

    sd = random_weights(spec)
    out = {"model": asdict(spec), "threads": threads, "tokens_per_round": tokens, "rounds": rounds}
    floors = ceilings.floor_probes(asdict(spec), threads)
    out["graph_fixed_cost"] = graph_fixed_cost(tmp, tokens * 10, rounds)
    for precision in ("fp32", "int8"):
        log(f"{spec.name} {precision}: parts and candidates")
        art = write_artifact(tmp / f"{spec.name}-{precision}", spec, sd, int8=precision == "int8")
        scratch = save_graph(per_layer_state_graph(sd, spec.layers), tmp / f"per-layer-{precision}.onnx", precision == "int8")
        shipped = art / "model.onnx"
        gen = Generator.load(art, device="cpu", threads=threads)
        out[precision] = {"parts": interleaved({**loop_fns(gen, 1, spec), "ORT run of a one-node graph": empty_run(threads)},
                                               tokens, rounds)}
        out[precision]["parts_by_batch"] = {str(b): interleaved(loop_fns(gen, b, spec), max(4, tokens // b), rounds)
                                            for b in PROBE_BATCHES[1:]}
        cands = {f"engine options ({threads} threads)": session(shipped, threads),
                 "1 intra-op thread": session(shipped, 1),
                 "no spinning": session(shipped, threads, spinning=False),
                 "graph optimization: extended": session(shipped, threads, level="ORT_ENABLE_EXTENDED"),
                 "graph optimization: basic": session(shipped, threads, level="ORT_ENABLE_BASIC"),
                 "no memory pattern": session(shipped, threads, mem_pattern=False),
                 "per-layer state graph": session(scratch, threads),
                 "per-layer state graph, 1 thread": session(scratch, 1)}
        out[precision]["candidates"] = interleaved({k: bound_step(s, 1, spec) for k, s in cands.items()}, tokens, rounds)
        out[precision]["threads_by_batch"] = threads_by_batch(shipped, spec, threads, rounds)
    # The floors probed before and after everything else: the lower of the two (as the bench does).
    after = ceilings.floor_probes(asdict(spec), threads)
    out["floor_us"] = {p: min(min(v.values()), min(after[p].values())) * 1e6 for p, v in floors.items()}
    return out


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
            f = floor[precision]
            lines.append(f"-- {precision}: floor {f:.1f} us (one batch-1 pass over the {precision} weights)")
            lines += section("parts at batch 1", m[precision]["parts"], f) + derived(m[precision]["parts"])
            lines += section(f"fixed cost of the graph shape: ORT run of a {TINY.dims} model, 1 thread",
                             m["graph_fixed_cost"][precision], None)
            for batch, parts in m[precision]["parts_by_batch"].items():
                lines += section(f"parts at batch {batch}", parts, None) + derived(parts)
            lines += section("candidates: the ORT run alone at batch 1", m[precision]["candidates"], f)
            lines.append("   threads by batch size, ORT run per step:")
            for batch, v in m[precision]["threads_by_batch"].items():
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
