"""The public API: `Generator` loads an artifact and generates or scores text.

Generation is checked here (one place for the API, the CLI and the server), then runs through the
decode loop of lstmgen.decoding over the ONNX Runtime backend of lstmgen.backend. Row i of a request
draws its random numbers from (seed, i) alone (lstmgen.sampling.RowRandom), so the same seed gives
the same text alone, in a batch, through the server, and from the PyTorch reference.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .backend import OrtBackend
from .chat import ROLES, ChatTemplate, Message
from .decoding import BLOCK_ROWS, DecodeLoop, Job, Request, Sample, is_listed
from .errors import LstmgenError, PromptTooLong
from .manifest import Manifest, read_manifest, read_record_hashes
from .options import (
    MANIFEST_OPTIONS,
    PATTERN_OPTIONS,
    PYTHON,
    SAMPLING_OPTIONS,
    SESSION_OPTIONS,
    OptionError,
    check_options,
    on_surface,
    option,
    takes_options,
)
from .patterns import TokenAutomaton, compile_pattern
from .sampling import SamplingParams, new_seed
from .scoring import Score, ScoredText, read_for_scoring, score_text, surprisal
from .session import Session
from .tokenizer import Tokenizer

DEFAULT_MODEL = "names"  # what `lstmgen generate` uses with no model argument
RARE_START = 1e-3  # a records model that gives a prompt's first token less than this hardly ever starts a record so
CASE_RATIO = 10  # ... and one that starts records 10 times more often with its other case wants that case
PROMPT_ROW_STRIDE = 2**32  # prompt i of a call samples rows i * stride, i * stride + 1, ...


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
        does not match the manifest (generate.onnx is not read here: a missing one is no error).
        """
        folder = resolve_model(name_or_path)
        manifest = read_manifest(folder, check_graphs=False)  # generate.onnx is GraphGenerator's, checked there
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

    # -- options (lstmgen.options checks them; this resolves them against the artifact) ----------------
    def sampling(self, **overrides) -> SamplingParams:
        """The manifest's sampling defaults with the given settings (None = default) applied and checked."""
        d = self.manifest.defaults
        base = {o.name: getattr(d, o.name) if o.manifest else o.default for o in SAMPLING_OPTIONS}
        return SamplingParams(**{**base, **check_options({k: v for k, v in overrides.items() if v is not None})})

    def settings(self, **options) -> dict:
        """What a generation with these options would use: each manifest option resolved to its value."""
        d = self.manifest.defaults
        given = check_options(options)
        return {o.name: given.get(o.name, getattr(d, o.name)) for o in MANIFEST_OPTIONS}

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

    def prompt_hint(self, prompt: str | None) -> str | None:
        """One line when a records model (nearly) never begins a record as the prompt does, e.g. a lower-case
        letter where every record is capitalised; None when the prompt is an ordinary beginning."""
        if not self.records or not prompt:
            return None
        try:
            ids = self.encode_prompt(prompt)
        except LstmgenError:
            return None  # the generation itself will say what is wrong with it
        if not ids:
            return None
        p = self._first_token_probabilities()
        first = self.tokenizer.tokens[ids[0]]
        swapped = self.tokenizer.index.get(first.swapcase())
        if swapped is not None and swapped != ids[0] and p[swapped] >= CASE_RATIO * max(p[ids[0]], RARE_START):
            case = "a capital letter" if first.swapcase().isupper() else "a lower-case letter"
            better = first.swapcase() + self.tokenizer.decode(ids)[len(first):]
            return f"this model's records begin with {case}, hardly ever {first!r}: try the prompt {better!r}"
        if p[ids[0]] < RARE_START:
            return (f"this model's records almost never begin with {first!r} (probability {p[ids[0]]:.1g}); expect"
                    " samples unlike them")
        return None

    def _first_token_probabilities(self) -> np.ndarray:
        if getattr(self, "_first_probs", None) is None:
            logits, _ = self.backend.prefill(np.asarray([self.manifest.start_ids], dtype=np.int64))
            z = logits[0, -1].astype(np.float64)
            e = np.exp(z - z.max())
            self._first_probs = e / e.sum()
        return self._first_probs

    def check_prompt_ids(self, ids) -> list[int]:
        """A prompt given as token ids (OpenAI clients send them), checked against the vocabulary. It may
        begin with the model's start tokens (a client's "beginning of sequence"); an end of record
        anywhere else would end the record before it began."""
        v = self.tokenizer.vocab_size
        if not isinstance(ids, (list, tuple)) or not ids or not all(_is_int(i) and 0 <= i < v for i in ids):
            raise LstmgenError(f"a prompt of token ids must be a non-empty list of integers in [0, {v - 1}]"
                               " (this model's vocabulary)")
        ids = [int(i) for i in ids]
        body = ids[len(self.manifest.start_ids):] if self.brings_start(ids) else ids
        if self.tokenizer.eos_id is not None and self.tokenizer.eos_id in body:
            raise LstmgenError(f"the prompt holds the end-of-record token ({self.tokenizer.eos_id}) after its start;"
                               " remove it")
        return ids

    def brings_start(self, ids: list[int]) -> bool:
        """Whether a token-id prompt begins with the model's start tokens, which the model then reads once."""
        start = self.manifest.start_ids
        return ids[: len(start)] == start

    def context(self, prompt_ids: list[int], given_as_ids: bool) -> list[int]:
        """What the model reads: its start tokens, then the prompt (an id prompt may bring the start itself)."""
        if given_as_ids and self.brings_start(prompt_ids):
            return list(prompt_ids)
        return [*self.manifest.start_ids, *prompt_ids]

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
        ban = check_options({"ban": ban}).get("ban", [])
        unk = self.tokenizer.unk_id
        ids = [] if allow_unk or unk is None else [unk]
        return sorted(set(ids) | {self.token_id(t) for t in ban})

    def bias_ids(self, bias: dict[str, float] | None = None, logit_bias: dict | None = None) -> dict[int, float]:
        """{token text: value} and {token id: value} (checked) -> {token id: value added to its logit}."""
        given = check_options({"bias": bias, "logit_bias": logit_bias})
        out = {self.token_id(text): value for text, value in given.get("bias", {}).items()}
        v = self.tokenizer.vocab_size
        for key, value in given.get("logit_bias", {}).items():
            if int(key) >= v:
                raise OptionError(option("logit_bias"), "{name} names token {key}, outside this model's vocabulary"
                                  " (ids 0 to {last})", key=key, last=v - 1)
            out[int(key)] = out.get(int(key), 0.0) + value
        return out

    def pattern(self, *, regex: str | None = None, min_length: int | None = None, max_length: int | None = None,
                allow_unk: bool = False, ban: Sequence[str] = ()) -> TokenAutomaton | None:
        """The automaton of a pattern and length bounds over this model's vocabulary (lstmgen.patterns; cached),
        with the banned tokens left out; None when none is given. Raises one line when it cannot match."""
        given = check_options({"regex": regex, "min_length": min_length, "max_length": max_length})
        if not given:
            return None
        return compile_pattern(self.tokenizer, **given, records=self.records, banned=self.banned_ids(allow_unk, ban))

    def request(self, given: dict, prompt_ids: list[int], first_row: int) -> Request:
        """One prompt's checked Request from checked options (`given`, as check_options returns them)."""
        d = self.manifest.defaults
        if given.get("max_tokens") == 0 and not given.get("echo", True):
            raise OptionError(option("max_tokens"), "{name} 0 writes nothing: it scores the prompt, which needs echo"
                              " (with logprobs); or ask for at least 1 token")
        max_tokens = given.get("max_tokens", d.max_tokens)
        banned = self.banned_ids(given.get("allow_unk", False), given.get("ban", ()))
        pattern = self.pattern(**{k: given[k] for k in PATTERN_OPTIONS if k in given},
                               allow_unk=given.get("allow_unk", False), ban=given.get("ban", ()))
        return Request(num=given.get("num", 1), prompt_ids=prompt_ids, max_tokens=max_tokens,
                       params=self.sampling(**{o.name: given.get(o.name) for o in SAMPLING_OPTIONS}),
                       seed=given["seed"] if "seed" in given else new_seed(), stop=given.get("stop", []),
                       banned=banned, bias=self.bias_ids(given.get("bias"), given.get("logit_bias")),
                       logprobs=given.get("logprobs"), echo=given.get("echo", True), first_row=first_row,
                       pattern=pattern, pattern_start=pattern.start(prompt_ids, max_tokens) if pattern else 0)

    def jobs(self, *, prompt: str | None = None, prompts: Sequence[str] | None = None,
             on_piece: Callable[[int, str], None] | None = None, on_sample: Callable[[int], None] | None = None,
             first_row: int = 0, block_rows: int = BLOCK_ROWS, caps: dict | None = None, **options) -> list[Job]:
        """Every argument of a generation checked once, here (by lstmgen.options' table), for every caller.

        One Job per prompt (`prompts`, or the one `prompt`; a prompt is text, or a list of token ids);
        prompt i samples rows first_row + i * PROMPT_ROW_STRIDE onwards, so each prompt has its own
        random streams. caps: lower highs for some options ({"max_tokens": 2000}: a server's limits);
        a manifest default above a cap is brought down to it; "prompt_tokens" caps each prompt's length.
        """
        given = check_options(options, caps=caps)
        if caps and "max_tokens" in caps and "max_tokens" not in given:
            given["max_tokens"] = min(self.manifest.defaults.max_tokens, caps["max_tokens"])
        given.setdefault("seed", new_seed())  # one seed for every prompt of the call
        known = self._known_records() if given.get("novel") else None
        jobs = []
        for i, text in enumerate(self._prompt_list(prompt, prompts)):
            as_ids = isinstance(text, (list, tuple))
            ids = self.check_prompt_ids(text) if as_ids else self.encode_prompt(text)
            if caps and len(ids) > caps.get("prompt_tokens", len(ids)):
                raise PromptTooLong(f"the prompt is {len(ids):,} tokens; this server reads at most {caps['prompt_tokens']:,}"
                                    " (lstmgen serve --max-prompt-tokens)")
            request = self.request(given, ids, first_row + i * PROMPT_ROW_STRIDE)
            jobs.append(Job(request, self.context(ids, as_ids), self.tokenizer, known=known, on_piece=on_piece,
                            on_sample=on_sample, block_rows=block_rows))
        return jobs

    @staticmethod
    def _prompt_list(prompt, prompts) -> list:
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
        novel = option("novel")  # worded with the caller's spelling (--novel on the command line)
        if not self.records:
            raise OptionError(novel, "{name} works with records models only (it filters out items of the training data)")
        if self._record_hashes is None:
            if not self.lists_its_records:
                raise OptionError(novel, "{folder} stores no record list, so {name} cannot tell what is new;"
                                  " re-export it from a records run", folder=self.folder)
            self._record_hashes = read_record_hashes(self.folder)
        return self._record_hashes

    # -- generation -------------------------------------------------------------------------------
    @takes_options(PYTHON, exclude=("num",))
    def generate(self, num: int = 1, prompt: str | None = None, *, prompts: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None, **options) -> list:
        """`num` samples, each the prompt followed by what the model wrote (a list of `Sample`s: texts
        that also carry their token ids, why they ended and, with `logprobs=N`, each token's
        log-probability under the model's own distribution and its N likeliest alternatives).

        Options (the table of lstmgen.options; left out = the artifact's default) are listed below.
        Records models stop each sample at its end marker; `stop` strings end a sample where they
        appear (not included); `novel` keeps only records not in the training corpus and not repeated
        (so fewer than `num` may come back); word models never write <unk> unless `allow_unk`.
        `progress(n)` is called as n more samples are done. With `prompts=[...]`, one list per prompt.
        """
        jobs = self.jobs(prompt=prompt, prompts=prompts, on_sample=progress, num=num, **options)
        DecodeLoop(self.backend, self.tokenizer).run(jobs)
        out = [j.samples() for j in jobs]
        return out if prompts is not None else out[0]

    @takes_options(PYTHON, exclude=("num", "novel", "logprobs"))
    def stream(self, prompt: str | None = None, *, row: int = 0, **options) -> Iterator[str]:
        """Yield one sample's text piece by piece as it is generated (the prompt first, with echo).

        The pieces join to exactly what `generate(...)[row]` returns with the same seed; text that
        could be the start of a stop string is held back until it is known not to be one.
        """
        if not _is_int(row) or row < 0:
            raise LstmgenError(f"row must be an integer >= 0, got {row!r}")
        unsupported = sorted({"num", "novel", "logprobs"} & set(options))
        if unsupported:
            raise LstmgenError(f"stream writes one plain sample: leave out {', '.join(unsupported)} (use generate)")
        pieces: list[str] = []
        [job] = self.jobs(prompt=prompt, on_piece=lambda _, piece, __: pieces.append(piece), first_row=int(row), **options)
        loop = DecodeLoop(self.backend, self.tokenizer)
        loop.add(job)
        while loop.blocks:
            loop.step()
            yield from pieces
            pieces.clear()
        if job.error is not None:
            raise job.error

    @takes_options(PYTHON, exclude=[o.name for o in on_surface(PYTHON) if o.name not in SESSION_OPTIONS])
    def session(self, prompt: str | Sequence[int] | None = None, *, state: bytes | None = None, row: int = 0,
                cache=None, **options) -> Session:
        """A step-by-step `Session` (lstmgen.session) that has read the prompt: `top(k)`, `append(text)`,
        `sample()`, `text`, `save()`. N samples of a fresh session write what `generate(prompt=prompt,
        num=1, max_tokens=N)[0]` writes with the same seed and options (`row` r: `stream(row=r)`'s text).
        With `state` (bytes from `Session.save`), the saved session continues exactly where it was (then
        give no prompt or options: they are saved).
        `cache`: a lstmgen.prefix_cache view of this model to read the prompt through (the server's).
        """
        if state is not None:
            if prompt is not None or options or row:
                raise LstmgenError("a saved state holds its prompt, row and options: give state alone")
            return Session.load(self, state)
        return Session.start(self, prompt, row=row, cache=cache, **options)

    # -- chat -------------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence, speakers: dict[str, str] | None = None) -> tuple[str, ChatTemplate]:
        """The text the model continues for a conversation (lstmgen.chat), and the template that made it."""
        template = ChatTemplate.for_model(self.manifest, self.tokenizer).with_speakers(speakers)
        checked = [m if isinstance(m, Message) else _message(m) for m in messages]
        return template.prompt(checked, self.tokenizer), template

    @takes_options(PYTHON, exclude=("num", "echo", "novel"))
    def chat(self, messages: Sequence, num: int = 1, *, speakers: dict[str, str] | None = None, **options) -> list[Sample]:
        """`num` replies to a conversation ([{"role": "user", "content": "..."}, ...]): each a Sample whose
        text is the assistant's message. The model's chat template (lstmgen.chat) makes the prompt and
        says where a reply ends (the request's `stop` replaces that)."""
        prompt, template = self.chat_prompt(messages, speakers)
        options.setdefault("stop", list(template.stop) or None)
        whole = template.style == "record"  # a record's reply is the whole record, its start included
        samples = self.generate(num, prompt or None, echo=whole, **options)
        return [Sample(template.reply(s.text), s.prompt_ids, s.token_ids, s.finish_reason, s.logprobs) for s in samples]

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, text: str, *, records: bool | None = None, segments: int = 1, strict: bool = False,
              streams: int | None = None, cache=None) -> Score:
        """Negative log-likelihood of text under the model (lstmgen.scoring's definition). Running text is
        read in `segments` contiguous segments, each from a fresh state. Tokens outside the vocabulary
        are counted in `oov` (Tokenizer.encode_known); `strict` refuses them instead. (`streams` is the
        old name of `segments`.) `cache`: a lstmgen.prefix_cache view of this model: running text in one
        segment is then read from the longest cached beginning (the same figures, to the last bit)."""
        segments = segments if streams is None else streams
        if not _is_int(segments) or segments < 1:
            raise LstmgenError(f"segments must be an integer >= 1, got {segments!r}")
        scored = self.read_for_scoring(text, records=records, strict=strict)
        if cache is not None and cache.reads_in_parts_exactly and not scored.records and segments == 1:
            nats = cache.surprisal(scored.sequences[0])[None, :]  # summed as score_text sums its one row
            return Score(float(nats.sum()), nats.size, scored.chars, scored.oov, scored.case_folded, scored.oov_scored)
        return score_text(self.reader, scored, segments)

    def read_for_scoring(self, text: str, *, records: bool | None = None, strict: bool = False) -> ScoredText:
        """The text as this model scores it (records or running text, as it was trained, unless told)."""
        records = self.records if records is None else records
        if records and not self.records:
            raise LstmgenError("this is a running-text model; score without --records")
        if not records and self.records:
            raise LstmgenError("this is a records model; score with --records (one item a line)")
        return read_for_scoring(self.tokenizer, text, records=records, strict=strict)

    def reader(self, inputs: np.ndarray, targets: np.ndarray, state) -> tuple[np.ndarray, tuple]:
        """lstmgen.scoring's Reader over ONNX Runtime: surprisal of targets [B, T], and the state (h, c) after."""
        h, c = state if state is not None else (None, None)
        logits, h, c = self.backend.run(inputs, h, c)
        return surprisal(logits, targets), (h, c)


def _message(m) -> Message:
    if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
        raise LstmgenError(f"a message is {{'role': one of {', '.join(ROLES)}, 'content': text}}, got {m!r}")
    return Message(m["role"], m["content"], m.get("name"))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
