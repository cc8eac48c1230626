"""See inside a model: per-token surprisal and the LSTM state after every token, as NumPy arrays.

    from lstmgen.inspect import inspect_text
    ins = inspect_text("shakespeare", "First Citizen:\\nBefore we proceed any further, hear me speak.\\n")
    ins.surprisal      # [tokens] nats; NaN where a token is not predicted (see below)
    ins.c[:, 1, 37]    # cell state of layer 1, unit 37 after each token ([tokens, layers, hidden])

Surprisal counts exactly what `Generator.score` counts (lstmgen.scoring): running text predicts every
token but the first from a zero state; a records model reads each line as `<eos> item <eos>` from a
zero state and predicts all but the leading `<eos>`. The totals therefore equal the score.

The step graph returns only the final state of a call, so states after every token need one call
per token. Instead of 1 call per token at batch 1, two passes: pass 1 runs the text in the score's
chunks (the same calls, hence the same logits as `score`) and keeps the state at each chunk
boundary; pass 2 steps every chunk at once from its boundary state, one token per call at batch =
number of chunks, where a step costs about a third of a batch-1 step per row. int8 graphs quantize
activations per call, so their states are stepped at batch 1 from the start instead (what generation
sees; pass 1 still gives the score's surprisal). Only `gen.backend.run(ids, h, c)` is used, so it
works for any artifact (char, word, records; fp32, int8).

Features of the text (`text_features`) and their correlation with every cell (`correlate`) find
interpretable cells, as in Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent
Networks" (2015).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import LstmgenError
from .generator import SCORE_CHUNK, Generator
from .scoring import surprisal as token_surprisal
from .tokenizer import Detokenizer

MAX_INSPECT_TOKENS = 200_000  # states take 2 x layers x hidden x 4 bytes per token: 800 MB at 2 x 512 here
RECORDS_PER_CALL = 512  # records of one length run together, as `Generator.score` groups them
NEAR_ONE = 0.9  # |h| above this counts as saturated in `saturation`

Progress = Callable[[str, int, int], None]  # (stage, calls done, calls in the stage)


@dataclass
class Inspection:
    """What the model did on one text; every array has one row per token read."""

    token_ids: np.ndarray  # int64 [N]
    pieces: list[str]  # each token as shown; "".join(pieces) is the text as the model sees it
    surprisal: np.ndarray  # float64 [N] nats, -log p(token | tokens before); NaN where not predicted
    h: np.ndarray  # float32 [N, layers, hidden]: LSTM output after reading the token
    c: np.ndarray  # float32 [N, layers, hidden]: LSTM cell state after reading the token
    unknown: np.ndarray  # bool [N]: word models, a word outside the vocabulary (read as <unk>)
    level: str  # "char" or "word"
    records: bool  # read as records (each line from a zero state, ended by <eos>)

    @property
    def predicted(self) -> np.ndarray:
        return ~np.isnan(self.surprisal)

    @property
    def total_nats(self) -> float:
        """Equals `Generator.score(text).nats` (lstmgen.scoring's definition)."""
        return float(np.nansum(self.surprisal))

    @property
    def tokens_predicted(self) -> int:
        return int(self.predicted.sum())

    @property
    def nats_per_token(self) -> float:
        return self.total_nats / max(1, self.tokens_predicted)

    def state(self, kind: str, layer: int, unit: int) -> np.ndarray:
        """One cell's activation over the text: kind 'h' or 'c'."""
        return (self.h if kind == "h" else self.c)[:, layer, unit]


def inspect_text(model: Generator | str | os.PathLike, text: str, *, progress: Progress | None = None,
                 max_tokens: int = MAX_INSPECT_TOKENS) -> Inspection:
    """Surprisal and states of every layer after every token of `text`, read as the model was trained.

    `model` is a loaded Generator, a shipped model's name or an artifact folder. A records model reads
    one item a line; `progress(stage, done, total)` is called as the work goes on. A text of more than
    `max_tokens` tokens is refused (the states of every token are held in memory).
    """
    gen = model if isinstance(model, Generator) else Generator.load(model)
    records = gen.records
    if not text.strip():
        raise LstmgenError("the text is empty: give some text to inspect")
    text = gen.tokenizer.fold(text)  # as `score` reads it: a lower-case vocabulary reads capitals as their small letters
    segments = _record_segments(gen, text) if records else [_running_segment(gen, text)]
    n = sum(len(s.ids) for s in segments)
    if n > max_tokens:
        raise LstmgenError(f"the text has {n:,} tokens; inspect reads at most {max_tokens:,} at once"
                           " (cut it into parts)")
    # Dynamic int8 quantization scales activations per call, so a row's result depends on the rows and
    # steps computed beside it: int8 states are read at batch 1 from the start, as generation sees them.
    rows_independent = gen.manifest.precision == "fp32"
    if records:
        surprisal = _records_surprisal(gen, segments)
        chunks = [(s.ids, None) for s in segments]
    else:
        ids = segments[0].ids
        surprisal, starts = _running_surprisal(gen, ids, progress)
        chunks = [(ids[a: a + SCORE_CHUNK], state) for a, state in starts] if rows_independent else [(ids, None)]
    h, c = _states(gen, chunks, rows_independent, progress)
    return Inspection(np.concatenate([s.ids for s in segments]), [p for s in segments for p in s.pieces], surprisal,
                      h, c, np.concatenate([s.unknown for s in segments]), gen.tokenizer.level, records)


@dataclass
class _Segment:
    ids: np.ndarray
    pieces: list[str]
    unknown: np.ndarray


def _shown_pieces(gen: Generator, ids: list[int], words: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Each token's text as the detokenizer writes it; unknown words keep their own spelling."""
    tok = gen.tokenizer
    detok = Detokenizer(tok)
    pieces = [detok.piece(i) for i in ids]
    unknown = np.zeros(len(ids), dtype=bool)
    if tok.unk_id is not None and words is not None:
        for k, (i, w) in enumerate(zip(ids, words)):
            if i == tok.unk_id:
                pieces[k] = pieces[k].replace(tok.tokens[i], w)
                unknown[k] = True
    return pieces, unknown


def _running_segment(gen: Generator, text: str) -> _Segment:
    tok = gen.tokenizer
    ids = tok.encode(text)
    if len(ids) < 2:
        raise LstmgenError("the text is too short to inspect: it needs at least 2 tokens")
    pieces, unknown = _shown_pieces(gen, ids, tok.pieces(text) if tok.level == "word" else None)
    return _Segment(np.array(ids, dtype=np.int64), pieces, unknown)


def _record_segments(gen: Generator, text: str) -> list[_Segment]:
    """`<eos> item <eos>` per non-empty line, as `Generator.score` reads records."""
    tok = gen.tokenizer
    eos = tok.eos_id
    out = []
    for item in (r.strip() for r in text.split("\n")):
        if not item:
            continue
        body = tok.encode(item)
        if eos in body:
            raise LstmgenError("the text contains the end-of-record token text; remove it")
        pieces, unknown = _shown_pieces(gen, body, tok.pieces(item) if tok.level == "word" else None)
        out.append(_Segment(np.array([eos, *body, eos], dtype=np.int64), ["", *pieces, "\n"],
                            np.array([False, *unknown, False])))
    return out


def _running_surprisal(gen: Generator, ids: np.ndarray,
                       progress: Progress | None) -> tuple[np.ndarray, list[tuple[int, tuple | None]]]:
    """Pass 1: the score's chunked run at batch 1; returns surprisal and (chunk start, state before it)."""
    x, y = ids[None, :-1], ids[None, 1:]
    surprisal = np.full(len(ids), np.nan)
    starts: list[tuple[int, tuple | None]] = [(0, None)]
    h = c = None
    for a in range(0, x.shape[1], SCORE_CHUNK):
        logits, h, c = gen.backend.run(x[:, a: a + SCORE_CHUNK], h, c)
        surprisal[a + 1: a + 1 + logits.shape[1]] = token_surprisal(logits, y[:, a: a + SCORE_CHUNK])[0]
        if a + SCORE_CHUNK < len(ids):
            starts.append((a + SCORE_CHUNK, (h, c)))
        if progress is not None:
            progress("surprisal", a // SCORE_CHUNK + 1, -(-x.shape[1] // SCORE_CHUNK))
    return surprisal, starts


def _records_surprisal(gen: Generator, segments: list[_Segment]) -> np.ndarray:
    """Records grouped by length and run RECORDS_PER_CALL at a time, as `Generator.score` does."""
    by_len: dict[int, list[int]] = {}
    for k, s in enumerate(segments):
        by_len.setdefault(len(s.ids), []).append(k)
    per_record = [np.full(len(s.ids), np.nan) for s in segments]
    for group in by_len.values():
        for a in range(0, len(group), RECORDS_PER_CALL):
            rows = group[a: a + RECORDS_PER_CALL]
            arr = np.stack([segments[k].ids for k in rows])
            logits, _, _ = gen.backend.run(arr[:, :-1])
            nll = token_surprisal(logits, arr[:, 1:])
            for r, k in enumerate(rows):
                per_record[k][1:] = nll[r]
    return np.concatenate(per_record)


def _states(gen: Generator, chunks: list[tuple[np.ndarray, tuple | None]], together: bool, progress: Progress | None):
    """Pass 2: h and c [tokens, layers, hidden] after each token of the chunks, which follow each other.

    Each chunk starts from its state (None = zero) and is stepped one token per call; `together` steps
    all chunks in one batch, else one after the other at batch 1.
    """
    layers, hidden = gen.manifest.dims.num_layers, gen.manifest.dims.hidden_size
    n = sum(len(ids) for ids, _ in chunks)
    out_h = np.empty((n, layers, hidden), dtype=np.float32)
    out_c = np.empty_like(out_h)
    offsets = np.cumsum([0] + [len(ids) for ids, _ in chunks])
    groups = [list(range(len(chunks)))] if together else [[k] for k in range(len(chunks))]
    total = sum(max(len(chunks[k][0]) for k in group) for group in groups)
    done = 0
    for group in groups:
        done = _step_group(gen, [chunks[k] for k in group], offsets[group], out_h, out_c, done, total, progress)
    return out_h, out_c


def _step_group(gen: Generator, chunks, first_rows: np.ndarray, out_h: np.ndarray, out_c: np.ndarray,
                done: int, total: int, progress: Progress | None) -> int:
    """Step chunks as one batch, writing each one's states from its first row in out_h/out_c on."""
    order = sorted(range(len(chunks)), key=lambda k: -len(chunks[k][0]))  # rows still running stay a prefix
    lengths = np.array([len(chunks[k][0]) for k in order])
    tokens = np.zeros((len(order), int(lengths[0])), dtype=np.int64)
    h = np.zeros((out_h.shape[1], len(order), out_h.shape[2]), dtype=np.float32)
    c = np.zeros_like(h)
    for row, k in enumerate(order):
        ids, start = chunks[k]
        tokens[row, : len(ids)] = ids
        if start is not None:
            h[:, row], c[:, row] = start[0][:, 0], start[1][:, 0]
    where = first_rows[np.array(order)]
    for t in range(int(lengths[0])):
        n = int((lengths > t).sum())
        _, h_t, c_t = gen.backend.run(tokens[:n, t: t + 1], np.ascontiguousarray(h[:, :n]), np.ascontiguousarray(c[:, :n]))
        h[:, :n], c[:, :n] = h_t, c_t
        out_h[where[:n] + t] = h_t.transpose(1, 0, 2)
        out_c[where[:n] + t] = c_t.transpose(1, 0, 2)
        done += 1
        if progress is not None:
            progress("states", done, total)
    return done


# -- features of the text ------------------------------------------------------------------------------

FEATURE_HELP = {
    "in_quotes": 'inside double quotes (from an opening " to the closing one or a blank line)',
    "in_parens": "inside parentheses (a blank line closes them)",
    "line_position": "tokens read since the last line break (0 just after it)",
    "line_start": "just read a line break (or a record's start): the next token starts a line",
    "in_word": "char models: the character is part of a word (letter, digit or apostrophe)",
    "speaker_line": "char models: the character is in a speaker line such as 'First Citizen:'",
    "after_speaker_tag": "word models: just read a speaker tag such as 'homer_simpson:' (a line's first word)",
}
_SPEAKER_LINE = re.compile(r"^[A-Za-z][A-Za-z .'_-]{0,40}:$")
_SPEAKER_TAG = re.compile(r"^\S+:$")


def text_features(ins: Inspection) -> dict[str, np.ndarray]:
    """Feature name -> float array [N], each describing the text read up to and including token t."""
    n = len(ins.pieces)
    quotes, parens, position, line_start = (np.zeros(n) for _ in range(4))
    in_quote, depth, pos = False, 0, 0
    for t, piece in enumerate(ins.pieces):
        line_break = piece in ("", "\n")  # "" is a record's leading <eos>
        if line_break and (ins.records or pos == 0):
            in_quote, depth = False, 0  # a blank line or a record's end closes quotes and parentheses
        pos = 0 if line_break else pos + 1
        in_quote ^= piece.count('"') % 2 == 1
        depth = max(0, depth + piece.count("(") - piece.count(")"))
        quotes[t], parens[t], position[t], line_start[t] = in_quote, depth > 0, pos, pos == 0
    out = {"in_quotes": quotes, "in_parens": parens, "line_position": position, "line_start": line_start}
    if ins.level == "char":
        out["in_word"] = np.array([p.isalnum() or p == "'" for p in ins.pieces], dtype=float)
        out["speaker_line"] = _speaker_lines(ins.pieces)
    else:
        tags = np.array([bool(_SPEAKER_TAG.match(p.strip())) for p in ins.pieces])
        out["after_speaker_tag"] = (tags & (position == 1)).astype(float)  # a tag opens its line
    return out


def _speaker_lines(pieces: list[str]) -> np.ndarray:
    """1 for the characters (not the line break) of lines that are a speaker tag."""
    out = np.zeros(len(pieces))
    line_begin = 0
    for t, piece in enumerate([*pieces, "\n"]):
        if piece in ("\n", ""):
            if _SPEAKER_LINE.match("".join(pieces[line_begin:t])):
                out[line_begin:t] = 1
            line_begin = t + 1
    return out


# -- which cells track which feature ---------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One unit's state: kind 'h' (output) or 'c' (cell state), layer and unit counted from 0."""

    kind: str
    layer: int
    unit: int

    def __str__(self) -> str:
        return f"{self.kind}{self.layer}:{self.unit}"


def parse_cell(spec: str, layers: int, hidden: int) -> Cell:
    """'c1:37', 'h0:5' or '1:37' (cell state c); layers and units count from 0."""
    m = re.fullmatch(r"([ch]?)(\d+):(\d+)", spec.strip())
    if not m:
        raise LstmgenError(f"--cell {spec!r} is not LAYER:UNIT, optionally after c or h (e.g. c1:37 or h0:5)")
    kind, layer, unit = m.group(1) or "c", int(m.group(2)), int(m.group(3))
    if layer >= layers:
        raise LstmgenError(f"--cell {spec}: layer {layer} is out of range; the model has layers 0..{layers - 1}")
    if unit >= hidden:
        raise LstmgenError(f"--cell {spec}: unit {unit} is out of range; each layer has units 0..{hidden - 1}")
    return Cell(kind, layer, unit)


def correlate(ins: Inspection, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feature -> Pearson correlation of every cell with it, [2 (h, c), layers, hidden]; NaN-free.

    A feature that does not vary over the text is left out (no correlation is defined). Computed one
    layer's h or c at a time, in float64, so memory stays at one [tokens, hidden] block.
    """
    names = [name for name, f in features.items() if f.std() > 0]
    if not names:
        return {}
    centred = np.stack([features[name] - features[name].mean() for name in names])
    centred /= np.sqrt((centred ** 2).sum(axis=1, keepdims=True))
    out = np.zeros((len(names), 2, *ins.h.shape[1:]))
    for k, states in enumerate((ins.h, ins.c)):
        for layer in range(states.shape[1]):
            block = states[:, layer, :].astype(np.float64)
            block -= block.mean(axis=0)
            spread = np.sqrt((block ** 2).sum(axis=0))
            spread[spread == 0] = np.inf  # a constant cell correlates with nothing
            out[:, k, layer] = (centred @ block) / spread
    return dict(zip(names, out))


def top_cells(corr: np.ndarray, k: int) -> list[tuple[Cell, float]]:
    """The k cells with the largest |correlation|, strongest first."""
    best = np.argsort(-np.abs(corr).ravel(), kind="stable")[:k]
    return [(Cell("hc"[int(kind)], int(layer), int(unit)), float(corr[kind, layer, unit]))
            for kind, layer, unit in zip(*np.unravel_index(best, corr.shape))]


def saturation(ins: Inspection) -> tuple[np.ndarray, np.ndarray]:
    """Per layer and unit, the fraction of tokens where h < -NEAR_ONE and where h > NEAR_ONE ([layers, hidden] each)."""
    return (ins.h < -NEAR_ONE).mean(axis=0), (ins.h > NEAR_ONE).mean(axis=0)
