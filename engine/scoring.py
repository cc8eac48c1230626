"""One definition of a validation/score figure, shared by the trainer (torch) and the engine (ONNX).

Running text: the token sequence t[0..N-1] is cut into at most `streams` contiguous segments; each
segment starts from a zero state at its first input token and predicts the tokens after it, so
every token but t[0] is predicted exactly once. streams=1 is the exact single-stream figure.
Records: each record is `<eos> item <eos>`, predicted after the first <eos> (end marker counted).

Text the model has not seen: tokens outside the vocabulary are counted (`Score.oov`) and the figure
covers the rest (see Tokenizer.encode_known), as language-model tools such as KenLM report it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from .errors import TextTooShort


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


def stream_segments(n_tokens: int, streams: int) -> list[tuple[int, int]]:
    """(start, length) of each segment's inputs; its targets are start+1 .. start+length."""
    n_targets = n_tokens - 1
    if n_targets < 1:
        return []
    seg = -(-n_targets // max(1, streams))
    return [(a, min(seg, n_targets - a)) for a in range(0, n_targets, seg)]


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
