"""The artifact's ONNX graph, written from weights: one step of embedding -> LSTM layers -> head.

Written directly with onnx.helper rather than traced by torch.onnx: the model is small and fixed
(Gather -> one ONNX `LSTM` op per layer -> MatMul + Add), so writing it keeps the `LSTM` op (which
ONNX Runtime runs fastest and quantizes to int8) and named inputs with dynamic batch and time axes,
whatever torch.onnx's exporter of the day emits. It takes PyTorch-layout numpy weights (state_dict
names), so the exporter and the bench's random-weight models share it. Needs the `onnx` package
(the `train` or `bench` extra), never torch.
"""

from __future__ import annotations

import numpy as np

from ..manifest import IONames

OPSET = 17


def build_step_graph(sd: dict[str, np.ndarray], num_layers: int):
    """tokens [B,T] int64, h0/c0 [L,B,H] -> logits [B,T,V], h1/c1 [L,B,H], from state_dict arrays."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .. import __version__

    V, E = sd["embed.weight"].shape
    H = sd["lstm.weight_hh_l0"].shape[1]
    L = num_layers
    io = IONames()
    inits = [numpy_helper.from_array(np.asarray(sd["embed.weight"], np.float32), "embedding")]
    nodes = [
        helper.make_node("Transpose", [io.tokens], ["tokens_tb"], perm=[1, 0]),  # [B,T] -> [T,B]
        helper.make_node("Gather", ["embedding", "tokens_tb"], ["x0"]),  # [T,B,E]
    ]

    def gates(w: np.ndarray) -> np.ndarray:
        i, f, g, o = np.split(np.asarray(w, np.float32), 4, axis=0)  # PyTorch: i, f, g, o; ONNX: i, o, f, c
        return np.concatenate([i, o, f, g], axis=0)

    x = "x0"
    for layer in range(L):
        W = gates(sd[f"lstm.weight_ih_l{layer}"])[None]  # [1, 4H, in]
        R = gates(sd[f"lstm.weight_hh_l{layer}"])[None]  # [1, 4H, H]
        B = np.concatenate([gates(sd[f"lstm.bias_ih_l{layer}"]), gates(sd[f"lstm.bias_hh_l{layer}"])])[None]  # [1, 8H]
        inits += [numpy_helper.from_array(W, f"W{layer}"), numpy_helper.from_array(R, f"R{layer}"),
                  numpy_helper.from_array(B, f"B{layer}"),
                  numpy_helper.from_array(np.array([layer], np.int64), f"start{layer}"),
                  numpy_helper.from_array(np.array([layer + 1], np.int64), f"end{layer}")]
        nodes += [
            helper.make_node("Slice", [io.h0, f"start{layer}", f"end{layer}", "axis0"], [f"h0_{layer}"]),  # [1,B,H]
            helper.make_node("Slice", [io.c0, f"start{layer}", f"end{layer}", "axis0"], [f"c0_{layer}"]),
            helper.make_node("LSTM", [x, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}", f"c0_{layer}"],
                             [f"y{layer}", f"h1_{layer}", f"c1_{layer}"], hidden_size=H, direction="forward"),
            helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]),  # [T,1,B,H] -> [T,B,H]
        ]
        x = f"x{layer + 1}"
    inits += [numpy_helper.from_array(np.array([0], np.int64), "axis0"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.ascontiguousarray(np.asarray(sd["head.weight"], np.float32).T), "head_w"),
              numpy_helper.from_array(np.asarray(sd["head.bias"], np.float32), "head_b")]
    nodes += [
        helper.make_node("Concat", [f"h1_{i}" for i in range(L)], [io.h1], axis=0),  # [L,B,H]
        helper.make_node("Concat", [f"c1_{i}" for i in range(L)], [io.c1], axis=0),
        helper.make_node("Transpose", [x], ["y_bth"], perm=[1, 0, 2]),  # [T,B,H] -> [B,T,H]
        helper.make_node("MatMul", ["y_bth", "head_w"], ["scores"]),  # [B,T,V]
        helper.make_node("Add", ["scores", "head_b"], [io.logits]),
    ]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "lstmgen_step",
        [helper.make_tensor_value_info(io.tokens, TensorProto.INT64, ["batch", "time"]),
         helper.make_tensor_value_info(io.h0, f32, [L, "batch", H]),
         helper.make_tensor_value_info(io.c0, f32, [L, "batch", H])],
        [helper.make_tensor_value_info(io.logits, f32, ["batch", "time", V]),
         helper.make_tensor_value_info(io.h1, f32, [L, "batch", H]),
         helper.make_tensor_value_info(io.c1, f32, [L, "batch", H])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstmgen",
                          producer_version=__version__)
    m.ir_version = 8  # readable by every ONNX Runtime of the last years
    onnx.checker.check_model(m)
    return m


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
