"""Load an artifact and generate or score text with ONNX Runtime, NumPy and the Numba sampler.

`Generator` is the public API. Generation runs one decode loop (`decode_loop`) over a small backend
interface (prefill / expand / step / select), which the ONNX Runtime backend here implements and the
PyTorch reference in lstmgen.trainer.reference implements too, so that both produce the same text
from the same seed. Row i draws its random numbers from (seed, i) alone (lstmgen.sampling.RowRandom).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from .errors import LstmgenError
from .manifest import MODEL_FILE, Manifest, read_manifest, read_record_hashes, record_hash
from .sampling import RowSampler, SamplingParams, new_seed
from .scoring import Score, stream_segments
from .tokenizer import Detokenizer, Tokenizer

DEFAULT_MODEL = "names"  # what `lstmgen generate` uses with no model argument
MAX_TOKENS_LIMIT = 100_000  # per sample; more is almost surely a mistake
MAX_NUM = 100_000  # samples per call
SCORE_CHUNK = 512  # time steps per ONNX call while scoring


class Backend(Protocol):
    """One step of a recurrent LM over NumPy arrays; `state` is whatever the backend keeps."""

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, object]: ...  # ids [1, T] -> logits [1, V], state

    def expand(self, state: object, n: int) -> object: ...  # batch 1 -> n identical rows

    def step(self, tokens: np.ndarray, state: object) -> tuple[np.ndarray, object]: ...  # [n] -> [n, V]

    def select(self, state: object, keep: np.ndarray) -> object: ...  # keep rows (int index array)


def decode_loop(backend: Backend, context: Sequence[int], rows: Sequence[int], max_tokens: int,
                params: SamplingParams, seed: int, eos_id: int | None,
                stopped: np.ndarray | None = None, banned: Sequence[int] = ()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row positions, sampled tokens) once per step for the rows still running.

    The context is prefilled once at batch 1 and its state copied into every row. A row stops at
    <eos>, after max_tokens, or when the consumer sets stopped[position] (a stop string); stopped
    rows are dropped from the batch, so they cost nothing after. `banned` ids are never sampled.
    """
    n = len(rows)
    sampler = RowSampler(params, seed, rows, context, banned)
    logits, state = backend.prefill(np.asarray([context], dtype=np.int64))
    logits = np.repeat(logits, n, axis=0)
    state = backend.expand(state, n)
    active = np.arange(n)
    for t in range(max_tokens):
        tokens = sampler.sample(logits, active)
        yield active, tokens
        if t == max_tokens - 1:
            return
        if eos_id is not None or stopped is not None:
            done = tokens == eos_id if eos_id is not None else np.zeros(len(tokens), dtype=bool)
            if stopped is not None:
                done |= stopped[active]
            n_done = int(done.sum())
            if n_done == len(done):
                return
            if n_done:
                keep = np.flatnonzero(~done)
                active, tokens = active[keep], tokens[keep]
                state = backend.select(state, keep)
        logits, state = backend.step(tokens, state)


