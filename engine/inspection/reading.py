"""See inside a model: per-token surprisal and the LSTM state after every token, as NumPy arrays.

    from lstmgen.inspection import inspect_text
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

What the states mean is lstmgen.inspection.features' part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LstmgenError
from ..generator import Generator
from ..scoring import SCORE_CHUNK, ScoredText, surprisal_by_token
from ..tokenizer import Detokenizer

MAX_INSPECT_TOKENS = 200_000  # states take 2 x layers x hidden x 4 bytes per token: 800 MB at 2 x 512 here

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
    oov: int = 0  # tokens of the text outside the vocabulary (char models: left out, as score does)

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
    one item a line; text is read as `score` reads it (lstmgen.scoring.read_for_scoring): folded to
    the vocabulary's case, characters outside a char model's vocabulary left out (counted in `oov`),
    unknown words read as <unk>. `progress(stage, done, total)` is called as the work goes on. A text
    of more than `max_tokens` tokens is refused (the states of every token are held in memory).
    """
    gen = model if isinstance(model, Generator) else Generator.load(model)
    if not text.strip():
        raise LstmgenError("the text is empty: give some text to inspect")
    scored = gen.read_for_scoring(text)
    n = sum(len(q) for q in scored.sequences)
    if n > max_tokens:
        raise LstmgenError(f"the text has {n:,} tokens; inspect reads at most {max_tokens:,} at once"
                           " (cut it into parts)")
    shown = [_shown_pieces(gen, q, line) for q, line in zip(scored.sequences, _lines(gen, text, scored.records))]
    surprisal, chunks = _surprisal_and_chunks(gen, scored, progress)
    h, c = _states(gen, chunks, gen.manifest.precision == "fp32", progress)
    return Inspection(np.concatenate(scored.sequences), [p for pieces, _ in shown for p in pieces], surprisal, h, c,
                      np.concatenate([u for _, u in shown]), gen.tokenizer.level, scored.records, scored.oov)


def _surprisal_and_chunks(gen: Generator, scored: ScoredText, progress: Progress | None):
    """Pass 1, `score`'s own calls: surprisal per token, and the pieces pass 2 steps from a known state.

    Dynamic int8 quantization scales activations per call, so a row's result depends on the rows and
    steps computed beside it: int8 states are read at batch 1 from the start, as generation sees them;
    fp32 text is stepped from each chunk boundary (the state the score's calls had there)."""
    if scored.records:
        return np.concatenate(surprisal_by_token(gen.reader, scored)), [(q, None) for q in scored.sequences]
    ids = scored.sequences[0]
    calls = -(-(len(ids) - 1) // SCORE_CHUNK)
    starts: list[tuple[int, tuple | None]] = [(0, None)]

    def boundary(batch, at: int, state) -> None:
        starts.append((at, state))
        if progress is not None:
            progress("surprisal", len(starts) - 1, calls)

    [surprisal] = surprisal_by_token(gen.reader, scored, on_chunk=boundary)
    if progress is not None:
        progress("surprisal", calls, calls)
    if gen.manifest.precision != "fp32":
        return surprisal, [(ids, None)]
    return surprisal, [(ids[a: a + SCORE_CHUNK], state) for a, state in starts]


def _lines(gen: Generator, text: str, records: bool) -> list[list[str] | None]:
    """The words of each sequence as written (word models show an unknown word in its own spelling)."""
    if gen.tokenizer.level != "word":
        return [None] * (len([r for r in text.split("\n") if r.strip()]) if records else 1)
    folded = gen.tokenizer.fold(text)
    if not records:
        return [gen.tokenizer.pieces(folded)]
    return [["", *gen.tokenizer.pieces(r.strip()), "\n"] for r in folded.split("\n") if r.strip()]


def _shown_pieces(gen: Generator, ids: np.ndarray, words: list[str] | None) -> tuple[list[str], np.ndarray]:
    """Each token's text as the detokenizer writes it; unknown words keep their own spelling. A record's
    `<eos> item <eos>` shows as "", the item, and a line break."""
    tok = gen.tokenizer
    detok = Detokenizer(tok)
    pieces = [detok.piece(int(i)) for i in ids]
    if tok.eos_id is not None and len(ids) and ids[0] == tok.eos_id:
        pieces[-1] = "\n"
    unknown = np.zeros(len(ids), dtype=bool)
    if tok.unk_id is not None and words is not None:
        for k, (i, w) in enumerate(zip(ids, words)):
            if i == tok.unk_id:
                pieces[k] = pieces[k].replace(tok.tokens[i], w)
                unknown[k] = True
    return pieces, unknown


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
