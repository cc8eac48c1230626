"""generate.onnx: the whole generation (prefill, decode loop, sampling, random numbers) as one ONNX graph.

Built from an artifact's own model.onnx, fp32 or int8: its nodes run once over the context (prefill)
and again as the body of an ONNX `Loop`, which samples one token per row per step and stops at
<eos> or max_tokens; finished rows leave the batch, as in the Python decode loop. The weights are
not copied: generate.onnx reads them from model.onnx's own bytes (ONNX external data), and the loop
body sees them in the outer graph. So any artifact, fp32 or int8, gets its generate.onnx without its
training checkpoint (`add_generation_graph`, `lstmgen add-graph`). Load it from its folder (or, in
the browser, hand ONNX Runtime model.onnx as external data).

Inputs (scalars are 0-d tensors):
    prompt_ids int64 [P]    the encoded prompt, possibly empty (the manifest's start_ids come first)
    num        int64        rows (samples)
    max_tokens int64        tokens per row at most
    seed       int64        in [0, 2**63); row i of seed s draws lstmgen.rng's uniform(s, i, step)
    temperature double      0 = greedy
    top_k      int64        0 = off
    top_p      double       1 = off
    banned_ids int64 [K]    ids never sampled (word models: <unk>), possibly empty
    pattern_next  int32 [S, V]  a pattern's automaton (lstmgen.patterns): the state after token v in state
                            s, -1 = v not allowed; no pattern: zeros [1, V] (one state that allows every token)
    pattern_start int64     the rows' state after the prompt (no pattern: 0)
Outputs:
    tokens     int64 [num, max_tokens]   each row's sampled ids, <eos> excluded, padded with -1
    lengths    int64 [num]               real tokens per row

A pattern (`_pattern_settings`, `_mask_by_pattern`, `_advance_pattern`: the only code that knows of
it) masks the tokens its rows' states do not allow before sampling, carries each row's state through
the Loop, and ends a row whose new state allows nothing (running text; a record ends at <eos>,
which the table allows only where the pattern accepts). Without a pattern the caller feeds the
all-allowing automaton above and the mask is skipped (an If on `pattern_on`); the other inputs keep
their meaning. (They are plain inputs, not initializers with defaults: onnxruntime-node and -web
cannot feed an initializer.)

Sampling follows lstmgen.sampling's kernel step by step (scale by 1/temperature in float64, top-k
then top-p on the sorted distribution, invert the cumulative sum at the row's uniform; in id order
when no filter is on). What it leaves out is GRAPH_OMITS. Needs the `onnx` package (the `train` or
`bench` extra), never torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import rng
from ..options import graph_omits
from ..manifest import GENERATE_FILE, GENERATE_WEB_FILE, MANIFEST_FILE, MODEL_FILE, Manifest, read_manifest, sha256_file

OPSET = 18  # BitwiseXor (the random numbers) is opset 18
GRAPH_OMITS = graph_omits()  # what the options table says the graph does not apply
PAD = -1  # tokens past a row's length
EXTERNAL_MIN_BYTES = 4096  # initializers at least this big are read from model.onnx, not copied


class _Nodes:
    """Collects nodes of one (sub)graph and hands out unique value names."""

    def __init__(self, prefix: str, consts: dict) -> None:
        self.prefix, self.nodes, self.consts, self.count = prefix, [], consts, 0

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        self.count += 1
        outs = [f"{self.prefix}{op_type.lower()}{self.count}_{i}" for i in range(n_out)]
        self.nodes.append(_onnx().helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype) -> str:
        """A shared outer-graph initializer holding `value` (deduplicated by value and type)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            self.consts[key] = (f"const{len(self.consts)}", arr)
        return self.consts[key][0]


