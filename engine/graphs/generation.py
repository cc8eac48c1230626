"""generate.onnx: the whole generation (prefill, decode loop, sampling, random numbers) as one ONNX graph.

Built from an artifact's own model.onnx, fp32 or int8, either state layout: its nodes run once over the
context (prefill), whose last logits give every row its first token, and again as the body of an ONNX
`Loop`, each iteration one step of the model on the rows still going and one sampled token per row;
rows that write <eos> leave the batch, as in the Python decode loop, and the loop ends when none is left
or at max_tokens. The weights are not copied: generate.onnx reads them from model.onnx's own bytes (ONNX
external data), and the loop body sees them in the outer graph. So any artifact, fp32 or int8, gets its
generate.onnx without its training checkpoint (`add_generation_graph`, `lstmgen add-graph`). Load it
from its folder (or, in the browser, hand ONNX Runtime model.onnx as external data).

Inputs (scalars are 0-d tensors):
    prompt_ids int64 [P]    the encoded prompt, possibly empty (the manifest's start_ids come first)
    num        int64        rows (samples)
    max_tokens int64        tokens per row at most
    seed       int64        in [0, 2**63); row i of seed s draws lstmgen.rng's uniform(s, i, step)
    temperature double      0 = greedy
    top_k      int64        0 = off
    top_p      double       1 = off
    banned_ids int64 [K]    ids never sampled (word models: <unk>), possibly empty
    pattern_next  int32 [S, V]  a pattern's automaton (lstmgen.patterns): the state after each token, -1 = not
                                allowed; no pattern: zeros [1, V], one state that allows everything
    pattern_start int64         the rows' state after the prompt (no pattern: 0)
Outputs:
    tokens     int64 [num, max_tokens]   each row's sampled ids, <eos> excluded, padded with -1
    lengths    int64 [num]               real tokens per row

Sampling follows lstmgen.sampling's kernel step by step (top-k on the logits, scale by 1/temperature in
float64, top-p of what top-k kept, invert the cumulative sum at the row's uniform; in id order when no
filter is on; greedy is top-1). What it leaves out is GRAPH_OMITS. Each Loop iteration runs as few
nodes as it can, since at batch 1 their count is its cost: the random numbers of every (step, row) are
hashed before the loop, banned ids are set to -inf in place (a scatter of a few values), and a vocabulary of
PRESELECT_MIN_VOCAB or more tokens finds its top k among the best k blocks of BLOCK tokens instead of
sorting the whole row.

A pattern (`_pattern_settings`, `_mask_by_pattern`, `_advance_pattern`: the only code that knows of
it) masks the tokens its rows' states do not allow before sampling, carries each row's state through
the Loop, and ends a row whose new state allows nothing (running text; a record ends at <eos>,
which the table allows only where the pattern accepts). The graph holds two Loops, one with the
pattern's nodes and one without, and an If on `pattern_on` picks one once per call, so a call
without a pattern pays for none of them in its steps. Without a pattern the caller feeds the
all-allowing automaton above; the other inputs keep their meaning. (They are plain inputs, not
initializers with defaults: onnxruntime-node and -web cannot feed an initializer.)

Needs the `onnx` package (the `train` or `bench` extra), never torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import rng
from ..manifest import GENERATE_FILE, GENERATE_WEB_FILE, MANIFEST_FILE, MODEL_FILE, PATTERN_INPUTS, Manifest, read_manifest, sha256_file
from ..options import graph_omits

OPSET = 18  # BitwiseXor (the random numbers) is opset 18
GRAPH_OMITS = graph_omits()  # what the options table says the graph does not apply
PAD = -1  # tokens past a row's length
EXTERNAL_MIN_BYTES = 4096  # initializers at least this big are read from model.onnx, not copied
BLOCK = 16  # top-k pre-selection: tokens per block (contiguous ids)
PRESELECT_MIN_VOCAB = 1024  # vocabularies this big pre-select blocks. Against one TopK over the row (top-40 of
# 10k, bench/results/sampler_ops.txt): the same time at batch 1, half at batch 64, 1.4x at batch 8, where its
# small TopKs fall under ONNX Runtime's threshold for a second thread


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

    def name(self, value: str, as_name: str) -> None:
        """Make `value` available under the fixed name `as_name` (a subgraph's output)."""
        self.nodes.append(_onnx().helper.make_node("Identity", [value], [as_name]))


def _onnx():
    import onnx

    return onnx


# -- random numbers ---------------------------------------------------------------------------------
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


def _uniform_table(g: _Nodes, keys: str, first_step: str, end_step: str) -> str:
    """lstmgen.rng.uniforms of steps first_step .. end_step - 1 and every row: float64 [steps, num, 1], hashed
    before the loop (the loop's table is as big as the tokens output), so that a step reads its slice of
    it instead of hashing (the trailing 1 is the sampler's column shape)."""
    T = _onnx().TensorProto
    steps = g.op("Cast", [g.op("Range", [first_step, end_step, g.const(1, np.int64)])], to=T.UINT32)
    mixed = g.op("BitwiseXor", [g.op("Unsqueeze", [steps, g.const([1, 2], np.int64)]),
                                g.op("Unsqueeze", [keys, g.const([0, 2], np.int64)])])
    return g.op("Mul", [g.op("Cast", [_fmix32(g, mixed)], to=T.DOUBLE), g.const(rng.UNIFORM_SCALE, np.float64)])


# -- the model's nodes --------------------------------------------------------------------------------
def _embed_step(g: _Nodes, step, names: dict[str, str], bound: dict[str, str]) -> dict[str, str]:
    """Append model.onnx's nodes to g: its initializers renamed by `names`, its inputs bound to the values
    in `bound` (graph input name -> value); returns graph output name -> the value holding it."""
    tag = f"{g.prefix}m{g.count}/"
    g.count += 1

    def rename(name: str) -> str:
        if not name:
            return name
        return names.get(name) or bound.get(name) or tag + name

    for node in step.graph.node:
        new = _onnx().NodeProto()
        new.CopyFrom(node)
        new.name = tag + node.name if node.name else ""
        new.input[:] = [rename(n) for n in node.input]
        new.output[:] = [rename(n) for n in node.output]
        g.nodes.append(new)
    return {o.name: rename(o.name) for o in step.graph.output}


# -- sampling ---------------------------------------------------------------------------------------
def _count(g: _Nodes, mask: str) -> str:
    """Per-row number of true entries of a [R, N] bool mask: int64 [R, 1]."""
    ones = g.op("Cast", [mask], to=_onnx().TensorProto.INT64)
    return g.op("ReduceSum", [ones, g.const([1], np.int64)], keepdims=1)


def _block_size(vocab: int) -> int:
    """BLOCK, or the divisor of the vocabulary nearest to it (8 to 32), so that no ragged block is left over."""
    for size in sorted(range(8, 33), key=lambda b: (abs(b - BLOCK), b)):
        if vocab % size == 0:
            return size
    return BLOCK


def _top_k(g: _Nodes, logits: str, s: dict, vocab: int) -> tuple[str, str]:
    """The k best logits of each row [R, k], best first and the lower id first among equals (as the
    kernel's order of preference), and their ids.

    A large vocabulary first keeps the k blocks of consecutive ids with the best maxima: every one of
    the k best tokens lies in one of them (a block left out has k blocks at least as good, each holding
    a token that beats all of its tokens), so TopK sorts k x block candidates, not the whole row.
    """
    k = s["k"]
    if vocab < PRESELECT_MIN_VOCAB:
        return g.op("TopK", [logits, k], n_out=2, axis=1, largest=1, sorted=1)
    axis1, size = g.const([1], np.int64), _block_size(vocab)
    block_max = g.op("Squeeze", [g.op("MaxPool", [g.op("Unsqueeze", [logits, axis1])], kernel_shape=[size],
                                      strides=[size]), axis1])  # [R, blocks]; a ragged tail is left out
    _, best = g.op("TopK", [block_max, s["k_blocks"]], n_out=2, axis=1, largest=1, sorted=1)
    # In ascending order, the candidates' positions follow their ids: TopK below then breaks ties by id.
    ordered, _ = g.op("TopK", [best, s["k_blocks"]], n_out=2, axis=1, largest=0, sorted=1)
    cands = g.op("Reshape", [g.op("Gather", [s["block_ids"], ordered]), g.const([0, -1], np.int64)])  # [R, kb * size]
    whole = vocab // size * size
    if vocab > whole:  # the tail's ids are the highest: appended, the order still follows the ids
        rows = g.op("Slice", [g.op("Shape", [cands]), g.const([0], np.int64), g.const([1], np.int64)])
        shape = g.op("Concat", [rows, g.const([vocab - whole], np.int64)], axis=0)
        cands = g.op("Concat", [cands, g.op("Expand", [g.const(np.arange(whole, vocab)[None], np.int64), shape])], axis=1)
    vals, pos = g.op("TopK", [g.op("GatherElements", [logits, cands], axis=1), k], n_out=2, axis=1, largest=1, sorted=1)
    return vals, g.op("GatherElements", [cands, pos], axis=1)


def _preselect_settings(g: _Nodes, k: str, vocab: int) -> dict:
    """What _top_k reads once per call for a large vocabulary: the blocks to keep and each block's ids."""
    if vocab < PRESELECT_MIN_VOCAB:
        return {}
    size = _block_size(vocab)
    blocks = vocab // size
    ids = g.op("Reshape", [g.op("Range", [g.const(0, np.int64), g.const(blocks * size, np.int64), g.const(1, np.int64)]),
                           g.const([blocks, size], np.int64)])
    return {"k_blocks": g.op("Min", [k, g.const([blocks], np.int64)]), "block_ids": ids}


def _scaled_probs(g: _Nodes, logits: str, top: str, inv_t: str) -> str:
    """exp((x - max) * (1/T)) in float64, the subtraction in float32 as the Numba kernel does it."""
    z = g.op("Cast", [g.op("Sub", [logits, top])], to=_onnx().TensorProto.DOUBLE)
    return g.op("Exp", [g.op("Mul", [z, inv_t])])


def _last_column(g: _Nodes, x: str) -> str:
    """x[:, -1:]: the total of a cumulative sum along axis 1."""
    return g.op("Slice", [x, g.const([-1], np.int64), g.const([np.iinfo(np.int64).max], np.int64), g.const([1], np.int64)])


def _full_distribution(prefix: str, consts: dict, logits: str, u: str, s: dict) -> tuple[_Nodes, str]:
    """No filter: invert the CDF in id order (first id whose running sum exceeds u x total).

    logits [R, V] with R = 1 (the prompt's, shared by every row) or the batch; u [B, 1]. Some id always
    exceeds the target (u < 1 and the total is at least 1, the top token's exp(0)), and it is one with
    mass: the kernel's fallback (the last id with mass) never applies, so the graph leaves it out."""
    g = _Nodes(prefix + "full/", consts)
    top = g.op("ReduceMax", [logits, g.const([1], np.int64)], keepdims=1)
    cum = g.op("CumSum", [_scaled_probs(g, logits, top, s["inv_t"]), g.const(1, np.int64)])
    first_above = _count(g, g.op("LessOrEqual", [cum, g.op("Mul", [u, _last_column(g, cum)])]))
    return g, first_above


def _filtered(prefix: str, consts: dict, logits: str, u: str, s: dict, vocab: int, shared: bool,
              top_p: bool) -> tuple[_Nodes, str]:
    """top-k (greedy: top-1), then (top_p) top-p of what top-k kept, on the distribution sorted by probability.

    logits [R, V]: R = 1 when shared (the prompt's logits, every row's), else the batch; u [B, 1]. Without
    top-p every candidate is kept. The kernel's bounds on the places (at most k - 1, at most the last kept
    one) never bind: the running sum reaches the limit (top_p x total <= total) by the last candidate, and
    passes the target (u x the kept mass, u < 1) by the last kept one; so the graph leaves them out."""
    g = _Nodes(prefix + ("top_p/" if top_p else "top_k/"), consts)
    axis = g.const([1], np.int64)
    vals, ids = _top_k(g, logits, s, vocab)
    top = g.op("Slice", [vals, g.const([0], np.int64), g.const([1], np.int64), axis])
    cum = g.op("CumSum", [_scaled_probs(g, vals, top, s["inv_t"]), g.const(1, np.int64)])
    if top_p:  # kept: the candidates until their mass reaches the limit, the one crossing it included
        last = _count(g, g.op("Less", [cum, g.op("Mul", [s["top_p"], _last_column(g, cum)])]))  # the last kept one's place
        target = g.op("Mul", [u, g.op("GatherElements", [cum, last], axis=1)])
    else:
        target = g.op("Mul", [u, _last_column(g, cum)])
    pick = _count(g, g.op("LessOrEqual", [cum, target]))  # [B, 1]: the first place past the target
    if shared:
        ids = g.op("Expand", [ids, g.op("Shape", [pick])])  # [1, k] -> [B, k]: every row's candidates
    return g, g.op("GatherElements", [ids, pick], axis=1)


def _branch(name: str, g: _Nodes, out: str):
    """A no-input subgraph (If branch) returning `out`: int64 [batch, 1]."""
    h = _onnx().helper
    return h.make_graph(g.nodes, name, [], [h.make_tensor_value_info(out, _onnx().TensorProto.INT64, ["batch", 1])])


def _sampler(g: _Nodes, consts: dict, logits: str, u: str, s: dict, vocab: int, shared: bool = False) -> str:
    """The next token of each row [B, 1] (the model's tokens input as it is) from logits [R, V] and the rows'
    uniforms u [B, 1]: top-k with or without top-p, or the unfiltered distribution, chosen once per call by
    the settings (If nodes, one or two a step). shared: R = 1, the prompt's logits for every row."""
    fg, full_tok = _full_distribution(g.prefix, consts, logits, u, s)
    pg, top_p_tok = _filtered(g.prefix, consts, logits, u, s, vocab, shared, top_p=True)
    kg, top_k_tok = _filtered(g.prefix, consts, logits, u, s, vocab, shared, top_p=False)
    fg2 = _Nodes(g.prefix + "filtered/", consts)
    filtered_tok = fg2.op("If", [s["top_p_on"]], then_branch=_branch("top_p", pg, top_p_tok),
                          else_branch=_branch("top_k", kg, top_k_tok))
    return g.op("If", [s["filtered"]], then_branch=_branch("filtered", fg2, filtered_tok),
                else_branch=_branch("full", fg, full_tok))


def _ban(g: _Nodes, logits: str, s: dict, rows: str | None) -> str:
    """logits [B, V] with the banned ids at -inf; `rows` is a 1-D int64 tensor holding B (None: B is num).
    A scatter of B x K values that ONNX Runtime does in place (rather than a pass over the logits, or
    folding the ban into the head's bias, which would keep an int8 head from fusing with its bias)."""
    ids, values = s["ban_ids"], s["ban_values"]
    if rows is not None:
        ids, values = (g.op("Slice", [x, g.const([0], np.int64), rows, g.const([0], np.int64)]) for x in (ids, values))
    return g.op("ScatterElements", [logits, ids, values], axis=1)


# -- the decode loop ----------------------------------------------------------------------------------
def _state_shapes(m: Manifest) -> list[tuple[str, str, list]]:
    """(input name, output name, shape) of each state tensor model.onnx takes and gives back."""
    d = m.dims
    return [(name_in, name_out, [layers.stop - layers.start, "batch", d.hidden_size])
            for name_in, name_out, _, layers in m.io.state_tensors(d.num_layers)]


def _end_rows(g: _Nodes, s: dict, drawn: dict, carried: list[str], rows: str, axes: list[int]):
    """Write each row's token (PAD for <eos>) into its column of `num` (tokens and rows [B, 1]), and keep the
    rows that did not end (<eos>, or a pattern's state that allows nothing more): (column [num, 1], the carried
    values of the kept rows, whether any row is left)."""
    tok, is_eos = drawn["tok"], drawn["is_eos"]
    written = tok if is_eos is None else g.op("Where", [is_eos, g.const(PAD, np.int64), tok])
    column = g.op("ScatterElements", [s["pad_row"], rows, written], axis=0)
    keep = g.op("Gather", [g.op("NonZero", [g.op("Not", [drawn["ended"]])]), g.const(0, np.int64)])  # the rows' places
    kept = [g.op("Gather", [x, keep], axis=axis) for x, axis in zip(carried, axes)]
    return column, kept, g.op("Greater", [g.op("Size", [keep]), g.const(0, np.int64)])


def _draw(g: _Nodes, consts: dict, s: dict, logits: str, u: str, vocab: int, states: str | None,
          shared: bool = False) -> dict:
    """One token per row from logits [R, V] (bans applied): sampled, and with pattern states [R, 1] masked by
    the pattern first and the pattern followed. Returns tok, is_eos (None for running text), the pattern
    state after (`after`; None without states) and which rows end (`ended`: <eos>, or a pattern's state that
    allows nothing; None when no row can end), each [B, 1]."""
    if states is not None:
        logits = _mask_by_pattern(g, logits, states)
    tok = _sampler(g, consts, logits, u, s, vocab, shared)
    is_eos = g.op("Equal", [tok, g.const(s["eos"], np.int64)]) if s["eos"] >= 0 else None
    if states is None:
        return {"tok": tok, "is_eos": is_eos, "after": None, "ended": is_eos}
    after, ended = _advance_pattern(g, s, states, tok, is_eos, vocab)
    return {"tok": tok, "is_eos": is_eos, "after": after, "ended": ended}


# -- patterns (lstmgen.patterns): a mask before sampling, each row's automaton state carried through the Loop --
PATTERN_NEXT, PATTERN_START = PATTERN_INPUTS


def _pattern_settings(g: _Nodes) -> dict:
    """Outer-scope values of the pattern: whether there is one, the table flattened, the states that allow nothing."""
    table = PATTERN_NEXT
    return {"pattern_on": g.op("Greater", [g.op("ReduceMax", [g.op("Abs", [table])], keepdims=0), g.const(0, np.int32)]),
            "pattern_flat": g.op("Cast", [g.op("Reshape", [table, g.const([-1], np.int64)])], to=_onnx().TensorProto.INT64),
            "pattern_terminal": g.op("Less", [g.op("ReduceMax", [table, g.const([1], np.int64)], keepdims=0),
                                              g.const(0, np.int32)])}


def _pattern_inputs(m: Manifest) -> list:
    """The graph inputs of a pattern: its table and the rows' start state."""
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    return [h.make_tensor_value_info(PATTERN_NEXT, T.INT32, ["pattern_states", m.dims.vocab_size]),
            h.make_tensor_value_info(PATTERN_START, T.INT64, [])]


def _mask_by_pattern(g: _Nodes, logits: str, states: str) -> str:
    """Logits [R, V] with the tokens each row's state (states [R, 1]) does not allow at -inf. Without a
    pattern the caller's table allows everything, so the first token is masked either way (once per call)
    and only the pattern's loop masks each step."""
    rows_next = g.op("Gather", [PATTERN_NEXT, g.op("Reshape", [states, g.const([-1], np.int64)])], axis=0)
    return g.op("Where", [g.op("Greater", [rows_next, g.const(-1, np.int32)]), logits, g.const(-np.inf, np.float32)])


def _advance_pattern(g: _Nodes, s: dict, states: str, tok: str, is_eos: str | None, vocab: int) -> tuple[str, str]:
    """(each row's state after its token, which rows end: <eos>, or a state that allows nothing more), all [B, 1]."""
    after = g.op("Gather", [s["pattern_flat"], g.op("Add", [g.op("Mul", [states, g.const(vocab, np.int64)]), tok])], axis=0)
    terminal = g.op("Gather", [s["pattern_terminal"], after], axis=0)
    return after, terminal if is_eos is None else g.op("Or", [is_eos, terminal])


def _loop_body(step, weights: list, own_weights: bool, consts: dict, m: Manifest, s: dict, pattern: bool):
    """One decode step: the model on the rows still going, a token for each, rows that ended leave.

    Rows leave the batch when they finish, as in the Python decode loop, so later steps cost only
    what is still running (and dynamic int8 quantizes the same batches as the Python engine does).
    Without a pattern, rows of running text never end, so that body tracks no rows (fewer nodes a step).
    With own_weights the body holds its own copy of the weight entries (the same bytes of model.onnx):
    ONNX Runtime pre-packs the LSTM's weights only when they are initializers of the node's own graph,
    and without that a batch-1 step costs several times more. ONNX Runtime Web cannot read external
    data of a subgraph's initializers, so its graph (generate-web.onnx) reads the outer graph's instead.
    """
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    p = _loop_prefix(pattern)
    g = _Nodes(p, consts)
    states, spec = _state_shapes(m), _carried(m, s, pattern)
    names = {w.name: f"{p}{w.name}" if own_weights else w.name for w in weights}
    bound = {m.io.tokens: f"{p}tok"}  # [B, 1]: the model's tokens input as it is
    bound |= {name_in: f"{p}{name_in}" for name_in, _, _ in states}
    outs = _embed_step(g, step, names, bound)
    logits = g.op("Squeeze", [outs[m.io.logits], g.const([1], np.int64)])  # [B, 1, V] -> [B, V]
    tracked = _tracks_rows(s, pattern)
    logits = _ban(g, logits, s, g.op("Shape", [f"{p}tok"], end=1) if tracked else None)
    uniforms = g.op("Gather", [s["uniforms"], f"{p}iter"])  # [num, 1]: iteration i draws step i + 1's
    u = g.op("GatherElements", [uniforms, f"{p}rows"], axis=0) if tracked else uniforms
    drawn = _draw(g, consts, s, logits, u, m.dims.vocab_size, f"{p}pattern_states" if pattern else None)
    carried = [drawn["tok"]] + [outs[name_out] for _, name_out, _ in states]
    carried += [drawn["after"]] if pattern else []
    if tracked:
        column, carried, more = _end_rows(g, s, drawn, carried + [f"{p}rows"], f"{p}rows", [a for *_, a in spec])
    else:  # running text without a pattern: every row writes max_tokens tokens
        column, more = drawn["tok"], g.const(True, np.bool_)
    for value, name in zip([more, *carried, column], ["cond", *(n for n, *_ in spec), "column"]):
        g.name(value, f"{p}{name}_out")
    inputs = [h.make_tensor_value_info(f"{p}iter", T.INT64, []), h.make_tensor_value_info(f"{p}cond", T.BOOL, [])]
    inputs += [h.make_tensor_value_info(f"{p}{n}", t, shape) for n, t, shape, _ in spec]
    outputs = [h.make_tensor_value_info(f"{p}cond_out", T.BOOL, [])]
    outputs += [h.make_tensor_value_info(f"{p}{n}_out", t, shape) for n, t, shape, _ in spec]
    outputs += [h.make_tensor_value_info(f"{p}column_out", T.INT64, ["num", 1])]
    return h.make_graph(g.nodes, f"decode_step{'_pattern' if pattern else ''}", inputs, outputs,
                        initializer=_own_copies(weights, names, p) if own_weights else [])


def _loop_prefix(pattern: bool) -> str:
    return "pattern_loop/" if pattern else "loop/"


def _tracks_rows(s: dict, pattern: bool) -> bool:
    """Whether a loop keeps which row of `num` each batch row is: when rows can end (records, or a pattern)."""
    return pattern or s["eos"] >= 0


def _carried(m: Manifest, s: dict, pattern: bool) -> list[tuple[str, int, list, int]]:
    """(name, type, shape, batch axis) of the values a loop carries from one step to the next, in the Loop's
    order: each row's last token, the model's state tensors, (pattern) each row's pattern state, and (when
    rows can end) which row of `num` each batch row is. _first_tokens gives their first values by name."""
    T = _onnx().TensorProto
    spec = [("tok", T.INT64, ["batch", 1], 0)] + [(name_in, T.FLOAT, shape, 1) for name_in, _, shape in _state_shapes(m)]
    spec += [("pattern_states", T.INT64, ["batch", 1], 0)] if pattern else []
    return spec + ([("rows", T.INT64, ["batch", 1], 0)] if _tracks_rows(s, pattern) else [])


def _decode_loops(g: _Nodes, step, weights: list, own_weights: bool, consts: dict, m: Manifest, s: dict,
                  first: dict, more: str) -> str:
    """The Loop's columns [steps, num, 1]: the pattern's loop or the plain one, picked once per call (an If on
    pattern_on), so that a call without a pattern runs no pattern node in its steps. Each loop's body holds its
    own weight entries (twice the loop's weights in memory, the price of a plain step as fast as before)."""
    h, T = _onnx().helper, _onnx().TensorProto
    steps_left = g.op("Sub", ["max_tokens", g.const(1, np.int64)])
    branches = {}
    for pattern in (True, False):
        spec = _carried(m, s, pattern)
        branch = _Nodes(f"main/{_loop_prefix(pattern)}", consts)
        body = _loop_body(step, weights, own_weights, consts, m, s, pattern)
        *_, columns = branch.op("Loop", [steps_left, more, *(first[n] for n, *_ in spec)], n_out=len(spec) + 1, body=body)
        out = f"main/{_loop_prefix(pattern)}columns"
        branch.name(columns, out)
        branches[pattern] = h.make_graph(branch.nodes, f"decode{'_pattern' if pattern else ''}", [],
                                         [h.make_tensor_value_info(out, T.INT64, ["steps", "num", 1])])
    return g.op("If", [s["pattern_on"]], then_branch=branches[True], else_branch=branches[False])


def _own_copies(weights: list, names: dict[str, str], prefix: str) -> list:
    """The loop body's own entries for the weights it reads under `names` (same bytes, new names)."""
    copies = []
    for w in weights:
        if names[w.name] != w.name and names[w.name].startswith(prefix):
            copy = _onnx().TensorProto()
            copy.CopyFrom(w)
            copy.name = names[w.name]
            copies.append(copy)
    return copies


def _settings(g: _Nodes, m: Manifest) -> dict:
    """Per-call values the loop reads from the outer scope: flags, 1/T, k, the banned ids and their -inf
    for every row, the uniforms of every step and row, the PAD row."""
    V = m.dims.vocab_size
    greedy = g.op("Equal", ["temperature", g.const(0.0, np.float64)])
    k_valid = g.op("And", [g.op("Greater", ["top_k", g.const(0, np.int64)]), g.op("Less", ["top_k", g.const(V, np.int64)])])
    k = g.op("Reshape", [g.op("Where", [greedy, g.const(1, np.int64), g.op("Where", [k_valid, "top_k", g.const(V, np.int64)])]),
                         g.const([1], np.int64)])
    num1 = g.op("Reshape", ["num", g.const([1], np.int64)])
    ban_shape = g.op("Concat", [num1, g.op("Shape", ["banned_ids"])], axis=0)  # [num, K]
    keys = _row_keys(g, "seed", "num")
    tokenizer_eos = m.tokenizer.get("eos_id")
    top_p_on = g.op("And", [g.op("Not", [greedy]), g.op("Less", ["top_p", g.const(1.0, np.float64)])])
    return {
        **_preselect_settings(g, k, V), "top_p_on": top_p_on,
        "filtered": g.op("Or", [greedy, g.op("Or", [k_valid, top_p_on])]),
        "inv_t": g.op("Where", [greedy, g.const(1.0, np.float64), g.op("Div", [g.const(1.0, np.float64), "temperature"])]),
        "k": k, "top_p": "top_p",
        "ban_ids": g.op("Expand", ["banned_ids", ban_shape]),
        "ban_values": g.op("ConstantOfShape", [ban_shape], value=_onnx().numpy_helper.from_array(np.array([-np.inf], np.float32))),
        "uniforms0": _uniform_table(g, keys, g.const(0, np.int64), g.const(1, np.int64)),  # [1, num, 1]: step 0
        "uniforms": _uniform_table(g, keys, g.const(1, np.int64), "max_tokens"),  # steps 1 .. max_tokens - 1
        "pad_row": g.op("ConstantOfShape", [g.op("Concat", [num1, g.const([1], np.int64)], axis=0)],  # [num, 1]
                        value=_onnx().numpy_helper.from_array(np.array([PAD], np.int64))),
        "eos": -1 if tokenizer_eos is None else int(tokenizer_eos),  # -1: running text never stops at <eos>
        **_pattern_settings(g),
    }


def _first_tokens(g: _Nodes, consts: dict, step, weights: list, m: Manifest, s: dict):
    """Prefill the context, sample every row's first token from its last logits (shared by all rows), and
    keep the rows that did not end: (column 0 [num, 1], the first value of each value a loop carries, by
    name (_carried), whether any row is left)."""
    d = m.dims
    context = g.op("Unsqueeze", [g.op("Concat", [g.const(m.start_ids, np.int64), "prompt_ids"], axis=0),
                                 g.const([0], np.int64)])
    states = _state_shapes(m)
    bound = {m.io.tokens: context} | {name_in: g.const(np.zeros((shape[0], 1, d.hidden_size)), np.float32)
                                      for name_in, _, shape in states}
    outs = _embed_step(g, step, {w.name: w.name for w in weights}, bound)
    last = _ban(g, g.op("Gather", [outs[m.io.logits], g.const(-1, np.int64)], axis=1), s, g.const([1], np.int64))  # [1, V]
    start = g.op("Reshape", [PATTERN_START, g.const([1, 1], np.int64)])  # every row's pattern state: the prompt's
    drawn = _draw(g, consts, s, last, g.op("Gather", [s["uniforms0"], g.const(0, np.int64)]), d.vocab_size, start,
                  shared=True)
    num1 = g.op("Reshape", ["num", g.const([1], np.int64)])
    carried = [drawn["tok"]] + [g.op("Expand", [outs[name_out], g.op("Concat", [g.const([shape[0]], np.int64), num1,
                                                                                 g.const([d.hidden_size], np.int64)], axis=0)])
                                for _, name_out, shape in states]
    rows = g.op("Unsqueeze", [g.op("Range", [g.const(0, np.int64), "num", g.const(1, np.int64)]), g.const([1], np.int64)])
    spec = _carried(m, s, pattern=True)  # every value either loop carries
    column, kept, more = _end_rows(g, s, drawn, carried + [drawn["after"], rows], rows, [a for *_, a in spec])
    return column, {name: value for (name, *_), value in zip(spec, kept)}, more


def _all_tokens(g: _Nodes, first: str, columns: str) -> str:
    """tokens [num, max_tokens]: column 0 [num, 1], the loop's columns [steps, num, 1] (none if it never ran),
    padded."""
    rows = g.op("Concat", [g.const([-1], np.int64), g.op("Reshape", ["num", g.const([1], np.int64)])], axis=0)
    later = g.op("Reshape", [columns, rows])  # [steps, num]; a loop that never ran gives [0, 0]: [0, num]
    written = g.op("Transpose", [g.op("Concat", [g.op("Reshape", [first, rows]), later], axis=0)], perm=[1, 0])
    width = g.op("Slice", [g.op("Shape", [written]), g.const([1], np.int64), g.const([2], np.int64)])
    missing = g.op("Sub", [g.op("Reshape", ["max_tokens", g.const([1], np.int64)]), width])
    pads = g.op("Concat", [g.const([0, 0, 0], np.int64), missing], axis=0)
    return g.op("Pad", [written, pads, g.const(PAD, np.int64)], mode="constant")

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
    for_web: the layout ONNX Runtime Web can load (generate-web.onnx; see _loop_body).
    """
    onnx = _onnx()
    h, T = onnx.helper, onnx.TensorProto
    weights = list(step.graph.initializer) if step_bytes is None else _weights_from_step_file(step, step_bytes)
    consts: dict = {}
    g = _Nodes("main/", consts)
    s = _settings(g, m)
    first, carried, more = _first_tokens(g, consts, step, weights, m, s)
    columns = _decode_loops(g, step, weights, not for_web, consts, m, s, carried, more)
    g.nodes.append(h.make_node("Identity", [_all_tokens(g, first, columns)], ["tokens"]))
    g.nodes.append(h.make_node("ReduceSum", [g.op("Cast", [g.op("GreaterOrEqual", ["tokens", g.const(0, np.int64)])],
                                                  to=T.INT64), g.const([1], np.int64)], ["lengths"], keepdims=0))
    scalar = lambda name, t: h.make_tensor_value_info(name, t, [])  # noqa: E731
    inputs = [h.make_tensor_value_info("prompt_ids", T.INT64, ["prompt"]), scalar("num", T.INT64),
              scalar("max_tokens", T.INT64), scalar("seed", T.INT64), scalar("temperature", T.DOUBLE),
              scalar("top_k", T.INT64), scalar("top_p", T.DOUBLE), h.make_tensor_value_info("banned_ids", T.INT64, ["banned"]),
              *_pattern_inputs(m)]
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
    m = read_manifest(folder, check_graphs=False)  # the graphs it names are the ones being rebuilt
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
