"""Where a batch-1 engine token goes, and what removing fixed cost buys, measured side by side.

`python -m lstmgen.bench.breakdown --model char-medium` builds the bench's random-weight artifact
(fp32 and int8) and times, per token at batch 1:

- parts: the whole decode loop (`lstmgen.generator.decode_loop`), one backend step, the ONNX
  Runtime run alone (IOBinding, buffers bound once), the sampler alone (`RowSampler.sample`); the
  binding bookkeeping is step minus run, the Python loop is the loop minus step and sampler;
- candidates: the ONNX Runtime run with other session options (intra-op threads, spinning, graph
  optimization level, memory pattern) and another graph shape (per-layer state inputs and outputs,
  no Slice/Concat/Squeeze between layers: a scratch graph built here from the same weights, never shipped);
- threads by batch size: the run at batch 1, 8, 64, 256 with 1 and with the machine's threads;
- the floors of bench/ceilings.py, measured in this run.

Candidates run interleaved, round after round, so a busy machine slows them alike; each figure is
the median over rounds, with the best round beside it. Writes breakdown-<model>.json and .txt.
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


# -- sessions and their ping-pong bindings --------------------------------------------------------
def session(path: Path, threads: int, *, spinning: bool = True, level: str = "ORT_ENABLE_ALL", mem_pattern: bool = True):
    """An ONNX Runtime session with the engine's options (lstmgen.generator.OrtBackend) unless told otherwise."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = mem_pattern
    opts.log_severity_level = 3
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

    from lstmgen.graph import build_step_graph

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
def per_token(fn, tokens: int) -> float:
    """Seconds per call of fn over `tokens` calls."""
    t0 = time.perf_counter()
    for _ in range(tokens):
        fn()
    return (time.perf_counter() - t0) / tokens


def interleaved(fns: dict, tokens: int, rounds: int) -> dict:
    """Per-token microseconds of each fn: median and best over rounds, all fns timed in every round."""
    for fn in fns.values():
        per_token(fn, 10)  # warm-up: first runs allocate
    runs = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            runs[name].append(per_token(fn, tokens) * 1e6)
    return {name: {"median_us": statistics.median(r), "best_us": min(r), "runs_us": r} for name, r in runs.items()}


def loop_fns(folder: Path, threads: int) -> dict:
    """The engine's own path at batch 1: decode loop, backend step, sampler (public API only)."""
    from lstmgen.generator import Generator, decode_loop
    from lstmgen.sampling import RowSampler, SamplingParams

    gen = Generator.load(folder, device="cpu", threads=threads)
    params = SamplingParams(temperature=0.8, top_k=min(40, gen.manifest.dims.vocab_size))
    start = list(gen.manifest.start_ids)
    backend = gen.backend
    logits, state = backend.prefill(np.asarray([start], np.int64))
    held = {"state": state}
    tok = np.zeros(1, np.int64)

    def step():
        _, held["state"] = backend.step(tok, held["state"])

    sampler = RowSampler(params, 1234, range(1), start)
    active = np.arange(1)
    saved = logits.copy()

    def sample():
        sampler.sample(saved.copy(), active)

    def copy_only():
        saved.copy()

    class Loop:  # decode_loop is a generator: one call of this advances it one token, restarting when done
        it = None

        def __call__(self):
            try:
                next(self.it)
            except (StopIteration, TypeError):
                self.it = decode_loop(backend, start, range(1), 10_000, params, 1234, None)
                next(self.it)

    return {"decode loop": Loop(), "backend step": step, "sampler (+ logits copy)": sample, "logits copy": copy_only}


def measure_model(spec: ModelSpec, threads: int, tokens: int, rounds: int, tmp: Path, log) -> dict:
    sd = random_weights(spec)
    out = {"model": asdict(spec), "threads": threads, "tokens_per_round": tokens, "rounds": rounds}
    floors = ceilings.floor_probes(asdict(spec), threads)
    out["floor_us"] = {p: min(v.values()) * 1e6 for p, v in floors.items()}
    for precision in ("fp32", "int8"):
        log(f"{spec.name} {precision}: parts and candidates")
        art = write_artifact(tmp / f"{spec.name}-{precision}", spec, sd, int8=precision == "int8")
        scratch = save_graph(per_layer_state_graph(sd, spec.layers), tmp / f"per-layer-{precision}.onnx", precision == "int8")
        shipped = art / "model.onnx"
        fns = loop_fns(art, threads)
        fns["ORT run (IOBinding), engine options"] = bound_step(session(shipped, threads), 1, spec)
        out[precision] = {"parts": interleaved(fns, tokens, rounds)}
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
        lines.append(f"== {name} ({m['threads']} threads; median of {m['rounds']} rounds of {m['tokens_per_round']} tokens,"
                     " best round in brackets)")
        for precision in ("fp32", "int8"):
            p = m[precision]["parts"]
            med = lambda k: p[k]["median_us"]  # noqa: E731
            derived = {"binding bookkeeping (step - ORT run)": med("backend step") - med("ORT run (IOBinding), engine options"),
                       "Python loop (loop - step - sampler)": med("decode loop") - med("backend step")
                       - (med("sampler (+ logits copy)") - med("logits copy"))}
            lines.append(f"-- {precision}: floor {floor[precision]:.1f} us/token")
            for k, v in p.items():
                lines.append(f"   {k:42s} {v['median_us']:8.1f} us [{v['best_us']:7.1f}]  {v['median_us'] / floor[precision]:5.2f}x floor")
            for k, v in derived.items():
                lines.append(f"   {k:42s} {v:8.1f} us")
            lines.append("   candidates, ORT run alone at batch 1:")
            for k, v in m[precision]["candidates"].items():
                lines.append(f"   {k:42s} {v['median_us']:8.1f} us [{v['best_us']:7.1f}]  {v['median_us'] / floor[precision]:5.2f}x floor")
            lines.append("   threads by batch size, ORT run per step:")
            for batch, v in m[precision]["threads_by_batch"].items():
                cells = "  ".join(f"{k}: {x['median_us']:9.1f} us [{x['best_us']:9.1f}]" for k, x in v.items())
                lines.append(f"   batch {batch:>4s}  {cells}")
    return "\n".join(lines)


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

    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            m = measure_model(SPECS[name], args.threads, args.tokens, args.rounds, Path(tmp), log)
        result = {"schema": "lstmgen-breakdown/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "machine": machine(), "blas_env": {k: os.environ.get(k) for k in ceilings.BLAS_HANDICAP_VARS},
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
