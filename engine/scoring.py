"""One definition of a validation/score figure, shared by the trainer (torch) and the engine (ONNX).

Running text: the token sequence t[0..N-1] is cut into at most `segments` contiguous segments; each
segment starts from a zero state at its first input token and predicts the tokens after it, so
every token but t[0] is predicted exactly once. segments=1 is the exact single-segment figure.
Records: each record is `<eos> item <eos>`, predicted after the first <eos> (end marker counted).

Text the model has not seen: tokens outside the vocabulary are counted (`Score.oov`) and the figure
covers the rest (see Tokenizer.encode_known), as language-model tools such as KenLM report it. A
vocabulary without capitals reads text folded to lower case.

One implementation serves every caller: `read_for_scoring` (text -> sequences), `plan` (which rows run
together, in which chunks) and a Reader (the model's runtime: ONNX Runtime for `Generator.score` and
inspect, torch for training's evaluation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import LstmgenError, TextTooShort
from .tokenizer import Tokenizer

SCORE_CHUNK = 512  # time steps per model call: long texts are read in chunks, the state carried across
RECORDS_PER_CALL = 512  # records of one length read side by side in one call


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64: the model's own distribution, nothing filtered."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m)


def surprisal(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per position, in float64: what a score sums (its nats)."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=-1)) + m[..., 0]
    return lse - np.take_along_axis(x, targets[..., None], axis=-1)[..., 0]


def text_segments(n_tokens: int, segments: int) -> list[tuple[int, int]]:
    """(start, length) of each segment's inputs; its targets are start+1 .. start+length."""
    n_targets = n_tokens - 1
    if n_targets < 1:
        return []
    seg = -(-n_targets // max(1, segments))
    return [(a, min(seg, n_targets - a)) for a in range(0, n_targets, seg)]


# -- the one scoring implementation -----------------------------------------------------------------------
# A Reader runs the model over inputs [B, T] from a state (None = zero) and returns the surprisal of the
# targets [B, T] (float64 nats) and the state after. The engine's reader is ONNX Runtime's
# (`Generator.reader`), training's is its torch model (lstmgen.trainer.train): the same plan of calls,
# the same definition, two runtimes.
Reader = Callable[[np.ndarray, np.ndarray, object], tuple[np.ndarray, object]]


@dataclass
class ScoredText:
    """A text as the model reads it to be scored: running text is one sequence; records are one
    `<eos> item <eos>` sequence each. chars: the characters the predicted tokens stand for."""

    sequences: list[np.ndarray]
    records: bool
    chars: int
    oov: int = 0
    case_folded: bool = False
    oov_scored: bool = False  # word models: unknown words are read as <unk> (and so among the tokens)


def read_for_scoring(tokenizer: Tokenizer, text: str, *, records: bool, strict: bool = False) -> ScoredText:
    """The text folded to the vocabulary's case and encoded, unknown tokens counted (Tokenizer.encode_known)."""
    folded = tokenizer.fold(text)
    word = tokenizer.level == "word"
    if records:
        items = [r.strip() for r in folded.split("\n") if r.strip()]
        if not items:
            raise LstmgenError("no records to score (the text is empty)")
        known = [tokenizer.encode_known(r, strict) for r in items]
        eos = tokenizer.eos_id
        seqs = [np.array([eos, *ids, eos], dtype=np.int64) for ids, _ in known]
        chars = len(folded) if word else sum(len(q) - 1 for q in seqs)
        return ScoredText(seqs, True, chars, sum(n for _, n in known), folded != text, word)
    ids, oov = tokenizer.encode_known(folded, strict)
    if len(ids) < 2:
        left_out = f" ({oov} outside the model's vocabulary were left out)" if oov else ""
        raise TextTooShort(f"text too short to score: it needs at least 2 tokens the model knows{left_out}")
    chars = len(folded) if word else len(ids) - 1
    return ScoredText([np.array(ids, dtype=np.int64)], False, chars, oov, folded != text, word)


@dataclass
class Batch:
    """Rows that run through the model together. Row r holds targets of sequence `where[r][0]` from
    position `where[r][1]` on; the model reads `inputs` chunk by chunk, carrying its state.

        sequence   t0  t1  t2  t3  t4  t5 ...
        inputs    [t0  t1  t2  t3  t4]         (a segment starting at t0)
        targets       [t1  t2  t3  t4  t5]     first target position 1
    """

    inputs: np.ndarray  # [B, T]
    targets: np.ndarray  # [B, T]
    where: list[tuple[int, int]]


def plan(text: ScoredText, segments: int = 1, share: tuple[int, int] = (0, 1)) -> list[Batch]:
    """The model calls that score a text: records of one length RECORDS_PER_CALL at a time; running
    text as `segments` segments, those of one length side by side. `share` = (rank, world): the
    segments or records a data-parallel rank scores (every world-th)."""
    rank, world = share
    if text.records:
        units = [(k, 0, len(q) - 1) for k, q in enumerate(text.sequences)][rank::world]
    else:
        units = [(0, start, length) for start, length in text_segments(len(text.sequences[0]), segments)][rank::world]
    by_length: dict[int, list[tuple[int, int]]] = {}
    for k, start, length in units:
        by_length.setdefault(length, []).append((k, start))
    batches = []
    for length, rows in by_length.items():
        for a in range(0, len(rows), RECORDS_PER_CALL if text.records else len(rows)):
            part = rows[a: a + RECORDS_PER_CALL] if text.records else rows
            seq = text.sequences
            batches.append(Batch(np.stack([seq[k][s: s + length] for k, s in part]),
                                 np.stack([seq[k][s + 1: s + length + 1] for k, s in part]),
                                 [(k, s + 1) for k, s in part]))
    return batches


def read_batch(read: Reader, batch: Batch, on_chunk: Callable[[Batch, int, object], None] | None = None) -> np.ndarray:
    """Surprisal [B, T] of a batch, SCORE_CHUNK steps per call; on_chunk(batch, t, state) sees the state
    before each chunk after the first (inspect keeps it to step from there)."""
    out = np.empty(batch.targets.shape, dtype=np.float64)
    state = None
    for a in range(0, batch.inputs.shape[1], SCORE_CHUNK):
        if a and on_chunk is not None:
            on_chunk(batch, a, state)
        out[:, a: a + SCORE_CHUNK], state = read(batch.inputs[:, a: a + SCORE_CHUNK],
                                                 batch.targets[:, a: a + SCORE_CHUNK], state)
    return out


def surprisal_by_token(read: Reader, text: ScoredText, segments: int = 1, on_chunk=None) -> list[np.ndarray]:
    """Each sequence's surprisal per token (NaN where a token is not predicted: a sequence's first)."""
    out = [np.full(len(q), np.nan) for q in text.sequences]
    for batch in plan(text, segments):
        nats = read_batch(read, batch, on_chunk)
        for row, (k, first) in enumerate(batch.where):
            out[k][first: first + nats.shape[1]] = nats[row]
    return out


def score_text(read: Reader, text: ScoredText, segments: int = 1, share: tuple[int, int] = (0, 1)) -> Score:
    """The score of a text (of the share of it a rank reads); `chars` is the whole text's."""
    nats, tokens = 0.0, 0
    for batch in plan(text, segments, share):
        nats += float(read_batch(read, batch).sum())
        tokens += batch.targets.size
    return Score(nats, tokens, text.chars, text.oov, text.case_folded, text.oov_scored)


@dataclass
class Score:
    nats: float  # total negative log-likelihood of the predicted tokens
    tokens: int  # predicted tokens (end markers included)
    chars: int  # characters those tokens stand for (the end marker counts as one, the newline)
    oov: int = 0  # tokens of the text outside the vocabulary (char models: left out; word models: scored as <unk>)
    case_folded: bool = False  # the text was folded to lower case (the vocabulary has no capitals)
    oov_scored: bool = False  # word models: the oov tokens were scored as <unk> (they are among `tokens`)

    @property
    def oov_rate(self) -> float:
        """Out-of-vocabulary tokens per token of the text."""
        return self.oov / max(1, self.tokens if self.oov_scored else self.tokens + self.oov)

    def coverage(self) -> str:
        """What the figure covers, in words (as KenLM reports its OOVs)."""
        parts = []
        if self.oov:
            parts.append(f"out-of-vocabulary {'words scored as <unk>' if self.oov_scored else 'characters left out of the figure'}")
        if self.case_folded:
            parts.append("text folded to lower case (the model's vocabulary has no capitals)")
        return "; ".join(parts)

    @property
    def nats_per_token(self) -> float:
        return self.nats / max(1, self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nats_per_token, 700.0))

    @property
    def bits_per_char(self) -> float:
        return self.nats / max(1, self.chars) / math.log(2)

    def __repr__(self) -> str:
        return (f"Score({self.nats_per_token:.4f} nats/token, perplexity {self.perplexity:.3f},"
                f" {self.bits_per_char:.4f} bits/char; nats={self.nats:.4f}, tokens={self.tokens}, chars={self.chars})")

    def to_dict(self) -> dict:
        return {**asdict(self), "nats_per_token": self.nats_per_token, "perplexity": self.perplexity,
                "bits_per_char": self.bits_per_char, "oov_rate": self.oov_rate}


def score_per_line(gen, text: str, *, records: bool, strict: bool = False) -> Iterator[tuple[str, Score | None]]:
    """Each non-empty line scored on its own (`gen` is a lstmgen.Generator), to rank candidates.

    A records model scores each line as a record; a running-text model scores each line as a text
    from a fresh state (None for a line too short to predict anything, under 2 tokens)."""
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            score = gen.score(line, records=records, strict=strict)
        except TextTooShort:
            score = None
        yield line, score