def _fmix32(g: _Nodes, x: str) -> str:
    """lstmgen.rng.fmix32 on a uint32 tensor."""
    s1, s2, s3 = (g.const(s, np.uint32) for s in rng.FMIX_SHIFTS)
    x = g.op("BitwiseXor", [x, g.op("BitShift", [x, s1], direction="RIGHT")])
    x = g.op("Mul", [x, g.const(rng.FMIX_MUL1, np.uint32)])
    x = g.op("BitwiseXor", [x, g.op("BitShift", [x, s2], direction="RIGHT")])
    x = g.op("Mul", [x, g.const(rng.FMIX_MUL2, np.uint32)])
    return g.op("BitwiseXor", [x, g.op("BitShift", [x, s3], direction="RIGHT")])


def _row_keys(g: _Nodes, seed: str, num: str) -> str:
    """lstmgen.rng.row_keys for rows 0..num-1: uint32 [num]."""
    lo = g.op("Cast", [g.op("BitwiseAnd", [seed, g.const(0xFFFFFFFF, np.int64)])], to=_onnx().TensorProto.UINT32)
    hi = g.op("Cast", [g.op("Div", [seed, g.const(2**32, np.int64)])], to=_onnx().TensorProto.UINT32)
    seed_key = _fmix32(g, g.op("BitwiseXor", [_fmix32(g, g.op("BitwiseXor", [lo, g.const(rng.SEED_SALT, np.uint32)])), hi]))
    rows = g.op("Cast", [g.op("Range", [g.const(0, np.int64), num, g.const(1, np.int64)])], to=_onnx().TensorProto.UINT32)
    return _fmix32(g, g.op("BitwiseXor", [seed_key, rows]))


def _onnx():
    import onnx

    return onnx


def _embed_step(g: _Nodes, step, weight_names: dict[str, str], tokens: str, h0: str, c0: str, io) -> tuple[str, str, str]:
    """Append model.onnx's nodes to g with tokens/h0/c0 bound and its initializers renamed by weight_names;
    returns (logits, h1, c1) names."""
    bound = {io.tokens: tokens, io.h0: h0, io.c0: c0}
    tag = f"{g.prefix}m{g.count}/"
    g.count += 1

    def rename(name: str) -> str:
        if not name:
            return name
        if name in weight_names:
            return weight_names[name]
        return bound.get(name, tag + name)

    for node in step.graph.node:
        new = _onnx().NodeProto()
        new.CopyFrom(node)
        new.name = tag + node.name if node.name else ""
        new.input[:] = [rename(n) for n in node.input]
        new.output[:] = [rename(n) for n in node.output]
        g.nodes.append(new)
    return rename(io.logits), rename(io.h1), rename(io.c1)


def _branch(name: str, g: _Nodes, out: str):
    """A no-input subgraph (If branch) returning `out`: int64 [batch]."""
    h = _onnx().helper
    return h.make_graph(g.nodes, name, [], [h.make_tensor_value_info(out, _onnx().TensorProto.INT64, ["batch"])])


def _greedy(consts: dict, logits: str) -> tuple[_Nodes, str]:
    g = _Nodes("greedy/", consts)
    return g, g.op("ArgMax", [logits], axis=1, keepdims=0)


def _scaled_probs(g: _Nodes, logits: str, inv_t: str) -> str:
    """exp((x - max) * (1/T)) in float64, the subtraction in float32 as the Numba kernel does it."""
    m = g.op("ReduceMax", [logits, g.const([1], np.int64)], keepdims=1)
    z = g.op("Cast", [g.op("Sub", [logits, m])], to=_onnx().TensorProto.DOUBLE)
    return g.op("Exp", [g.op("Mul", [z, inv_t])])


def _count(g: _Nodes, mask: str) -> str:
    """Per-row number of true entries of a [B, N] bool mask: int64 [B, 1]."""
    ones = g.op("Cast", [mask], to=_onnx().TensorProto.INT64)
    return g.op("ReduceSum", [ones, g.const([1], np.int64)], keepdims=1)