class OrtBackend:
    """ONNX Runtime session for one artifact, with its step buffers bound once per batch size."""

    def __init__(self, folder: Path, manifest: Manifest, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.m = manifest
        available = ort.get_available_providers()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise LstmgenError("--device cuda needs onnxruntime-gpu and a CUDA GPU (pip install onnxruntime-gpu);"
                               " use --device cpu")
        if device not in ("cpu", "cuda"):
            raise LstmgenError(f"--device must be auto, cpu or cuda, got {device!r}")
        self.device = device
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(folder / MODEL_FILE), sess_options=opts, providers=providers)
        except Exception as e:  # ORT reports malformed graphs with its own exception types
            raise LstmgenError(f"{folder / MODEL_FILE} cannot be loaded by ONNX Runtime"
                               f" ({str(e).splitlines()[0][:200]}); re-export the model") from None
        self._check_graph(folder)
        d = manifest.dims
        self.state_shape = (d.num_layers, d.hidden_size)
        self.V = d.vocab_size
        self.io = manifest.io
        self._ort = ort

    def _check_graph(self, folder: Path) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        io = self.m.io
        for name in (io.tokens, io.h0, io.c0):
            if name not in ins:
                raise LstmgenError(f"{folder / MODEL_FILE} has no input {name!r}: it does not match its manifest")
        for name in (io.logits, io.h1, io.c1):
            if name not in outs:
                raise LstmgenError(f"{folder / MODEL_FILE} has no output {name!r}: it does not match its manifest")
        v = outs[io.logits].shape[-1]
        if isinstance(v, int) and v != self.m.dims.vocab_size:
            raise LstmgenError(f"{folder / MODEL_FILE} predicts {v} tokens but the manifest's vocabulary has"
                               f" {self.m.dims.vocab_size} (hand-edited vocabulary?); re-export the model")
        h = ins[io.h0].shape
        if isinstance(h[0], int) and (h[0], h[-1]) != (self.m.dims.num_layers, self.m.dims.hidden_size):
            raise LstmgenError(f"{folder / MODEL_FILE} state shape {h} does not match the manifest's dims")

    # -- whole sequences (prefill, scoring) --------------------------------------------------------
    def run(self, ids: np.ndarray, h: np.ndarray | None = None, c: np.ndarray | None = None):
        """ids [B, T] -> logits [B, T, V], h, c (plain session.run; used for long inputs)."""
        B = ids.shape[0]
        if h is None:
            h = np.zeros((self.state_shape[0], B, self.state_shape[1]), dtype=np.float32)
            c = np.zeros_like(h)
        io = self.io
        return self.session.run([io.logits, io.h1, io.c1], {io.tokens: ids, io.h0: h, io.c0: c})

    def prefill(self, ids: np.ndarray):
        logits, h, c = self.run(ids)
        return logits[:, -1, :], (h, c)

    def expand(self, state, n: int):
        h, c = state
        return np.repeat(h, n, axis=1), np.repeat(c, n, axis=1)

    # -- one token per row, buffers bound in place ---------------------------------------------------
    def select(self, state, keep: np.ndarray):
        h, c = (state.h_in, state.c_in) if isinstance(state, _StepBuffers) else state
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


class _StepBuffers:
    """Preallocated inputs/outputs for one decode loop at batch size n.

    h/c ping-pong: a step reads one pair and writes the other, so the state never leaves these
    buffers between steps. Each decode loop owns its buffers, so concurrent loops never share them.
    """

    def __init__(self, backend: OrtBackend, n: int) -> None:
        L, H = backend.state_shape
        self.backend, self.n = backend, n
        self.tokens = np.zeros((n, 1), dtype=np.int64)
        self.logits = np.empty((n, 1, backend.V), dtype=np.float32)
        self.h = [np.zeros((L, n, H), dtype=np.float32) for _ in range(2)]
        self.c = [np.zeros((L, n, H), dtype=np.float32) for _ in range(2)]
        self.flip = 0
        self.bindings = [self._bind(k) for k in range(2)]

    def _bind(self, k: int):
        io = self.backend.io
        b = self.backend.session.io_binding()
        b.bind_cpu_input(io.tokens, self.tokens)
        b.bind_cpu_input(io.h0, self.h[k])
        b.bind_cpu_input(io.c0, self.c[k])
        for name, arr in ((io.logits, self.logits), (io.h1, self.h[1 - k]), (io.c1, self.c[1 - k])):
            b.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
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


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A folder path, or the name of a shipped model in lstmgen/exported."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if p.is_dir() or os.sep in str(name_or_path) or p.exists():
        return p
    shipped = resources.files("lstmgen.exported").joinpath(str(name_or_path))
    if shipped.is_dir():
        return Path(str(shipped))
    names = ", ".join(shipped_models()) or "none"
    raise LstmgenError(f"no model folder or shipped model named {name_or_path!r} (shipped: {names})")


def shipped_models() -> list[str]:
    root = resources.files("lstmgen.exported")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("manifest.json").is_file())


@dataclass(frozen=True)
class Request:
    """A checked generation request (see Generator.request)."""

    num: int
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    stop: list[str]
    banned: list[int]


