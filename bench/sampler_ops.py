"""What picking the top k costs in generate.onnx against the engine's whole sampler, per row, side by side.

    python -m lstmgen.bench.sampler_ops [--vocab 10000] [--top-k 40] [--batches 1,8,64] [--rounds 25] [--json FILE]

Why it exists: on a large vocabulary generate.onnx can fall behind the Python engine at batch 8 and
more, and the difference is in sampling. The engine samples in Numba (`lstmgen.sampling.sample_rows`:
bisection on group maxima, then a heap over the few tokens left); the graph can only use ONNX
operators, and the one that selects is TopK, whose CPU kernel keeps a heap of k indices per row.
This bench times, on the same random logits [batch, vocab]:

- engine sampler: `sample_rows` with temperature 0.8 and top-k, the whole draw;
- graph top-k: the nodes generate.onnx runs to find the k best tokens (`lstmgen.graphs.generation._top_k`:
  block pre-selection from PRESELECT_MIN_VOCAB ids on), in an ONNX Runtime session set up as the engine's;
- whole-row TopK: one TopK node over the row, the alternative to pre-selection;
- one-node graph: an Identity of the same logits, what any call with this input costs; it is subtracted
  from the two graph rows, so they count the nodes' own work.

The graph's figure leaves out the rest of its sampler (the scaled exponentials, the cumulative sum,
the draw: about a dozen small nodes), so it is a lower bound of the graph's sampling cost. Variants run
interleaved, round after round; each figure is the best round (other processes only add time) with
the median beside it, in microseconds per row (lstmgen.bench.breakdown's `interleaved`).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from .breakdown import interleaved

CALLS = 20  # calls per timed block (distinct logits, so no cache holds the answer)


def _graph(nodes_of, vocab: int):
    """An ONNX Runtime session over logits `x` [batch, vocab] and k running the nodes that `nodes_of(g)` adds;
    its outputs are the values nodes_of returns (float values first, then int64 ids, as TopK gives them)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lstmgen.backend import session_options
    from lstmgen.graphs import generation as gen

    consts: dict = {}
    g = gen._Nodes("b/", consts)
    outs = nodes_of(g)
    g.nodes += [helper.make_node("Identity", [o], [f"out{i}"]) for i, o in enumerate(outs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", vocab]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info(f"out{i}", (TensorProto.FLOAT, TensorProto.INT64)[i], None) for i in range(len(outs))]
    graph = helper.make_graph(g.nodes, "sampler_ops", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in consts.values()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", gen.OPSET)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(2), providers=["CPUExecutionProvider"])


def variants(vocab: int, top_k: int, batch: int, logits: list[np.ndarray]) -> dict:
    """name -> a function that runs the variant once over every block of logits."""
    from lstmgen.graphs import generation as gen
    from lstmgen.sampling import SamplingParams, sample_rows

    graph_top_k = _graph(lambda g: list(gen._top_k(g, "x", {"k": "k", **gen._preselect_settings(g, "k", vocab)}, vocab)), vocab)
    whole_row = _graph(lambda g: g.op("TopK", ["x", "k"], n_out=2, axis=1, largest=1, sorted=1), vocab)
    check = [session.run(None, {"x": logits[0], "k": np.array([top_k], np.int64)})[1] for session in (graph_top_k, whole_row)]
    assert np.array_equal(*check), "the two top-k graphs disagree"
    one_node = _graph(lambda g: [g.op("Identity", ["x"])], vocab)
    params, u, k = SamplingParams(temperature=0.8, top_k=top_k), np.full(batch, 0.5), np.array([top_k], np.int64)
    return {"engine sampler (Numba)": lambda: [sample_rows(x, u, params) for x in logits],
            "graph top-k (its nodes)": lambda: [graph_top_k.run(None, {"x": x, "k": k}) for x in logits],
            "whole-row TopK": lambda: [whole_row.run(None, {"x": x, "k": k}) for x in logits],
            "one-node graph": lambda: [one_node.run(None, {"x": x, "k": k}) for x in logits]}


def measure(vocab: int, top_k: int, batch: int, rounds: int) -> dict:
    """Microseconds per row of each variant at `batch`: best round, median; graph rows net of the one-node call."""
    rng = np.random.default_rng(batch)
    logits = [(rng.standard_normal((batch, vocab)) * 3).astype(np.float32) for _ in range(CALLS)]
    timed = interleaved(variants(vocab, top_k, batch, logits), tokens=1, rounds=rounds)  # warm-up included
    runs = {name: [us / CALLS / batch for us in t["runs_us"]] for name, t in timed.items()}
    call = runs.pop("one-node graph")
    net = {name: [t - c for t, c in zip(r, call)] if name != "engine sampler (Numba)" else r for name, r in runs.items()}
    return {name: {"best_us": min(r), "median_us": statistics.median(r)} for name, r in net.items()} | \
           {"one-node graph (subtracted)": {"best_us": min(call), "median_us": statistics.median(call)}}


def report(results: dict, vocab: int, top_k: int, rounds: int) -> str:
    lines = [f"top-{top_k} of {vocab:,} logits, microseconds per row: best of {rounds} interleaved rounds [median]"]
    for batch, rows in results.items():
        lines.append(f"batch {batch}:")
        engine = rows["engine sampler (Numba)"]["best_us"]
        for name, r in rows.items():
            ratio = "" if "subtracted" in name else f"  {r['best_us'] / engine:5.2f}x the engine's sampler"
            lines.append(f"  {name:28s} {r['best_us']:8.1f} [{r['median_us']:8.1f}]{ratio}")
    lines.append("graph rows count their nodes' own work (the one-node call subtracted) and leave out the rest of the draw")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.sampler_ops", description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=10_000, help="vocabulary size (default: %(default)s, word-10k's)")
    p.add_argument("--top-k", type=int, default=40, help="k of top-k (default: %(default)s, the bench's)")
    p.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=25, help="interleaved timed rounds (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the figures to this file (default: none)")
    a = p.parse_args(argv)
    results = {}
    for batch in (int(b) for b in a.batches.split(",")):
        print(f"batch {batch} ...", flush=True)
        results[batch] = measure(a.vocab, a.top_k, batch, a.rounds)
    print(report(results, a.vocab, a.top_k, a.rounds))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"vocab": a.vocab, "top_k": a.top_k, "rounds": a.rounds, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