def _full_distribution(consts: dict, logits: str, inv_t: str, u: str) -> tuple[_Nodes, str]:
    """No filter: invert the CDF in id order (first id whose running sum exceeds u x total)."""
    g = _Nodes("full/", consts)
    cum = g.op("CumSum", [_scaled_probs(g, logits, inv_t), g.const(1, np.int64)])
    total = g.op("ReduceMax", [cum, g.const([1], np.int64)], keepdims=1)
    target = g.op("Mul", [g.op("Unsqueeze", [u, g.const([1], np.int64)]), total])
    first_above = _count(g, g.op("LessOrEqual", [cum, target]))
    last_nonzero = g.op("ArgMax", [cum], axis=1, keepdims=1)  # rounding fallback: the last id with mass
    tok = g.op("Min", [first_above, last_nonzero])
    return g, g.op("Squeeze", [tok, g.const([1], np.int64)])


def _filtered(consts: dict, logits: str, inv_t: str, u: str, k: str, top_p: str) -> tuple[_Nodes, str]:
    """top-k, then top-p of what top-k kept, on the distribution sorted by probability."""
    g = _Nodes("filtered/", consts)
    axis = g.const([1], np.int64)
    ps, ids = g.op("TopK", [_scaled_probs(g, logits, inv_t), k], n_out=2, axis=1, largest=1, sorted=1)
    cum = g.op("CumSum", [ps, g.const(1, np.int64)])
    kmass = g.op("ReduceMax", [cum, axis], keepdims=1)
    limit = g.op("Mul", [top_p, kmass])
    kept = g.op("Min", [g.op("Add", [_count(g, g.op("Less", [cum, limit])), g.const(1, np.int64)]), k])
    last = g.op("Sub", [kept, g.const(1, np.int64)])
    acc = g.op("GatherElements", [cum, last], axis=1)
    target = g.op("Mul", [g.op("Unsqueeze", [u, axis]), acc])
    pick = g.op("Min", [_count(g, g.op("LessOrEqual", [cum, target])), last])
    return g, g.op("Squeeze", [g.op("GatherElements", [ids, pick], axis=1), axis])


def _sampler(g: _Nodes, consts: dict, logits: str, u: str, s: dict) -> str:
    """The next token of each row: greedy, unfiltered or filtered, chosen once per call by the settings."""
    gg, greedy_tok = _greedy(consts, logits)
    fg, full_tok = _full_distribution(consts, logits, s["inv_t"], u)
    kg, filtered_tok = _filtered(consts, logits, s["inv_t"], u, s["k"], s["top_p"])
    sg = _Nodes("sampled/", consts)
    sampled_tok = sg.op("If", [s["filtered"]], then_branch=_branch("filtered", kg, filtered_tok),
                        else_branch=_branch("full", fg, full_tok))
    return g.op("If", [s["greedy"]], then_branch=_branch("greedy", gg, greedy_tok),
                else_branch=_branch("sampled", sg, sampled_tok))


def _advance(step, weights: list, own_weights: bool, consts: dict, m: Manifest, tokens: str, h0: str, c0: str,
             logits: str):
    """If-branches: run the model on the rows still going, or (nothing left to write) just pass the state on.

    The pass-through branch is also what keeps the model from ever running at batch 0, which ONNX
    Runtime's LSTM does not survive. With own_weights the running branch holds its own copy of the
    weight entries (the same bytes of model.onnx): ONNX Runtime pre-packs the LSTM's weights only
    when they are initializers of the node's own graph, and without that a batch-1 step costs
    several times more. ONNX Runtime Web cannot read external data of a subgraph's initializers, so
    its graph (generate-web.onnx) reads the outer graph's instead.
    """
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    d = m.dims
    shapes = [("logits", T.FLOAT, ["batch", d.vocab_size]), ("h", T.FLOAT, [d.num_layers, "batch", d.hidden_size]),
              ("c", T.FLOAT, [d.num_layers, "batch", d.hidden_size])]
    run = _Nodes("advance/", consts)
    names = {w.name: f"advance/{w.name}" if own_weights else w.name for w in weights}
    new_logits, h1, c1 = _embed_step(run, step, names, run.op("Unsqueeze", [tokens, run.const([1], np.int64)]), h0, c0, m.io)
    results = (run.op("Squeeze", [new_logits, run.const([1], np.int64)]), h1, c1)
    run.nodes += [h.make_node("Identity", [x], [f"advance/{n}_out"]) for x, (n, _, _) in zip(results, shapes)]
    hold = _Nodes("hold/", consts)
    hold.nodes += [h.make_node("Identity", [x], [f"hold/{n}_out"]) for x, (n, _, _) in zip((logits, h0, c0), shapes)]
    branch_weights = []
    for w in weights if own_weights else []:
        copy = onnx.TensorProto()
        copy.CopyFrom(w)
        copy.name = names[w.name]
        branch_weights.append(copy)
    return [h.make_graph(g.nodes, name, [], [h.make_tensor_value_info(f"{name}/{n}_out", t, shape) for n, t, shape in shapes],
                         initializer=init)
            for g, name, init in ((run, "advance", branch_weights), (hold, "hold", []))]