class Generator:
    """A loaded artifact: `generate`, `stream` and `score` text. Safe to share between threads."""

    def __init__(self, folder: Path, manifest: Manifest, backend: OrtBackend) -> None:
        self.folder = folder
        self.manifest = manifest
        self.tokenizer = Tokenizer.from_dict(manifest.tokenizer)
        self.backend = backend
        self._record_hashes: np.ndarray | None = None

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None, *, device: str = "auto",
             threads: int | None = None) -> "Generator":
        folder = resolve_model(name_or_path)
        manifest = read_manifest(folder)
        return cls(folder, manifest, OrtBackend(folder, manifest, device, threads))

    @property
    def records(self) -> bool:
        return self.manifest.records

    @property
    def lists_its_records(self) -> bool:
        """A records model whose artifact lists the corpus records, so `novel` can tell new items from known."""
        return self.records and self.manifest.records_sha256 is not None

    # -- parameters -------------------------------------------------------------------------------
    def sampling(self, **overrides) -> SamplingParams:
        """The manifest's defaults with the given settings (None = default) applied and validated."""
        if overrides.get("top_k") == 0:
            raise LstmgenError("top-k must be an integer >= 1 (leave it out to sample from the whole vocabulary)")
        d = self.manifest.defaults
        base = SamplingParams(d.temperature, d.top_k, d.top_p, d.min_p, d.repetition_penalty, d.repetition_window)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def _max_tokens(self, max_tokens: int | None) -> int:
        mt = self.manifest.defaults.max_tokens if max_tokens is None else max_tokens
        if not isinstance(mt, (int, np.integer)) or isinstance(mt, bool) or not (1 <= mt <= MAX_TOKENS_LIMIT):
            raise LstmgenError(f"max-tokens must be an integer in [1, {MAX_TOKENS_LIMIT}], got {mt!r}")
        return int(mt)

    def encode_prompt(self, prompt: str | None) -> list[int]:
        if not prompt:
            return []
        if self.records and "\n" in prompt:
            raise LstmgenError("a prompt for a records model must be one line (a record's beginning)")
        ids = self.tokenizer.encode(self.tokenizer.fold(prompt))  # a lower-case-only model reads 'Ma' as 'ma'
        if self.tokenizer.eos_id is not None and self.tokenizer.eos_id in ids:
            raise LstmgenError("the prompt contains the end-of-record token text; remove it")
        return ids

    def request(self, *, num: int = 1, prompt: str | None = None, max_tokens: int | None = None,
                seed: int | None = None, stop: Sequence[str] = (), allow_unk: bool = False,
                max_num: int = MAX_NUM, **sampling) -> "Request":
        """Every argument of a generation checked once, here, for the API, the CLI and the server."""
        if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or not (1 <= num <= max_num):
            raise LstmgenError(f"num must be an integer in [1, {max_num}], got {num!r}")
        params = self.sampling(**sampling)
        seed = new_seed() if seed is None else _check_seed(seed)
        return Request(int(num), self.encode_prompt(prompt), self._max_tokens(max_tokens), params, seed,
                       _check_stop(stop), self.banned_ids(allow_unk))

    # -- generation -------------------------------------------------------------------------------
    def generate(self, num: int = 1, prompt: str | None = None, *, max_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None,
                 repetition_window: int | None = None, seed: int | None = None, stop: Sequence[str] = (),
                 novel: bool = False, allow_unk: bool = False) -> list[str]:
        """`num` samples, each the prompt followed by what the model wrote.

        Records models stop each sample at its end marker; `stop` strings end a sample where they
        appear (they are not included); `novel` keeps only records not in the training corpus and
        not repeated (records models only). Word models never write <unk> unless `allow_unk`.
        """
        r = self.request(num=num, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                         repetition_window=repetition_window, seed=seed, stop=stop, allow_unk=allow_unk)
        prompt_ids, mt, params, seed, stop, banned = r.prompt_ids, r.max_tokens, r.params, r.seed, r.stop, r.banned
        if not novel:
            return self._generate_rows(prompt_ids, list(range(num)), mt, params, seed, stop, banned)
        if not self.records:
            raise LstmgenError("--novel works with records models only (it filters out items of the training data)")
        known = self._known_records()
        out: list[str] = []
        seen: set[str] = set()
        next_row, tries = 0, 0
        while len(out) < num and tries < 50:
            want = max(8, 2 * (num - len(out)))
            rows = list(range(next_row, next_row + want))
            next_row += want
            tries += 1
            for text in self._generate_rows(prompt_ids, rows, mt, params, seed, stop, banned):
                key = text.strip()
                if key and key not in seen and not _member(known, record_hash(key)):
                    seen.add(key)
                    out.append(text)
                    if len(out) == num:
                        break
        return out

    def _known_records(self) -> np.ndarray:
        if self._record_hashes is None:
            if not self.lists_its_records:
                raise LstmgenError(f"{self.folder} stores no record list, so --novel cannot tell what is new;"
                                   " re-export it from a records run")
            self._record_hashes = read_record_hashes(self.folder)
        return self._record_hashes

    def banned_ids(self, allow_unk: bool = False) -> list[int]:
        unk = self.tokenizer.unk_id
        return [] if allow_unk or unk is None else [unk]

    def _generate_rows(self, prompt_ids: list[int], rows: list[int], max_tokens: int, params: SamplingParams,
                       seed: int, stop: list[str], banned: list[int]) -> list[str]:
        n = len(rows)
        eos = self.tokenizer.eos_id
        out = np.zeros((n, max_tokens), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        stopped = np.zeros(n, dtype=bool)
        texts: list[_RowText] | None = [_RowText(self.tokenizer, prompt_ids, stop) for _ in range(n)] if stop else None
        for t, (active, tokens) in enumerate(self._loop(prompt_ids, rows, max_tokens, params, seed, stopped, banned)):
            real = tokens != eos if eos is not None else np.ones(len(tokens), dtype=bool)
            out[active[real], t] = tokens[real]
            lengths[active[real]] += 1
            if texts is not None:
                for a, tok in zip(active[real], tokens[real]):
                    if texts[a].add(int(tok)):
                        stopped[a] = True
        if texts is not None:
            return [r.final() for r in texts]
        return [self.tokenizer.decode([*prompt_ids, *out[i, : lengths[i]]]) for i in range(n)]

    def _loop(self, prompt_ids, rows, max_tokens, params, seed, stopped, banned):
        context = list(self.manifest.start_ids) + list(prompt_ids)
        return decode_loop(self.backend, context, rows, max_tokens, params, seed, self.tokenizer.eos_id, stopped,
                           banned)

    def stream(self, prompt: str | None = None, *, max_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
               repetition_penalty: float | None = None, repetition_window: int | None = None,
               seed: int | None = None, stop: Sequence[str] = (), row: int = 0,
               allow_unk: bool = False) -> Iterator[str]:
        """Yield one sample's text piece by piece as it is generated (the prompt first).

        The pieces join to exactly what `generate(...)[row]` returns with the same seed; text that
        could be the start of a stop string is held back until it is known not to be one.
        """
        r = self.request(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, repetition_penalty=repetition_penalty, repetition_window=repetition_window,
                         seed=seed, stop=stop, allow_unk=allow_unk)
        text = _RowText(self.tokenizer, r.prompt_ids, r.stop)
        stopped = np.zeros(1, dtype=bool)
        sent = 0
        for _, tokens in self._loop(r.prompt_ids, [row], r.max_tokens, r.params, r.seed, stopped, r.banned):
            tok = int(tokens[0])
            if tok == self.tokenizer.eos_id:
                break
            if text.add(tok):
                stopped[0] = True
                break
            safe = text.safe_length()
            if safe > sent:
                yield text.text[sent:safe]
                sent = safe
        final = text.final()
        if len(final) > sent:
            yield final[sent:]

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, text: str, *, records: bool | None = None, streams: int = 1, strict: bool = False) -> Score:
        """Negative log-likelihood of text under the model (lstmgen.scoring's definition). Tokens outside
        the vocabulary are counted in `oov` (Tokenizer.encode_known); `strict` refuses them instead."""
        folded = self.tokenizer.fold(text)
        case_folded, text = folded != text, folded
        if records is None:
            records = self.records
        if not isinstance(streams, int) or streams < 1:
            raise LstmgenError(f"streams must be an integer >= 1, got {streams!r}")
        if records:
            if not self.records:
                raise LstmgenError("this is a running-text model; score without --records")
            items = [r.strip() for r in text.split("\n") if r.strip()]
            if not items:
                raise LstmgenError("no records to score (the text is empty)")
            eos = self.tokenizer.eos_id
            known = [self.tokenizer.encode_known(r, strict) for r in items]
            seqs = [[eos, *ids, eos] for ids, _ in known]
            by_len: dict[int, list[list[int]]] = {}
            for s in seqs:
                by_len.setdefault(len(s), []).append(s)
            nats, tokens = 0.0, 0
            for group in by_len.values():
                for a in range(0, len(group), 512):
                    arr = np.array(group[a: a + 512], dtype=np.int64)
                    logits, _, _ = self.backend.run(arr[:, :-1])
                    nats += _nll(logits, arr[:, 1:])
                    tokens += arr[:, 1:].size
            chars = sum(len(s) - 1 for s in seqs) if self.tokenizer.level == "char" else len(text)
            return Score(nats, tokens, chars, sum(n for _, n in known), case_folded, self.tokenizer.level == "word")
        if self.records:
            raise LstmgenError("this is a records model; score with --records (one item a line)")
        ids, oov = self.tokenizer.encode_known(text, strict)
        ids = np.array(ids, dtype=np.int64)
        if len(ids) < 2:
            raise LstmgenError("text too short to score: it needs at least 2 tokens")
        nats, tokens = 0.0, 0
        groups: dict[int, list[int]] = {}
        for start, length in stream_segments(len(ids), streams):
            groups.setdefault(length, []).append(start)
        for length, starts in groups.items():
            x = np.stack([ids[s: s + length] for s in starts])
            y = np.stack([ids[s + 1: s + length + 1] for s in starts])
            h = c = None
            for a in range(0, length, SCORE_CHUNK):
                logits, h, c = self.backend.run(x[:, a: a + SCORE_CHUNK], h, c)
                nats += _nll(logits, y[:, a: a + SCORE_CHUNK])
            tokens += y.size
        chars = tokens if self.tokenizer.level == "char" else len(text)
        return Score(nats, tokens, chars, oov, case_folded, self.tokenizer.level == "word")


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log softmax(logits)[target], in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return float((lse - picked).sum())


