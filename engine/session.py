"""Step-by-step generation: a `Session` is one row of the decode loop that the caller drives a token
at a time, and whose whole state can be saved as bytes and loaded again (in this process, another
one, or js/lstmgen.mjs).

A session is made of the decode loop's own parts: the backend's prefill and step, one `RowSampler`
(the row's random stream, repetition window, written counts, bans and bias) and the detokenizer. So
N calls of `sample()` on a fresh session write what `Generator.generate(prompt=p, num=1,
max_tokens=N, seed=s)[0]` writes with the same options, and `top(k)` reports the chances with which
`sample()` draws each token (lstmgen.sampling.distribution_rows).

The saved state is this format (its one owner; js/lstmgen.mjs reads and writes the same bytes):

    MAGIC              16 bytes, b"lstmgen-session\\n"
    header length      uint32, little-endian
    header             JSON (UTF-8): format, version, model_sha256, seed and row (decimal texts: 64-bit),
                       step, ended, text_from (the first id of the text: after the start tokens the
                       engine added), settings (params, banned, bias), arrays [[name, dtype, shape], ...]
    arrays             each as the header lists it, little-endian, one after another: h, c (float32
                       [layers, hidden]), logits (float32 [vocab]), ids (int32: every token read, the
                       start tokens first), history (int32 [window], with the repetition penalty),
                       counts (int32 [vocab], once a frequency or presence penalty has counted),
                       pattern_state (int32 [1], version 2: with a pattern, whose options are in settings)
    sha256             32 bytes, of everything before it

No pickle: a state may come from anywhere, so loading checks every part of it and refuses a damaged
blob, one from another format or version, or one saved from another artifact, in one line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from dataclasses import asdict, fields
from typing import Sequence

import numpy as np

from .errors import LstmgenError
from .options import BY_NAME, MAX_SEED, PATTERN_OPTIONS, SESSION_OPTIONS, UnknownOption, check_options
from .patterns import compile_pattern
from .sampling import RowSampler, SamplingParams
from .tokenizer import Detokenizer

MAGIC = b"lstmgen-session\n"
FORMAT_NAME = "lstmgen-session"
FORMAT_VERSION = 2  # 2: a session may keep to a pattern (settings.pattern, array pattern_state); 1 is still read
MAX_HEADER = 1 << 20  # bytes: a header is a few hundred; a bigger one is not a session state
ACTIVE = np.zeros(1, dtype=np.int64)  # a session is one row, at position 0 of its RowSampler
ARRAY_DTYPES = {"float32": "<f4", "int32": "<i4"}


class NextToken(tuple):
    """(token, probability): a token the session may write next and the chance `sample()` draws it.

    Also `.id` (its vocabulary id) and `.text` (what appending it writes here: a word model puts the
    space before a word; a record's end marker writes nothing)."""

    def __new__(cls, token: str, probability: float, id: int, text: str) -> "NextToken":
        self = super().__new__(cls, (token, probability))
        self.id, self.text = id, text
        return self

    @property
    def token(self) -> str:
        return self[0]

    @property
    def probability(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return f"NextToken({self[0]!r}, {self[1]:.4f}, id={self.id})"


class Session:
    """One row of generation driven step by step (make one with `Generator.session`).

    `top(k)`: the k likeliest next tokens with the chance `sample()` draws each; `append(text)` feeds
    text (checked like a prompt) or one of `top`'s choices; `sample()` draws one token with the
    session's seed and options, feeds it and returns its text; `text` is everything so far (the prompt
    as the model read it, as `echo` writes it); `save()` returns the state as bytes that
    `Generator.session(state=...)` continues from exactly. A records model's session ends at the end
    marker (`ended`); after that it only reports and saves.
    """

    def __init__(self, gen, sampler: RowSampler, ids: list[int], state, logits: np.ndarray, *, seed: int,
                 row: int, text_from: int, ended: bool = False) -> None:
        self.gen = gen
        self.sampler = sampler
        self.seed, self.row = seed, row
        self.ids = list(ids)  # every token read, the artifact's start tokens first
        self.state = state  # the backend's state of the row (arrays, or its step buffers after a step)
        self.logits = logits  # float32 [vocab]: what the next token is drawn from
        self.ended = ended
        self.cached_tokens = 0  # tokens of the prompt a prefix cache had read already (Session.start)
        self._start = text_from  # the text leaves out the start tokens the engine put before the prompt
        self._detok = Detokenizer(gen.tokenizer)
        self._parts = [self._detok.piece(i) for i in self.ids[self._start:]]
        self.pattern_options: dict = {}  # regex, min_length, max_length: what the sampler's automaton was compiled from

    # -- making one ---------------------------------------------------------------------------------
    @classmethod
    def start(cls, gen, prompt: str | Sequence[int] | None, *, row: int = 0, cache=None, **options) -> "Session":
        """A session that has read the artifact's start tokens and the prompt (text or token ids)."""
        unknown = sorted(set(options) - set(BY_NAME))
        if unknown:  # listed with what a session takes, not every option of a generation
            raise UnknownOption(unknown, ["prompt", "state", "row", *SESSION_OPTIONS])
        given = check_options(options)
        outside = sorted(set(given) - set(SESSION_OPTIONS))
        if outside:
            raise LstmgenError(f"a session draws one token at a time: leave out {', '.join(outside)}"
                               " (they shape a whole generation; use generate)")
        if not _is_int(row) or not 0 <= row < 2**64:
            raise LstmgenError(f"row must be an integer in [0, 2^64), got {row!r}")
        as_ids = isinstance(prompt, (list, tuple))
        prompt_ids = gen.check_prompt_ids(prompt) if as_ids else gen.encode_prompt(prompt)
        request = gen.request(given, prompt_ids, int(row))
        context = gen.context(prompt_ids, as_ids)  # what generate reads: the start tokens, then the prompt
        cached = 0
        if cache is not None:  # a lstmgen.prefix_cache view over this model's backend
            logits, state, cached = cache.read(context)
        else:
            all_logits, state = gen.backend.prefill(np.asarray([context], dtype=np.int64))
            logits = all_logits[0, -1].copy()
        sampler = RowSampler(request.params, request.seed, [int(row)], context, request.banned, request.bias,
                             request.pattern, request.pattern_start)
        session = cls(gen, sampler, context, state, logits, seed=request.seed, row=int(row),
                      text_from=len(context) - len(prompt_ids))
        session.pattern_options = {k: given[k] for k in PATTERN_OPTIONS if k in given}
        session.cached_tokens = max(0, cached - len(gen.manifest.start_ids))
        return session

    # -- what it offers ------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """Everything so far: the prompt as the model read it, appended text and sampled tokens."""
        return "".join(self._parts)

    @property
    def token_ids(self) -> list[int]:
        """Every token read after the start tokens (prompt, appended, sampled; an end marker included)."""
        return self.ids[self._start:]

    @property
    def steps(self) -> int:
        """Tokens sampled so far: the row's random stream is at this step."""
        return self.sampler.rng.step

    def top(self, k: int = 5) -> list[NextToken]:
        """The k tokens `sample()` is likeliest to draw now, likeliest first (only tokens it can draw)."""
        if not _is_int(k) or k < 1:
            raise LstmgenError(f"top needs a number of tokens >= 1, got {k!r}")
        self._check_open()
        probs = self.sampler.probabilities(self.logits[None, :], ACTIVE)[0]
        ids = np.flatnonzero(probs > 0)
        ids = ids[np.lexsort((ids, -probs[ids]))][:k]
        tokens = self.gen.tokenizer.tokens
        return [NextToken(tokens[i], float(probs[i]), int(i), copy.copy(self._detok).piece(int(i))) for i in ids]

    def append(self, text: str | NextToken) -> None:
        """Feed text (checked as a prompt is) or one of `top`'s choices; appending nothing is allowed."""
        self._check_open()
        if isinstance(text, NextToken):
            ids = self.gen.check_prompt_ids([text.id]) if text.id != self.gen.tokenizer.eos_id else [text.id]
        elif isinstance(text, str):
            ids = self.gen.encode_prompt(text)
        else:
            raise LstmgenError(f"append takes text or one of top()'s choices, got {type(text).__name__}")
        if not ids:
            return
        self._follow_pattern(ids)
        if ids == [self.gen.tokenizer.eos_id]:  # a chosen end marker ends the record, as a sampled one does
            self._take(ids[0])
            self.ended = True
            return
        h, c = self.gen.backend.select(self.state, ACTIVE)
        logits, h, c = self.gen.backend.run(np.asarray([ids], dtype=np.int64), h, c)
        self.logits, self.state = logits[0, -1].copy(), (h, c)
        self.sampler.read(ids)
        for i in ids:
            self._take(i)

    def sample(self) -> str:
        """Draw one token (the row's random number at this step, the session's options), feed it, and
        return the text it writes ("" for a record's end marker, which ends the session)."""
        self._check_open()
        token = int(self.sampler.sample(self.logits[None, :].copy(), ACTIVE)[0])
        piece = self._take(token)
        ended_pattern = self.sampler.pattern_ended(ACTIVE)  # running text: the pattern allows nothing more
        if token == self.gen.tokenizer.eos_id or (ended_pattern is not None and bool(ended_pattern[0])):
            self.ended = True
            return piece
        logits, self.state = self.gen.backend.step(np.array([token], dtype=np.int64), self.state)
        self.logits = logits[0]  # in the backend's step buffers, which this session alone holds
        return piece

    def _follow_pattern(self, ids: list[int]) -> None:
        """Appended text must keep to the session's pattern: walk it, and refuse it whole where it breaks."""
        pattern = self.sampler.pattern
        if pattern is None:
            return
        state = int(self.sampler.pattern_states[0])
        for k, i in enumerate(ids):
            state = int(pattern.next[state, i])
            if state < 0:
                text = self.gen.tokenizer.decode(ids[: k + 1])
                raise LstmgenError(f"the session's pattern does not allow {text!r} here (it fails at its last token);"
                                   " append text the pattern allows, or start a session without it")
        self.sampler.pattern_states[0] = state

    def _take(self, token: int) -> str:
        self.ids.append(token)
        piece = self._detok.piece(token)
        self._parts.append(piece)
        return piece

    def _check_open(self) -> None:
        if self.ended:
            raise LstmgenError("this session has ended (the model wrote a record's end marker, or the pattern allows"
                               " nothing more); start a new session")

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else "..." + self.text[-37:]
        return f"Session({shown!r}, seed={self.seed}, steps={self.steps}{', ended' if self.ended else ''})"

    # -- saving and loading ----------------------------------------------------------------------------
    def save(self) -> bytes:
        """The session's whole state as bytes (the format of this module's docstring)."""
        h, c = self.gen.backend.select(self.state, ACTIVE)
        arrays = {"h": h[:, 0], "c": c[:, 0], "logits": self.logits, "ids": np.asarray(self.ids)}
        if self.sampler.history is not None:
            arrays["history"] = self.sampler.history[0]
        if self.sampler.counts is not None:
            arrays["counts"] = self.sampler.counts[0]
        s = self.sampler
        if s.pattern is not None:  # version 2: a pattern and its state (a reader of version 1 must refuse it)
            arrays["pattern_state"] = np.asarray(s.pattern_states[:1])
        header = {"format": FORMAT_NAME, "version": 2 if s.pattern is not None else 1,
                  "model_sha256": self.gen.manifest.model_sha256,
                  "seed": str(self.seed), "row": str(self.row), "step": s.rng.step, "ended": self.ended,
                  "text_from": self._start,
                  "settings": {"params": asdict(s.params), "banned": [int(i) for i in s.banned],
                               "bias": {str(int(i)): float(v) for i, v in zip(s.bias_ids, s.bias_values)},
                               **({"pattern": self.pattern_options} if s.pattern is not None else {})},
                  "arrays": [[name, "float32" if a.dtype.kind == "f" else "int32", list(a.shape)]
                             for name, a in arrays.items()]}
        head = json.dumps(header, separators=(",", ":")).encode()
        body = b"".join([MAGIC, struct.pack("<I", len(head)), head,
                         *(np.ascontiguousarray(a, dtype=ARRAY_DTYPES["float32" if a.dtype.kind == "f" else "int32"])
                           .tobytes() for a in arrays.values())])
        return body + hashlib.sha256(body).digest()

    @classmethod
    def load(cls, gen, blob: bytes) -> "Session":
        """The session a `save()` wrote, checked against this artifact (one line for anything wrong)."""
        header, arrays = read_state(blob, gen.manifest.model_sha256)
        try:
            return cls._restore(gen, header, arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise LstmgenError(f"the session state is malformed ({e}); save it again from the session") from None

    @classmethod
    def _restore(cls, gen, header: dict, arrays: dict[str, np.ndarray]) -> "Session":
        d, V = gen.manifest.dims, gen.tokenizer.vocab_size
        settings = header["settings"]
        params = SamplingParams(**{f.name: settings["params"][f.name] for f in fields(SamplingParams)})
        banned = [int(i) for i in settings["banned"] if _is_int(i) and 0 <= i < V]
        bias = {int(k): v for k, v in check_options({"logit_bias": settings["bias"]}).get("logit_bias", {}).items()}
        seed, row, step, text_from = int(header["seed"]), int(header["row"]), header["step"], header["text_from"]
        if len(banned) != len(settings["banned"]) or any(i >= V for i in bias) or not 0 <= seed < MAX_SEED \
                or not 0 <= row < 2**64 or not _is_int(step) or step < 0 or not isinstance(header["ended"], bool) \
                or not _is_int(text_from) or not 0 <= text_from <= len(arrays["ids"]):
            raise ValueError("settings, seed, row, step or text_from out of range")
        expect = {"h": (d.num_layers, d.hidden_size), "c": (d.num_layers, d.hidden_size), "logits": (V,),
                  "counts": (V,), "history": (params.repetition_window,), "pattern_state": (1,)}
        for name, a in arrays.items():
            if name not in expect and name != "ids" or name in expect and a.shape != expect[name]:
                raise ValueError(f"array {name} of shape {a.shape}")
        ids = arrays["ids"].astype(np.int64)
        starts = list(gen.manifest.start_ids)
        if ids.ndim != 1 or ids.min(initial=0) < 0 or ids.max(initial=0) >= V or ids[:len(starts)].tolist() != starts:
            raise ValueError("token ids outside the vocabulary, or not after the start tokens")
        if ("history" in arrays) != (params.repetition_penalty != 1.0):
            raise ValueError("the repetition window does not match the settings")
        pattern, pattern_state = _saved_pattern(gen, settings, arrays, banned)
        sampler = RowSampler(params, seed, [row], [], banned, bias, pattern, pattern_state)
        if "history" in arrays:
            sampler.history = arrays["history"].astype(np.int64)[None, :].copy()
        if "counts" in arrays:
            sampler.counts = arrays["counts"].astype(np.int32)[None, :].copy()
        sampler.rng.seek(step)
        state = (arrays["h"][:, None, :].copy(), arrays["c"][:, None, :].copy())
        session = cls(gen, sampler, ids.tolist(), state, arrays["logits"].copy(), seed=seed, row=row,
                      text_from=text_from, ended=header["ended"])
        session.pattern_options = settings.get("pattern", {}) if pattern is not None else {}
        return session


def _saved_pattern(gen, settings: dict, arrays: dict[str, np.ndarray], banned: list[int]):
    """The automaton a saved session kept to (compiled again from its pattern options) and its state."""
    options = settings.get("pattern")
    if options is None and "pattern_state" not in arrays:
        return None, 0
    if not isinstance(options, dict) or "pattern_state" not in arrays or set(options) - set(PATTERN_OPTIONS):
        raise ValueError("the pattern and its state go together")
    given = check_options(options)
    pattern = compile_pattern(gen.tokenizer, **given, records=gen.records, banned=banned)
    state = int(arrays["pattern_state"][0])
    if not 0 <= state < pattern.states:
        raise ValueError("the pattern's state is outside its automaton")
    return pattern, state


def read_state(blob: bytes, model_sha256: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a saved session state, checked in this order: what it is, that it is whole,
    its version, and that it was saved from the artifact whose model.onnx has `model_sha256`."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise LstmgenError(f"a session state is bytes (what Session.save returned), got {type(blob).__name__}")
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        raise LstmgenError("this is not an lstmgen session state (it does not begin with the format's name);"
                           " pass what Session.save returned")
    if len(blob) < len(MAGIC) + 4 + 32 or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise LstmgenError("the session state is damaged (its sha256 does not match its contents: truncated or"
                           " altered); save it again from the session")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        if size > MAX_HEADER or start + size > len(blob) - 32:
            raise ValueError("header length beyond the state")
        header = json.loads(blob[start: start + size].decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError("not a session header")
    except (ValueError, UnicodeDecodeError) as e:
        raise LstmgenError(f"the session state's header is not valid ({e}); save it again from the session") from None
    version = header.get("version")
    if not _is_int(version) or version < 1:
        raise LstmgenError(f"the session state has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise LstmgenError(f"the session state has format version {version}, newer than this lstmgen reads"
                           f" ({FORMAT_VERSION}); upgrade lstmgen")
    if header.get("model_sha256") != model_sha256:
        saved = str(header.get("model_sha256"))[:12]
        raise LstmgenError(f"the session state was saved from another model (model.onnx sha256 {saved}..., this one's"
                           f" is {model_sha256[:12]}...); load it with the artifact it was saved from")
    return header, _arrays(header, blob[start + size: -32])


def _arrays(header: dict, payload: bytes) -> dict[str, np.ndarray]:
    out, at = {}, 0
    try:
        for name, dtype, shape in header["arrays"]:
            if name in out or dtype not in ARRAY_DTYPES or not all(_is_int(n) and n >= 0 for n in shape):
                raise ValueError(f"array {name!r}")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * 4
            if at + nbytes > len(payload):
                raise ValueError("arrays beyond the state")
            out[name] = np.frombuffer(payload, dtype=ARRAY_DTYPES[dtype], count=count, offset=at).reshape(shape)
            at += nbytes
        if at != len(payload) or not {"h", "c", "logits", "ids"} <= set(out):
            raise ValueError("arrays missing or bytes left over")
    except (ValueError, TypeError, KeyError) as e:
        raise LstmgenError(f"the session state's arrays are not valid ({e}); save it again from the session") from None
    return out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
