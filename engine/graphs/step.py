"""The artifact's ONNX graph, written from weights: one step of embedding -> LSTM layers -> head.

Written directly with onnx.helper rather than traced by torch.onnx: the model is small and fixed
(Gather -> one ONNX `LSTM` op per layer -> MatMul + Add), so writing it keeps the `LSTM` op (which
ONNX Runtime runs fastest and quantizes to int8) and named inputs with dynamic batch and time axes,
whatever torch.onnx's exporter of the day emits. It takes PyTorch-layout numpy weights (state_dict
names), so the exporter and the bench's random-weight models share it. Needs the `onnx` package
(the `train` or `bench` extra), never torch.

The state goes in and out per layer (format 2), each tensor straight into and out of its layer's LSTM
op: a step runs 2L + 5 nodes and nothing else. `per_layer_state` rewrites a format-1 graph (stacked
state, sliced and concatenated around the layers) that way without touching its weights.
"""

from __future__ import annotations

import numpy as np

from ..manifest import STATE_PER_LAYER, STATE_STACKED, IONames

OPSET = 17


def build_step_graph(sd: dict[str, np.ndarray], num_layers: int, state: str = STATE_PER_LAYER):
    """tokens [B,T] int64 and the state -> logits [B,T,V] and the new state, from state_dict arrays.

    state=STATE_PER_LAYER (format 2): h0_<l>/c0_<l> [1,B,H] in, h1_<l>/c1_<l> out, fed to and taken from
    each layer's LSTM op as they are. STATE_STACKED (format 1, kept for tests and the bench's before/after):
    h0/c0 [L,B,H], sliced per layer and concatenated back, 2L + 2 nodes more per step.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .. import __version__

    V, E = sd["embed.weight"].shape
    H = sd["lstm.weight_hh_l0"].shape[1]
    L = num_layers
    io = IONames(state=state)
    inits = [numpy_helper.from_array(np.asarray(sd["embed.weight"], np.float32), "embedding")]
    nodes = [
        helper.make_node("Transpose", [io.tokens], ["tokens_tb"], perm=[1, 0]),  # [B,T] -> [T,B]
        helper.make_node("Gather", ["embedding", "tokens_tb"], ["x0"]),  # [T,B,E]
    ]
    x = "x0"
    for layer in range(L):
        inits += _layer_weights(sd, layer)
        nodes += [
            helper.make_node("LSTM", [x, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}", f"c0_{layer}"],
                             [f"y{layer}", f"h1_{layer}", f"c1_{layer}"], hidden_size=H, direction="forward"),
            helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]),  # [T,1,B,H] -> [T,B,H]
        ]
        x = f"x{layer + 1}"
    inits += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.ascontiguousarray(np.asarray(sd["head.weight"], np.float32).T), "head_w"),
              numpy_helper.from_array(np.asarray(sd["head.bias"], np.float32), "head_b")]
    nodes += [
        helper.make_node("Transpose", [x], ["y_bth"], perm=[1, 0, 2]),  # [T,B,H] -> [B,T,H]
        helper.make_node("MatMul", ["y_bth", "head_w"], ["scores"]),  # [B,T,V]
        helper.make_node("Add", ["scores", "head_b"], [io.logits]),
    ]
    f32 = TensorProto.FLOAT
    states = io.state_tensors(L)
    graph = helper.make_graph(
        nodes, "lstmgen_step",
        [helper.make_tensor_value_info(io.tokens, TensorProto.INT64, ["batch", "time"])]
        + [helper.make_tensor_value_info(name_in, f32, [layers.stop - layers.start, "batch", H]) for name_in, _, _, layers in states],
        [helper.make_tensor_value_info(io.logits, f32, ["batch", "time", V])]
        + [helper.make_tensor_value_info(name_out, f32, [layers.stop - layers.start, "batch", H]) for _, name_out, _, layers in states],
        inits)
    if state == STATE_STACKED:
        graph = _stacked(graph, L)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstmgen",
                          producer_version=__version__)
    m.ir_version = 8  # readable by every ONNX Runtime of the last years
    onnx.checker.check_model(m)
    return m


def _layer_weights(sd: dict[str, np.ndarray], layer: int) -> list:
    """Layer `layer`'s ONNX LSTM weights W [1,4H,in], R [1,4H,H], B [1,8H] in ONNX's gate order."""
    from onnx import numpy_helper

    def gates(w: np.ndarray) -> np.ndarray:
        i, f, g, o = np.split(np.asarray(w, np.float32), 4, axis=0)  # PyTorch: i, f, g, o; ONNX: i, o, f, c
        return np.concatenate([i, o, f, g], axis=0)

    bias = np.concatenate([gates(sd[f"lstm.bias_ih_l{layer}"]), gates(sd[f"lstm.bias_hh_l{layer}"])])[None]
    return [numpy_helper.from_array(gates(sd[f"lstm.weight_ih_l{layer}"])[None], f"W{layer}"),
            numpy_helper.from_array(gates(sd[f"lstm.weight_hh_l{layer}"])[None], f"R{layer}"),
            numpy_helper.from_array(bias, f"B{layer}")]


def _stacked(graph, num_layers: int):
    """The format-1 graph: stacked h0/c0 [L,B,H] sliced into the layers' h0_<l>/c0_<l>, and the layers'
    h1_<l>/c1_<l> concatenated into h1/c1."""
    from onnx import TensorProto, helper, numpy_helper

    io = IONames(state=STATE_STACKED)
    H = graph.input[1].type.tensor_type.shape.dim[2].dim_value
    slices, inits = [], [numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    for layer in range(num_layers):
        inits += [numpy_helper.from_array(np.array([layer], np.int64), f"start{layer}"),
                  numpy_helper.from_array(np.array([layer + 1], np.int64), f"end{layer}")]
        slices += [helper.make_node("Slice", [name, f"start{layer}", f"end{layer}", "axis0"], [f"{name}_{layer}"])
                   for name in (io.h0, io.c0)]
    concats = [helper.make_node("Concat", [f"{name}_{layer}" for layer in range(num_layers)], [name], axis=0)
               for name in (io.h1, io.c1)]
    state = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [num_layers, "batch", H]) for name in (io.h0, io.c0)]
    new_state = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [num_layers, "batch", H]) for name in (io.h1, io.c1)]
    return helper.make_graph(slices + list(graph.node) + concats, graph.name, [graph.input[0], *state],
                             [graph.output[0], *new_state], list(graph.initializer) + inits)


def per_layer_state(model):
    """A format-1 step graph (stacked h0/c0, fp32 or int8) rewritten with per-layer state; the weights and
    every other node are left as they are, so an artifact is upgraded without its training checkpoint.

    The format-1 graph slices h0/c0 into h0_<l>/c0_<l> for each layer's LSTM and concatenates the layers'
    h1_<l>/c1_<l> into h1/c1: those per-layer values become the graph's inputs and outputs.
    """
    import onnx
    from onnx import TensorProto, helper

    stacked, io = IONames(state=STATE_STACKED), IONames()
    g = model.graph
    inputs = {i.name: i for i in g.input}
    if stacked.h0 not in inputs or stacked.c0 not in inputs:
        raise ValueError("not a format-1 lstmgen step graph (it has no stacked h0/c0 inputs)")
    L, H = (d.dim_value for d in (inputs[stacked.h0].type.tensor_type.shape.dim[i] for i in (0, 2)))
    drop = [n for n in g.node if (n.op_type == "Slice" and n.input[0] in (stacked.h0, stacked.c0))
            or (n.op_type == "Concat" and n.output[0] in (stacked.h1, stacked.c1))]
    if len(drop) != 2 * L + 2:
        raise ValueError("not a format-1 lstmgen step graph (its state is not sliced per layer)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for n in g.node if n not in drop)
    f32 = TensorProto.FLOAT
    del out.graph.input[:], out.graph.output[:]
    out.graph.input.extend([inputs[io.tokens]] + [helper.make_tensor_value_info(name_in, f32, [1, "batch", H])
                                                  for name_in, _, _, _ in io.state_tensors(L)])
    out.graph.output.extend([next(o for o in g.output if o.name == io.logits)]
                            + [helper.make_tensor_value_info(name_out, f32, [1, "batch", H])
                               for _, name_out, _, _ in io.state_tensors(L)])
    used = {name for n in out.graph.node for name in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out


def step_flops(vocab: int, embed: int, hidden: int, layers: int) -> int:
    """Multiply-adds x 2 of one token's step: the LSTM gate products and the head (embedding is a lookup)."""
    lstm = sum(4 * hidden * ((embed if layer == 0 else hidden) + hidden) for layer in range(layers))
    return 2 * (lstm + hidden * vocab)


def read_step_weights(model) -> tuple[dict[str, np.ndarray], int]:
    """The inverse of build_step_graph for an fp32 graph: state_dict-layout arrays and the layer count."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if "embedding" not in init or "W0" not in init:
        raise ValueError("not an fp32 lstmgen step graph (int8 graphs keep no float weights)")
    L = sum(1 for k in init if k.startswith("W") and k[1:].isdigit())

    def torch_order(w: np.ndarray) -> np.ndarray:
        i, o, f, c = np.split(w, 4, axis=0)
        return np.concatenate([i, f, c, o], axis=0)

    sd = {"embed.weight": init["embedding"], "head.weight": init["head_w"].T.copy(), "head.bias": init["head_b"]}
    for layer in range(L):
        H4 = init[f"W{layer}"].shape[1]
        b = init[f"B{layer}"][0]
        sd[f"lstm.weight_ih_l{layer}"] = torch_order(init[f"W{layer}"][0])
        sd[f"lstm.weight_hh_l{layer}"] = torch_order(init[f"R{layer}"][0])
        sd[f"lstm.bias_ih_l{layer}"] = torch_order(b[:H4])
        sd[f"lstm.bias_hh_l{layer}"] = torch_order(b[H4:])
    return sd, L
