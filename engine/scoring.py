"""One definition of a validation/score figure, shared by the trainer (torch) and the engine (ONNX).

Running text: the token sequence t[0..N-1] is cut into at most `streams` contiguous segments; each
segment starts from a zero state at its first input token and predicts the tokens after it, so
every token but t[0] is predicted exactly once. streams=1 is the exact single-stream figure.
Records: each record is `<eos> item <eos>`, predicted after the first <eos> (end marker counted).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


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
                "bits_per_char": self.bits_per_char}
