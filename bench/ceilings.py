"""This machine's ceilings and floors, measured in a child process with the BLAS handicap removed.

Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force an older OpenBLAS kernel and
make NumPy's matrix product (and so any ceiling measured with it) much slower than the hardware.
The probe therefore runs as `python -m lstmgen.bench.ceilings '<json job>'` with those two
variables removed from its environment only (the bench's own workers, tests and CI keep theirs),
and names the BLAS kernel that ran (threadpoolctl). Every probe is run at the bench's thread count.

- fp32 ceiling: FLOP/s of a large float32 matrix product, the best of NumPy's BLAS, ONNX Runtime's
  MatMul (MLAS, what the engine runs) and torch.mm when PyTorch is installed.
- int8 ceiling: ops/s of a large uint8 x int8 product through ONNX Runtime's MatMulInteger (what
  the quantized engine runs).
- fp32 floor of a model: seconds to stream its weights once through batch-1 matrix-vector
  products, the best of NumPy (one product per matrix) and one ONNX Runtime run of all of them.
- int8 floor: the same through MatMulInteger on int8 weights (one ONNX Runtime run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np

from lstmgen.errors import LstmgenError

from .child import run_child

BLAS_HANDICAP_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PEAK_N = 2048
PEAK_REPEATS = 7


def probe_env(parent: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the parent's environment without the variables that force an older BLAS kernel."""
    env = dict(os.environ if parent is None else parent)
    for name in BLAS_HANDICAP_VARS:
        env.pop(name, None)
    return env


def measure(specs: list[dict], threads: int, peak_n: int = PEAK_N, timeout: float = 900) -> dict:
    """Run the probe in a child process (see the module docstring) and return what it measured."""
    job = {"specs": specs, "threads": threads, "peak_n": peak_n}
    out = run_child("lstmgen.bench.ceilings", job, timeout, env=probe_env())
    if "error" in out:
        raise LstmgenError(f"the ceiling probe failed: {out['error']}")
    out["blas_env_removed"] = {name: os.environ[name] for name in BLAS_HANDICAP_VARS if name in os.environ}
    return out


def best_of(before: dict, after: dict) -> dict:
    """Two probes (one before the bench's rows, one after) as one: the higher ceilings, the lower floors.

    A probe that another process slowed under-measures the machine, and every row would then read
    too close to its limits; probing twice makes that much less likely. Both probes' figures stay.
    """
    out = {**after, "peak_ops_per_s": {p: max(before["peak_ops_per_s"][p], v) for p, v in after["peak_ops_per_s"].items()},
           "floor_s": {m: {p: min(before["floor_s"][m][p], v) for p, v in f.items()} for m, f in after["floor_s"].items()}}
    out["peak_probes"] = [before["peak_probes"], after["peak_probes"]]
    out["floor_probes"] = [before["floor_probes"], after["floor_probes"]]
    return out


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls after one warm-up: a limit is the best the machine does, and
    other processes on a busy machine only ever add time."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ort_session(nodes, inputs, outputs, inits, threads: int):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _matmul_session(mats: list[np.ndarray], batch: int, int8: bool, threads: int):
    """One ONNX Runtime session computing x_i @ W_i for every matrix: MatMul, or MatMulInteger on int8 weights."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, inits, feeds = [], [], [], [], {}
    for i, w in enumerate(mats):
        k, n = w.shape
        if int8:
            inits.append(numpy_helper.from_array(w.astype(np.int8), f"w{i}"))
            nodes.append(helper.make_node("MatMulInteger", [f"x{i}", f"w{i}"], [f"y{i}"]))
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.UINT8, [batch, k]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT32, [batch, n]))
            feeds[f"x{i}"] = np.full((batch, k), 3, np.uint8)
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [batch, k]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [batch, n]))
            feeds[f"x{i}"] = np.ones((batch, k), np.float32)
    sess = ort_session(nodes, inputs, outputs, inits, threads)
    return lambda: sess.run(None, feeds)


def peak_probes(threads: int, n: int = PEAK_N) -> dict:
    """Ops/s of an n^3 product per library: fp32 (NumPy, ONNX Runtime, torch) and int8 (ONNX Runtime)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    ops = 2 * n**3
    fp32 = {"numpy": ops / _best_time(lambda: a @ b, PEAK_REPEATS),
            "onnxruntime": ops / _best_time(_matmul_session([b], n, False, threads), PEAK_REPEATS)}
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fp32["torch"] = ops / _best_time(lambda: torch.mm(ta, tb), PEAK_REPEATS)
    int8_weights = rng.integers(-127, 128, (n, n)).astype(np.int8)
    int8 = {"onnxruntime MatMulInteger": ops / _best_time(_matmul_session([int8_weights], n, True, threads), PEAK_REPEATS)}
    return {"fp32": fp32, "int8": int8}


def model_matrices(spec: dict) -> list[np.ndarray]:
    """The weight matrices one token's step streams, as [in, out]: each layer's [W_ih W_hh] and the head."""
    rng = np.random.default_rng(0)
    shapes = [((spec["embed"] if layer == 0 else spec["hidden"]) + spec["hidden"], 4 * spec["hidden"])
              for layer in range(spec["layers"])] + [(spec["hidden"], spec["vocab"])]
    return [rng.uniform(-0.05, 0.05, s).astype(np.float32) for s in shapes]


def floor_probes(spec: dict, threads: int) -> dict:
    """Seconds per batch-1 pass over the model's weights: fp32 (NumPy, ONNX Runtime) and int8 (ONNX Runtime)."""
    mats = [np.ascontiguousarray(m.T) for m in model_matrices(spec)]  # [out, in]: NumPy's fast gemv layout
    vecs = [np.ones(m.shape[1], np.float32) for m in mats]

    def numpy_once():
        for m, v in zip(mats, vecs):
            m @ v

    int8_mats = [np.clip(np.round(m * 2540), -127, 127) for m in model_matrices(spec)]
    return {"fp32": {"numpy": _best_time(numpy_once, 300),
                     "onnxruntime": _best_time(_matmul_session(model_matrices(spec), 1, False, threads), 300)},
            "int8": {"onnxruntime MatMulInteger": _best_time(_matmul_session(int8_mats, 1, True, threads), 300)}}


def blas_info() -> list[dict]:
    """Which BLAS libraries are loaded and which kernel (architecture) each runs, per threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl is not installed (pip install 'lstmgen[bench]'): kernel unknown"}]
    keep = ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")
    return [{k: lib.get(k) for k in keep} for lib in threadpool_info() if lib.get("user_api") == "blas"]


def run_probe(job: dict) -> dict:
    threads = job["threads"]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        threadpool_limits(threads)
    peaks = peak_probes(threads, job.get("peak_n", PEAK_N))
    floors = {spec["name"]: floor_probes(spec, threads) for spec in job["specs"]}
    return {"blas": blas_info(), "threads": threads, "peak_n": job.get("peak_n", PEAK_N),
            "blas_env_in_probe": {name: os.environ.get(name) for name in BLAS_HANDICAP_VARS},
            "peak_ops_per_s": {p: max(v.values()) for p, v in peaks.items()}, "peak_probes": peaks,
            "floor_s": {name: {p: min(v.values()) for p, v in f.items()} for name, f in floors.items()},
            "floor_probes": floors}


if __name__ == "__main__":
    print(json.dumps(run_probe(json.loads(sys.argv[1]))))