# -- patterns (lstmgen.patterns): a mask before sampling, each row's automaton state carried through the Loop --
PATTERN_INPUTS = ("pattern_next", "pattern_start")  # a graph built before patterns has neither


def _pattern_settings(g: _Nodes, m: Manifest) -> dict:
    """Outer-scope values of the pattern: whether there is one, the table flattened, the states that allow nothing."""
    table = "pattern_next"
    return {"pattern_on": g.op("Greater", [g.op("ReduceMax", [g.op("Abs", [table])], keepdims=0), g.const(0, np.int32)]),
            "pattern_flat": g.op("Cast", [g.op("Reshape", [table, g.const([-1], np.int64)])], to=_onnx().TensorProto.INT64),
            "pattern_terminal": g.op("Less", [g.op("ReduceMax", [table, g.const([1], np.int64)], keepdims=0),
                                              g.const(0, np.int32)])}


def _pattern_inputs(m: Manifest) -> list:
    """The graph inputs of a pattern: its table and the rows' start state."""
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    return [h.make_tensor_value_info("pattern_next", T.INT32, ["pattern_states", m.dims.vocab_size]),
            h.make_tensor_value_info("pattern_start", T.INT64, [])]


def _mask_by_pattern(g: _Nodes, consts: dict, s: dict, logits: str, states: str, vocab: int) -> str:
    """Logits with the tokens each row's state does not allow at -inf (skipped when there is no pattern)."""
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    on = _Nodes("pattern_mask/", consts)
    allowed = on.op("Greater", [on.op("Gather", ["pattern_next", states], axis=0), on.const(-1, np.int32)])
    masked = on.op("Where", [allowed, logits, on.const(-np.inf, np.float32)])
    off = _Nodes("pattern_none/", consts)
    same = off.op("Identity", [logits])
    out = lambda x: h.make_tensor_value_info(x, T.FLOAT, ["batch", vocab])  # noqa: E731
    return g.op("If", [s["pattern_on"]], then_branch=h.make_graph(on.nodes, "pattern_mask", [], [out(masked)]),
                else_branch=h.make_graph(off.nodes, "pattern_none", [], [out(same)]))


def _advance_pattern(g: _Nodes, s: dict, states: str, tok: str, is_eos: str, vocab: int) -> tuple[str, str]:
    """(each row's state after its token, which rows end: <eos>, or a state that allows nothing more)."""
    at = g.op("Add", [g.op("Mul", [states, g.const(vocab, np.int64)]), tok])
    after = g.op("Gather", [s["pattern_flat"], at], axis=0)
    return after, g.op("Or", [is_eos, g.op("Gather", [s["pattern_terminal"], after], axis=0)])


