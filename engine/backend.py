"""The ONNX Runtime backend: one session per artifact, whole-sequence runs (prefill, scoring) and the
per-token step with its buffers bound in place. It implements lstmgen.decoding.Backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import LstmgenError
from .manifest import MODEL_FILE, Manifest


def session_options(threads: int | None, spinning: bool = True):
    """The engine's ONNX Runtime options (the bench's breakdown varies them one at a time).

    spinning=False makes ONNX Runtime's idle worker threads sleep at once instead of spinning for the
    next parallel section: slower on an idle machine (each section wakes a thread), but a spinning
    thread on a machine whose cores are all busy holds up the others (bench/README.md, the breakdown).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(path: Path, threads: int | None, providers: list[str], fix: str, spinning: bool = True):
    """An ONNX Runtime session with the engine's options; a file ORT rejects is one line saying `fix`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads, spinning), providers=providers)
    except Exception as e:  # ORT reports malformed graphs with its own exception types
        raise LstmgenError(f"{path} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:200]}); {fix}") from None


class OrtBackend:
    """ONNX Runtime session for one artifact, with its step buffers bound once per batch size."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "auto", threads: int | None = None,
                 spinning: bool = True) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        available = ort.get_available_providers()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise LstmgenError("device 'cuda' needs onnxruntime-gpu and a CUDA GPU (pip install onnxruntime-gpu);"
                               " use device 'cpu'")
        if device not in ("cpu", "cuda"):
            raise LstmgenError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.device = device
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = open_session(folder / MODEL_FILE, threads, providers, "re-export the model", spinning)
        self._check_graph(folder)
        d = manifest.dims
        self.state_shape = (d.num_layers, d.hidden_size)
        self.V = d.vocab_size
        self.io = manifest.io

    def _check_graph(self, folder: Path) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        io, d = self.manifest.io, self.manifest.dims
        states = io.state_tensors(d.num_layers)
        for name in (io.tokens, *(name_in for name_in, _, _, _ in states)):
            if name not in ins:
                raise LstmgenError(f"{folder / MODEL_FILE} has no input {name!r}: it does not match its manifest")
        for name in (io.logits, *(name_out for _, name_out, _, _ in states)):
            if name not in outs:
                raise LstmgenError(f"{folder / MODEL_FILE} has no output {name!r}: it does not match its manifest")
        v = outs[io.logits].shape[-1]
        if isinstance(v, int) and v != d.vocab_size:
            raise LstmgenError(f"{folder / MODEL_FILE} predicts {v} tokens but the manifest's vocabulary has"
                               f" {d.vocab_size} (hand-edited vocabulary?); re-export the model")
        for name_in, _, _, layers in states:
            h = ins[name_in].shape
            if isinstance(h[0], int) and (h[0], h[-1]) != (layers.stop - layers.start, d.hidden_size):
                raise LstmgenError(f"{folder / MODEL_FILE} state shape {h} does not match the manifest's dims")

    # -- whole sequences (prefill, scoring) --------------------------------------------------------
    def run(self, ids: np.ndarray, h: np.ndarray | None = None, c: np.ndarray | None = None):
        """ids [B, T] -> logits [B, T, V], h, c [L, B, H] (plain session.run; used for long inputs)."""
        B = ids.shape[0]
        if h is None:
            h = np.zeros((self.state_shape[0], B, self.state_shape[1]), dtype=np.float32)
            c = np.zeros_like(h)
        io = self.io
        states = io.state_tensors(self.state_shape[0])
        state = {"h": h, "c": c}
        feeds = {io.tokens: ids} | {name_in: state[kind][layers] for name_in, _, kind, layers in states}
        logits, *new = self.session.run([io.logits, *(name_out for _, name_out, _, _ in states)], feeds)
        per_kind = {kind: [x for x, (_, _, k, _) in zip(new, states) if k == kind] for kind in ("h", "c")}
        return logits, *(np.concatenate(per_kind[kind], axis=0) if len(per_kind[kind]) > 1 else per_kind[kind][0]
                         for kind in ("h", "c"))

    # -- the decode loop's Backend interface (lstmgen.decoding) ----------------------------------------
    def prefill(self, ids: np.ndarray):
        logits, h, c = self.run(ids)
        return logits, (h, c)

    def expand(self, state, n: int):
        h, c = state
        return np.repeat(h, n, axis=1), np.repeat(c, n, axis=1)

    def join(self, state, other):
        if state is None:
            return other
        (h, c), (h2, c2) = _pair(state), _pair(other)
        return np.concatenate([h, h2], axis=1), np.concatenate([c, c2], axis=1)

    def select(self, state, keep: np.ndarray):
        h, c = _pair(state)
        return h[:, keep], c[:, keep]

    def step(self, tokens: np.ndarray, state):
        if not isinstance(state, _StepBuffers):
            # After expand/select the state is a pair of fresh arrays: bind buffers for this batch size.
            h, c = state
            buffers = _StepBuffers(self, tokens.shape[0])
            buffers.h_in[...] = h
            buffers.c_in[...] = c
            state = buffers
        state.tokens[:, 0] = tokens
        self.session.run_with_iobinding(state.binding)
        state.swap()
        return state.logits[:, 0, :], state


def _pair(state) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) arrays of a state, whether fresh arrays or the step buffers of the last step."""
    return (state.h_in, state.c_in) if isinstance(state, _StepBuffers) else state


class _StepBuffers:
    """Preallocated inputs/outputs of the step at one batch size, bound to the session once.

    h/c ping-pong: a step reads one pair and writes the other, so the state never leaves these
    buffers between steps. Buffers belong to one decode loop's state (a new batch size binds new
    ones), so concurrent loops never share them.
    """

    def __init__(self, backend: OrtBackend, n: int) -> None:
        L, H = backend.state_shape
        self.backend = backend
        self.tokens = np.zeros((n, 1), dtype=np.int64)
        self.logits = np.empty((n, 1, backend.V), dtype=np.float32)
        self.h = [np.zeros((L, n, H), dtype=np.float32) for _ in range(2)]
        self.c = [np.zeros((L, n, H), dtype=np.float32) for _ in range(2)]
        self.flip = 0
        self.bindings = [self._bind(k) for k in range(2)]

    def _bind(self, k: int):
        """Binding k reads the state from buffer set k and writes it to the other one, layer by layer in
        place: a layer's [1, n, H] state is a contiguous slice of the [L, n, H] buffer."""
        io = self.backend.io
        buffers = {"h": self.h, "c": self.c}
        b = self.backend.session.io_binding()
        b.bind_cpu_input(io.tokens, self.tokens)
        b.bind_output(io.logits, "cpu", 0, self.logits.dtype, list(self.logits.shape), self.logits.ctypes.data)
        for name_in, name_out, kind, layers in io.state_tensors(self.backend.state_shape[0]):
            b.bind_cpu_input(name_in, buffers[kind][k][layers])
            out = buffers[kind][1 - k][layers]
            b.bind_output(name_out, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        return b

    @property
    def h_in(self):
        return self.h[self.flip]

    @property
    def c_in(self):
        return self.c[self.flip]

    @property
    def binding(self):
        return self.bindings[self.flip]

    def swap(self) -> None:
        self.flip = 1 - self.flip
