"""Tokenizers: text <-> token ids, for character and word models.

The vocabulary travels with the model (checkpoint and manifest hold `Tokenizer.to_dict()`), so the
trainer builds a tokenizer once and the engine rebuilds the same one from JSON. Detokenization is
incremental (`Detokenizer.piece`) so that streamed text and batch text are produced by one code path.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .errors import LstmgenError

EOS = "<eos>"  # end of record; also the start token that every record is generated from
UNK = "<unk>"  # rare or unseen word (word models only)

# Punctuation that becomes its own token, the classic TV-script setup. ':' stays inside words so that
# speaker tags like 'moe_szyslak:' are single tokens.
_PUNCT = '.,!?;"()'
_WORD_RE = re.compile(r'\n|--|[.,!?;"()]|[^\s.,!?;"()-]+(?:-[^\s.,!?;"()-]+)*|-')
_NO_SPACE_BEFORE = set(".,!?;)") | {"--"}


@dataclass
class Tokenizer:
    """A vocabulary (id -> token string) with the rules of its level ('char' or 'word')."""

    level: str  # "char" or "word"
    tokens: list[str]  # id -> token; special tokens are included at the front
    lowercase: bool = False  # word models fold case before lookup
    eos_id: int | None = None  # set for record models
    unk_id: int | None = None  # set for word models
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.level not in ("char", "word"):
            raise LstmgenError(f"unknown tokenizer level {self.level!r} (use 'char' or 'word')")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise LstmgenError("tokenizer vocabulary has duplicate tokens (the manifest was edited or is corrupt)")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, level: str, texts: Iterable[str], *, records: bool, min_count: int = 1, lowercase: bool = True,
              extra_texts: Iterable[str] = ()) -> "Tokenizer":
        """Vocabulary from `texts`; `extra_texts` add characters for char models (never words)."""
        specials = [EOS] if records else []
        if level == "char":
            chars = sorted(set().union(*(set(t) for t in texts), *(set(t) for t in extra_texts)))
            return cls("char", specials + chars, eos_id=0 if records else None)
        if level != "word":
            raise LstmgenError(f"unknown level {level!r} (use --level char or --level word)")
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(split_words(t, lowercase))
        return cls.from_word_counts(counts, records=records, min_count=min_count, lowercase=lowercase)

    @classmethod
    def from_word_counts(cls, counts: Counter[str], *, records: bool, min_count: int = 1,
                         lowercase: bool = True) -> "Tokenizer":
        """A word vocabulary from word counts (the trainer's streaming prepare pass counts in chunks)."""
        specials = [EOS] if records else []
        words = sorted(w for w, n in counts.items() if n >= min_count and w not in (EOS, UNK))
        # Most frequent first keeps common ids small, which reads better in dumps; ties by spelling.
        words.sort(key=lambda w: -counts[w])
        tokens = specials + [UNK] + words
        return cls("word", tokens, lowercase=lowercase, eos_id=0 if records else None, unk_id=len(specials))

    def extended(self, other: "Tokenizer") -> "Tokenizer":
        """This vocabulary with the tokens of `other` that it lacks appended (fine-tuning: the old ids
        keep their meaning, new ones follow). The end marker follows `other`: a records vocabulary
        has one (appended if this one lacks it); for running text an old one is an unused token."""
        if other.level != self.level:
            raise LstmgenError(f"the starting model is {self.level}-level and the new run {other.level}-level;"
                               f" fine-tune with --level {self.level}")
        tokens = [*self.tokens, *(t for t in other.tokens if t not in self.index)]
        eos_id = tokens.index(EOS) if other.eos_id is not None else None
        return Tokenizer(self.level, tokens, self.lowercase, eos_id, self.unk_id)

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": list(self.tokens), "lowercase": self.lowercase,
                "eos_id": self.eos_id, "unk_id": self.unk_id}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        try:
            tok = cls(d["level"], list(d["tokens"]), bool(d.get("lowercase", False)), d.get("eos_id"), d.get("unk_id"))
        except (KeyError, TypeError) as e:
            raise LstmgenError(f"tokenizer description is incomplete or malformed ({e})") from None
        for name in ("eos_id", "unk_id"):
            v = getattr(tok, name)
            if v is not None and not (isinstance(v, int) and 0 <= v < tok.vocab_size):
                raise LstmgenError(f"tokenizer {name}={v!r} is outside the vocabulary of {tok.vocab_size}")
        return tok

    # ---- encoding ----------------------------------------------------------------------------------
    def pieces(self, text: str) -> list[str]:
        """The text cut into token strings (before lookup)."""
        return list(text) if self.level == "char" else split_words(text, self.lowercase)

    def encode(self, text: str) -> list[int]:
        """Token ids; characters a char model lacks raise, unseen words map to <unk>."""
        pieces = self.pieces(text)
        if self.level == "word":
            return [self.index.get(p, self.unk_id) for p in pieces]  # type: ignore[misc]
        missing = sorted({p for p in pieces if p not in self.index})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise LstmgenError(f"text has characters the model's vocabulary lacks: {shown} (remove or replace them)")
        return [self.index[p] for p in pieces]

    @property
    def folds_case(self) -> bool:
        """True when the vocabulary is lower case only (word models built with lowercase, or a char model
        that saw no capital letter): text is then folded to lower case before lookup."""
        if self.level == "word":
            return self.lowercase
        letters = [t for t in self.tokens if len(t) == 1 and t.isalpha()]
        return bool(letters) and not any(t.isupper() for t in letters)

    def fold(self, text: str) -> str:
        """The text as this vocabulary spells it (lower case when `folds_case`)."""
        return text.lower() if self.folds_case else text

    def encode_known(self, text: str, strict: bool = False) -> tuple[list[int], int]:
        """Ids of the text's tokens and the count of out-of-vocabulary ones, for scoring unseen text.

        Char models leave unknown characters out (they cannot be predicted, so the figure covers the
        rest); word models score unknown words as <unk>, as they were trained to. `strict`: unknown
        characters raise, as `encode` does."""
        if strict or self.level == "word":
            ids = self.encode(text)
            return ids, (sum(1 for i in ids if i == self.unk_id) if self.level == "word" else 0)
        pieces = self.pieces(text)
        ids = [self.index[p] for p in pieces if p in self.index]
        return ids, len(pieces) - len(ids)

    def decode(self, ids: Iterable[int]) -> str:
        d = Detokenizer(self)
        return "".join(d.piece(int(i)) for i in ids)


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """Words, punctuation and line breaks as separate tokens: 'Moe: heck no-- true.' -> moe: heck no -- true ."""
    text = text.replace("\r\n", "\n")
    if lowercase:
        text = text.lower()
    return _WORD_RE.findall(text)


class Detokenizer:
    """Turns ids into text one token at a time, re-attaching punctuation and restoring line breaks."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.line_start = True
        self.glue_next = False  # after '(' or an opening quote the next word attaches
        self.quote_open = False
        self.prev_dash = False

    def piece(self, token_id: int) -> str:
        t = self.tok.tokens[token_id]
        if token_id == self.tok.eos_id:
            return ""
        if self.tok.level == "char":
            return t
        if t == "\n":
            self.line_start, self.glue_next, self.quote_open, self.prev_dash = True, False, False, False
            return "\n"
        space = "" if (self.line_start or self.glue_next) else " "
        self.line_start = False
        self.glue_next = False
        after_dash = self.prev_dash
        self.prev_dash = t == "-"
        if t in _NO_SPACE_BEFORE:
            # '-' then '--' glued would read back as '--' '-': keep them apart.
            return space + t if (t == "--" and after_dash) else t
        if t == "(":
            self.glue_next = True
            return space + t
        if t == '"':
            self.quote_open = not self.quote_open
            if self.quote_open:
                self.glue_next = True
                return space + t
            return t
        return space + t