def _loop_body(step, weights: list, own_weights: bool, consts: dict, m: Manifest, s: dict):
    """One decode step: sample each running row, write its token, drop rows that wrote <eos>, step the rest.

    Rows leave the batch when they finish, as in the Python decode loop, so later steps cost only
    what is still running (and dynamic int8 quantizes the same batches as the Python engine does).
    """
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    d = m.dims
    g = _Nodes("step/", consts)
    axis0, axis1 = g.const([0], np.int64), g.const([1], np.int64)
    counter = g.op("Cast", ["step/iter"], to=T.UINT32)
    keys = g.op("Gather", [s["keys"], "step/rows"])
    u = g.op("Mul", [g.op("Cast", [_fmix32(g, g.op("BitwiseXor", [keys, counter]))], to=T.DOUBLE),
                     g.const(rng.UNIFORM_SCALE, np.float64)])
    logits = g.op("Where", [s["banned"], g.const(-np.inf, np.float32), "step/logits"])
    logits = _mask_by_pattern(g, consts, s, logits, "step/states", d.vocab_size)
    tok = _sampler(g, consts, logits, u, s)
    is_eos = g.op("Equal", [tok, g.const(s["eos"], np.int64)])
    states, ended = _advance_pattern(g, s, "step/states", tok, is_eos, d.vocab_size)
    column = g.op("Expand", [g.op("Reshape", ["step/iter", g.const([1, 1], np.int64)]),
                             g.op("Concat", [g.op("Shape", ["step/rows"]), axis1], axis=0)])
    where = g.op("Concat", [g.op("Unsqueeze", ["step/rows", axis1]), column], axis=1)  # [batch, 2]: (row, step)
    written = g.op("ScatterND", ["step/out", where, g.op("Where", [is_eos, g.const(PAD, np.int64), tok])])
    keep = g.op("Squeeze", [g.op("NonZero", [g.op("Not", [ended])]), axis0])
    kept = [g.op("Gather", [x, keep], axis=ax) for x, ax in (("step/rows", 0), (tok, 0), ("step/h", 1), ("step/c", 1),
                                                             ("step/logits", 0), (states, 0))]
    rows, tok_kept, h_kept, c_kept, logits_kept, states_kept = kept
    more = g.op("And", [g.op("Greater", [g.op("Size", [keep]), g.const(0, np.int64)]),
                        g.op("Less", [g.op("Add", ["step/iter", g.const(1, np.int64)]), "max_tokens"])])
    advance, hold = _advance(step, weights, own_weights, consts, m, tok_kept, h_kept, c_kept, logits_kept)
    next_logits, h1, c1 = g.op("If", [more], n_out=3, then_branch=advance, else_branch=hold)
    g.nodes += [h.make_node("Identity", [x], [f"step/{name}_out"])
                for x, name in ((more, "cond"), (h1, "h"), (c1, "c"), (next_logits, "logits"), (rows, "rows"),
                                (written, "out"), (states_kept, "states"))]
    state = [("h", T.FLOAT, [d.num_layers, "batch", d.hidden_size]), ("c", T.FLOAT, [d.num_layers, "batch", d.hidden_size]),
             ("logits", T.FLOAT, ["batch", d.vocab_size]), ("rows", T.INT64, ["batch"]),
             ("out", T.INT64, ["num", "max_tokens"]), ("states", T.INT64, ["batch"])]
    inputs = [h.make_tensor_value_info("step/iter", T.INT64, []), h.make_tensor_value_info("step/cond", T.BOOL, [])]
    inputs += [h.make_tensor_value_info(f"step/{n}", t, shape) for n, t, shape in state]
    outputs = [h.make_tensor_value_info("step/cond_out", T.BOOL, [])]
    outputs += [h.make_tensor_value_info(f"step/{n}_out", t, shape) for n, t, shape in state]
    return h.make_graph(g.nodes, "decode_step", inputs, outputs)


