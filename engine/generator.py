"""The public API: `Generator` loads an artifact and generates or scores text.

Generation is checked here (one place for the API, the CLI and the server), then runs through the
decode loop of lstmgen.decoding over the ONNX Runtime backend of lstmgen.backend. Row i of a request
draws its random numbers from (seed, i) alone (lstmgen.sampling.RowRandom), so the same seed gives
the same text alone, in a batch, through the server, and from the PyTorch reference.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .backend import OrtBackend
from .decoding import BLOCK_ROWS, DecodeLoop, Job, Request, is_listed
from .errors import LstmgenError, TextTooShort
from .manifest import Manifest, read_manifest, read_record_hashes
from .sampling import SamplingParams, new_seed
from .scoring import Score, stream_segments, surprisal
from .tokenizer import Tokenizer

DEFAULT_MODEL = "names"  # what `lstmgen generate` uses with no model argument
MAX_TOKENS_LIMIT = 100_000  # per sample; more is almost surely a mistake
MAX_NUM = 100_000  # samples per call
MAX_LOGPROBS = 100  # alternatives per token at most
MAX_BIAS = 100.0  # |logit bias| at most; a ban is the way to rule a token out
PROMPT_ROW_STRIDE = 2**32  # prompt i of a call samples rows i * stride, i * stride + 1, ...
SCORE_CHUNK = 512  # time steps per ONNX call while scoring


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
        """Load an exported artifact folder, or a shipped model by name (None = the default model).

        device: 'auto' (CUDA when onnxruntime-gpu sees a GPU, else CPU), 'cpu' or 'cuda'.
        threads: ONNX Runtime intra-op threads (default: up to 4, never more than the cores).
        Raises LstmgenError when the folder is missing, its manifest is invalid, or the model file
        does not match the manifest.
        """
        folder = resolve_model(name_or_path)
        manifest = read_manifest(folder)
        return cls(folder, manifest, OrtBackend(folder, manifest, device, threads))

    def __repr__(self) -> str:
        m, d = self.manifest, self.manifest.dims
        kind = "records" if self.records else "running-text"
        return (f"Generator({m.name or self.folder.name!r}: {self.tokenizer.level}-level {kind}, {m.precision},"
                f" vocab {d.vocab_size}, hidden {d.hidden_size} x {d.num_layers}, device {self.backend.device!r},"
                f" folder {str(self.folder)!r})")

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

    def resolve_max_tokens(self, max_tokens: int | None) -> int:
        """max_tokens checked, or the manifest's default for None."""
        mt = self.manifest.defaults.max_tokens if max_tokens is None else max_tokens
        if not _is_int(mt) or not (1 <= mt <= MAX_TOKENS_LIMIT):
            raise LstmgenError(f"max-tokens must be an integer in [1, {MAX_TOKENS_LIMIT}], got {mt!r}")
        return int(mt)

    def encode_prompt(self, prompt: str | None) -> list[int]:
        if prompt is None or prompt == "":
            return []
        if not isinstance(prompt, str):
            raise LstmgenError(f"a prompt must be text, got {prompt!r}")
        if self.records and "\n" in prompt:
            raise LstmgenError("a prompt for a records model must be one line (a record's beginning)")
        ids = self.tokenizer.encode(self.tokenizer.fold(prompt))  # a lower-case-only model reads 'Ma' as 'ma'
        if self.tokenizer.eos_id is not None and self.tokenizer.eos_id in ids:
            raise LstmgenError("the prompt contains the end-of-record token text; remove it")
        return ids

    def token_id(self, text: str) -> int:
        """The id of one vocabulary token given as text ('e' for a char model, 'moe' for a word model)."""
        tok = self.tokenizer
        if isinstance(text, str):
            i = tok.index.get(text)
            if i is None and tok.lowercase:
                i = tok.index.get(text.lower())
            if i is not None:
                return i
        what = "one character" if tok.level == "char" else "one word or punctuation mark"
        raise LstmgenError(f"{text!r} is not a token of this model's vocabulary (a token is {what},"
                           f" e.g. {tok.tokens[-1]!r})")

    def banned_ids(self, allow_unk: bool = False, ban: Sequence[str] = ()) -> list[int]:
        """Ids never sampled: <unk> (unless allow_unk) and the tokens of `ban`."""
        if isinstance(ban, str):
            ban = [ban]
        if not isinstance(ban, (list, tuple)) and ban is not None:
            raise LstmgenError(f"ban must be a list of token texts, got {ban!r}")
        unk = self.tokenizer.unk_id
        ids = [] if allow_unk or unk is None else [unk]
        return sorted(set(ids) | {self.token_id(t) for t in ban or ()})

    def bias_ids(self, bias: dict[str, float] | None) -> dict[int, float]:
        """{token text: value added to its logit} -> {token id: value}, checked."""
        if bias is None:
            return {}
        if not isinstance(bias, dict):
            raise LstmgenError(f"bias must map token text to a number, got {bias!r}")
        out: dict[int, float] = {}
        for text, value in bias.items():
            if not _is_number(value) or not math.isfinite(value) or abs(value) > MAX_BIAS:
                raise LstmgenError(f"bias for {text!r} must be a number in [-{MAX_BIAS:g}, {MAX_BIAS:g}], got {value!r}"
                                   " (ban a token to rule it out)")
            out[self.token_id(text)] = float(value)
        return out

    def jobs(self, *, num: int = 1, prompt: str | None = None, prompts: Sequence[str] | None = None,
             max_tokens: int | None = None, seed: int | None = None, stop: Sequence[str] = (), novel: bool = False,
             allow_unk: bool = False, logprobs: int | None = None, echo: bool = True,
             bias: dict[str, float] | None = None, ban: Sequence[str] = (),
             on_piece: Callable[[int, str], None] | None = None, on_sample: Callable[[int], None] | None = None,
             max_num: int = MAX_NUM, first_row: int = 0, block_rows: int = BLOCK_ROWS, **sampling) -> list[Job]:
        """Every argument of a generation checked once, here, for the API, the CLI and the server.

        One Job per prompt (`prompts`, or the one `prompt`); prompt i samples rows
        first_row + i * PROMPT_ROW_STRIDE onwards, so each prompt has its own random streams.
        """
        if not _is_int(num) or not (1 <= num <= max_num):
            raise LstmgenError(f"num must be an integer in [1, {max_num}], got {num!r}")
        texts = self._prompt_list(prompt, prompts)
        if novel not in (True, False) or echo not in (True, False):
            raise LstmgenError(f"novel and echo must be true or false, got {novel!r} and {echo!r}")
        if logprobs is not None and (not _is_int(logprobs) or not (0 <= logprobs <= MAX_LOGPROBS)):
            raise LstmgenError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}] (alternatives per token), got {logprobs!r}")
        common = dict(num=int(num), max_tokens=self.resolve_max_tokens(max_tokens), params=self.sampling(**sampling),
                      seed=new_seed() if seed is None else _check_seed(seed), stop=_check_stop(stop),
                      banned=self.banned_ids(allow_unk, ban), bias=self.bias_ids(bias), logprobs=logprobs, echo=echo)
        known = self._known_records() if novel else None
        jobs = []
        for i, text in enumerate(texts):
            ids = self.encode_prompt(text)
            request = Request(prompt_ids=ids, first_row=first_row + i * PROMPT_ROW_STRIDE, **common)
            jobs.append(Job(request, [*self.manifest.start_ids, *ids], self.tokenizer, known=known, on_piece=on_piece,
                            on_sample=on_sample, block_rows=block_rows))
        return jobs

    @staticmethod
    def _prompt_list(prompt, prompts) -> list[str | None]:
        if prompts is None:
            return [prompt]
        if prompt is not None:
            raise LstmgenError("give either one prompt or a list of prompts, not both")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise LstmgenError("prompts must be a non-empty list of texts")
        return list(prompts)

    def in_corpus(self, record: str) -> bool:
        """Whether a record (stripped) is one of the training corpus's (records models that list them)."""
        return is_listed(self._known_records(), record.strip())

    def _known_records(self) -> np.ndarray:
        if not self.records:
            raise LstmgenError("novel=True works with records models only (it filters out items of the training data)")
        if self._record_hashes is None:
            if not self.lists_its_records:
                raise LstmgenError(f"{self.folder} stores no record list, so novel=True cannot tell what is new;"
                                   " re-export it from a records run")
            self._record_hashes = read_record_hashes(self.folder)
        return self._record_hashes

    # -- generation -------------------------------------------------------------------------------
    def generate(self, num: int = 1, prompt: str | None = None, *, prompts: Sequence[str] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
                 repetition_window: int | None = None, seed: int | None = None, stop: Sequence[str] = (),
                 novel: bool = False, allow_unk: bool = False, logprobs: int | None = None, echo: bool = True,
                 bias: dict[str, float] | None = None, ban: Sequence[str] = (),
                 progress: Callable[[int], None] | None = None) -> list:
        """`num` samples, each the prompt followed by what the model wrote.

        Records models stop each sample at its end marker; `stop` strings end a sample where they
        appear (they are not included); `novel` keeps only records not in the training corpus and
        not repeated (records models only, so fewer than `num` may come back). Word models never
        write <unk> unless `allow_unk`. `echo=False` leaves the prompt out of the text. `bias` adds
        to the logits of tokens given as text ({"a": 2.0}); `ban` lists tokens never written.
        `progress(n)` is called as n more samples are done.

        Returns a list of texts; with `logprobs=N` a list of `Sample`s instead, each with every
        token's log-probability under the model's own distribution and its N likeliest alternatives
        (with echo, the prompt's tokens too, so their sum is `score` of the text the model read).
        With `prompts=[...]`, one such list per prompt.
        """
        jobs = self.jobs(num=num, prompt=prompt, prompts=prompts, max_tokens=max_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                         repetition_window=repetition_window, seed=seed, stop=stop, novel=novel, allow_unk=allow_unk,
                         logprobs=logprobs, echo=echo, bias=bias, ban=ban, on_sample=progress)
        DecodeLoop(self.backend, self.tokenizer).run(jobs)
        out = [j.samples() if logprobs is not None else j.results() for j in jobs]
        return out if prompts is not None else out[0]

    def stream(self, prompt: str | None = None, *, max_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
               repetition_penalty: float | None = None, repetition_window: int | None = None,
               seed: int | None = None, stop: Sequence[str] = (), row: int = 0, allow_unk: bool = False,
               echo: bool = True, bias: dict[str, float] | None = None, ban: Sequence[str] = ()) -> Iterator[str]:
        """Yield one sample's text piece by piece as it is generated (the prompt first, with echo).

        The pieces join to exactly what `generate(...)[row]` returns with the same seed; text that
        could be the start of a stop string is held back until it is known not to be one.
        """
        if not _is_int(row) or row < 0:
            raise LstmgenError(f"row must be an integer >= 0, got {row!r}")
        pieces: list[str] = []
        [job] = self.jobs(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          min_p=min_p, repetition_penalty=repetition_penalty, repetition_window=repetition_window,
                          seed=seed, stop=stop, allow_unk=allow_unk, echo=echo, bias=bias, ban=ban,
                          on_piece=lambda _, piece: pieces.append(piece), first_row=int(row))
        loop = DecodeLoop(self.backend, self.tokenizer)
        loop.add(job)
        while loop.blocks:
            loop.step()
            yield from pieces
            pieces.clear()
        if job.error is not None:
            raise job.error

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
                    nats += float(surprisal(logits, arr[:, 1:]).sum())
                    tokens += arr[:, 1:].size
            chars = sum(len(s) - 1 for s in seqs) if self.tokenizer.level == "char" else len(text)
            return Score(nats, tokens, chars, sum(n for _, n in known), case_folded, self.tokenizer.level == "word")
        if self.records:
            raise LstmgenError("this is a records model; score with --records (one item a line)")
        ids, oov = self.tokenizer.encode_known(text, strict)
        ids = np.array(ids, dtype=np.int64)
        if len(ids) < 2:
            raise TextTooShort("text too short to score: it needs at least 2 tokens")
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
                nats += float(surprisal(logits, y[:, a: a + SCORE_CHUNK]).sum())
            tokens += y.size
        chars = tokens if self.tokenizer.level == "char" else len(text)
        return Score(nats, tokens, chars, oov, case_folded, self.tokenizer.level == "word")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_stop(stop) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop or [])
    for s in stop:
        if not isinstance(s, str) or not s:
            raise LstmgenError(f"stop strings must be non-empty text, got {s!r}")
    return stop


def _check_seed(seed) -> int:
    if not _is_int(seed) or not (0 <= seed < 2**63):
        raise LstmgenError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return int(seed)
