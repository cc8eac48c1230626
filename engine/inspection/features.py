"""Features of an inspected text and the LSTM cells that track them.

`text_features` describes what has been read up to each token (inside quotes, position in the line,
...); `correlate` gives every cell's Pearson correlation with each feature, so `top_cells` finds the
interpretable ones, as in Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent
Networks" (2015). `saturation` is how often each unit sits near -1 or 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import LstmgenError
from .reading import Inspection

NEAR_ONE = 0.9  # |h| above this counts as saturated in `saturation`


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