def _settings(g: _Nodes, m: Manifest) -> dict:
    """Per-call values the loop reads from the outer scope: flags, 1/T, top-k, banned mask, row keys."""
    T = _onnx().TensorProto
    V = m.dims.vocab_size
    top_k = "top_k"
    k_valid = g.op("And", [g.op("Greater", [top_k, g.const(0, np.int64)]), g.op("Less", [top_k, g.const(V, np.int64)])])
    k = g.op("Reshape", [g.op("Where", [k_valid, top_k, g.const(V, np.int64)]), g.const([1], np.int64)])
    matches = g.op("Equal", [g.op("Unsqueeze", [g.const(np.arange(V), np.int64), g.const([0], np.int64)]),
                             g.op("Unsqueeze", ["banned_ids", g.const([1], np.int64)])])
    hits = g.op("ReduceSum", [g.op("Cast", [matches], to=T.INT64), g.const([0], np.int64)], keepdims=0)
    tokenizer_eos = m.tokenizer.get("eos_id")
    return {
        "greedy": g.op("Equal", ["temperature", g.const(0.0, np.float64)]),
        "filtered": g.op("Or", [k_valid, g.op("Less", ["top_p", g.const(1.0, np.float64)])]),
        "inv_t": g.op("Div", [g.const(1.0, np.float64), "temperature"]),
        "k": k, "top_p": "top_p",
        "banned": g.op("Greater", [hits, g.const(0, np.int64)]),
        "keys": _row_keys(g, "seed", "num"),
        "eos": -1 if tokenizer_eos is None else int(tokenizer_eos),  # -1: running text never stops early
        **_pattern_settings(g, m),
    }


def _weights_from_step_file(step, step_bytes: bytes) -> list:
    """The step graph's initializers as ONNX external data pointing into model.onnx's own bytes.

    Each initializer's raw bytes already lie somewhere in model.onnx, so generate.onnx names that
    file, offset and length instead of carrying a second copy of the weights: the artifact grows by
    the loop's few kilobytes, not by the model's size, and model.onnx stays byte-identical.
    """
    onnx = _onnx()
    out = []
    for t in step.graph.initializer:
        # Small tensors (slice bounds, scales) stay inline: shape inference must read them at load.
        offset = step_bytes.find(t.raw_data) if len(t.raw_data) >= EXTERNAL_MIN_BYTES else -1
        new = onnx.TensorProto()
        new.CopyFrom(t)
        if offset >= 0:
            new.ClearField("raw_data")
            new.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", MODEL_FILE), ("offset", str(offset)), ("length", str(len(t.raw_data)))):
                new.external_data.add(key=key, value=value)
        out.append(new)
    return out