def _member(sorted_hashes: np.ndarray, h: int) -> bool:
    i = int(np.searchsorted(sorted_hashes, np.uint64(h)))
    return i < len(sorted_hashes) and int(sorted_hashes[i]) == h


def _check_stop(stop) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop or [])
    for s in stop:
        if not isinstance(s, str) or not s:
            raise LstmgenError(f"stop strings must be non-empty text, got {s!r}")
    return stop


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not (0 <= seed < 2**63):
        raise LstmgenError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)


class _RowText:
    """One sample's text built token by token, ended at the first stop string."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str]) -> None:
        self.detok = Detokenizer(tokenizer)
        self.text = "".join(self.detok.piece(i) for i in prompt_ids)
        self.prompt_len = len(self.text)
        self.stop = stop
        self.longest = max((len(s) for s in stop), default=0)
        self.cut: int | None = None

    def add(self, token_id: int) -> bool:
        """Append a token; True when a stop string has appeared (the text is then cut before it)."""
        before = len(self.text)
        self.text += self.detok.piece(token_id)
        if self.stop:
            lo = max(self.prompt_len, before - self.longest + 1)
            hits = [i for i in (self.text.find(s, lo) for s in self.stop) if i >= 0]
            if hits:
                self.cut = min(hits)
                return True
        return False

    def safe_length(self) -> int:
        """Characters that can be shown: no stop string can start before this point."""
        return max(self.prompt_len, len(self.text) - max(0, self.longest - 1)) if self.stop else len(self.text)

    def final(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]