def build_generation_graph(step, m: Manifest, step_bytes: bytes | None = None, for_web: bool = False):
    """generate.onnx (an onnx.ModelProto) around the step graph `step` (model.onnx) described by `m`.

    With step_bytes (model.onnx's content) the weights are referenced in model.onnx, not copied.
    for_web: the layout ONNX Runtime Web can load (generate-web.onnx; see _advance).
    """
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    d = m.dims
    weights = list(step.graph.initializer) if step_bytes is None else _weights_from_step_file(step, step_bytes)
    consts: dict = {}
    g = _Nodes("main/", consts)
    s = _settings(g, m)
    context = g.op("Unsqueeze", [g.op("Concat", [g.const(m.start_ids, np.int64), "prompt_ids"], axis=0),
                                 g.const([0], np.int64)])
    zeros = g.const(np.zeros((d.num_layers, 1, d.hidden_size)), np.float32)
    all_logits, h1, c1 = _embed_step(g, step, {w.name: w.name for w in weights}, context, zeros, zeros, m.io)
    last = g.op("Gather", [all_logits, g.const(-1, np.int64)], axis=1)  # [1, V]
    num1 = g.op("Reshape", ["num", g.const([1], np.int64)])
    rows_v = g.op("Concat", [num1, g.const([d.vocab_size], np.int64)], axis=0)
    state_shape = g.op("Concat", [g.const([d.num_layers], np.int64), num1, g.const([d.hidden_size], np.int64)], axis=0)
    rows0 = g.op("Range", [g.const(0, np.int64), "num", g.const(1, np.int64)])
    out_shape = g.op("Concat", [num1, g.op("Reshape", ["max_tokens", g.const([1], np.int64)])], axis=0)
    out0 = g.op("ConstantOfShape", [out_shape], value=onnx.numpy_helper.from_array(np.array([PAD], np.int64)))
    body = _loop_body(step, weights, not for_web, consts, m, s)
    g.nodes.append(h.make_node(
        "Loop", ["max_tokens", g.const(True, np.bool_), g.op("Expand", [h1, state_shape]), g.op("Expand", [c1, state_shape]),
                 g.op("Expand", [last, rows_v]), rows0, out0, g.op("Expand", ["pattern_start", num1])],
        ["main/h_end", "main/c_end", "main/logits_end", "main/rows_end", "tokens", "main/states_end"], body=body))
    g.nodes.append(h.make_node("ReduceSum", [g.op("Cast", [g.op("GreaterOrEqual", ["tokens", g.const(0, np.int64)])],
                                                  to=T.INT64), g.const([1], np.int64)], ["lengths"], keepdims=0))
    scalar = lambda name, t: h.make_tensor_value_info(name, t, [])  # noqa: E731
    inputs = [h.make_tensor_value_info("prompt_ids", T.INT64, ["prompt"]), scalar("num", T.INT64),
              scalar("max_tokens", T.INT64), scalar("seed", T.INT64), scalar("temperature", T.DOUBLE),
              scalar("top_k", T.INT64), scalar("top_p", T.DOUBLE), h.make_tensor_value_info("banned_ids", T.INT64, ["banned"])]
    inputs += _pattern_inputs(m)
    outputs = [h.make_tensor_value_info("tokens", T.INT64, ["num", "max_tokens"]),
               h.make_tensor_value_info("lengths", T.INT64, ["num"])]
    initializers = weights + [onnx.numpy_helper.from_array(a, name) for name, a in consts.values()]
    graph = h.make_graph(g.nodes, "lstmgen_generate", inputs, outputs, initializers)
    opsets = [h.make_opsetid("", OPSET)] + [o for o in step.opset_import if o.domain not in ("", "ai.onnx")]
    model = h.make_model(graph, opset_imports=opsets, producer_name="lstmgen")
    model.ir_version = 8
    if step_bytes is None:
        onnx.checker.check_model(model)
    return model


def write_generation_graph(folder: Path, m: Manifest, suffix: str = "") -> list[Path]:
    """Write generate.onnx and generate-web.onnx (names + suffix) from folder/model.onnx; record them in `m`."""
    onnx = _onnx()
    step_bytes = (folder / MODEL_FILE).read_bytes()
    step = onnx.load_from_string(step_bytes)
    written = []
    for name, for_web in ((GENERATE_FILE, False), (GENERATE_WEB_FILE, True)):
        dest = folder / f"{name}{suffix}"
        dest.write_bytes(build_generation_graph(step, m, step_bytes, for_web).SerializeToString())
        onnx.checker.check_model(str(dest))  # from the file, so that the weights in model.onnx are checked too
        written.append(dest)
    m.generate_sha256, m.generate_web_sha256 = (sha256_file(p) for p in written)
    m.generate_omits = list(GRAPH_OMITS)
    return written


def add_generation_graph(folder: str | os.PathLike) -> Manifest:
    """Give an existing artifact its generate.onnx and generate-web.onnx (model.onnx stays byte-identical).

    Each file is written beside its final name and renamed into place, the graphs before the
    manifest that names them, so an interrupted run leaves the artifact as it was or complete.
    Returns the new manifest.
    """
    folder = Path(folder)
    m = read_manifest(folder)
    manifest_tmp = folder / f".{MANIFEST_FILE}.tmp"
    written: list[Path] = []
    try:
        written = write_generation_graph(folder, m, ".tmp")
        manifest_tmp.write_text(m.to_json(), encoding="utf-8")
        Manifest.from_dict(json.loads(manifest_tmp.read_text(encoding="utf-8")), str(manifest_tmp))
        for tmp in written:
            os.replace(tmp, tmp.with_suffix(""))
        os.replace(manifest_tmp, folder / MANIFEST_FILE)
    finally:
        for leftover in [*written, manifest_tmp]:
            leftover.unlink(missing_ok=True)
    return m
