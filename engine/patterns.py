"""Constrained generation: a regular expression and length bounds compiled to an automaton over a
model's vocabulary (`TokenAutomaton`), which every runtime applies the same way.

What a pattern constrains. Records models: the whole record, the prompt included, matches the
pattern, and the end marker is allowed only where the pattern accepts (so a record is never cut to
fit: `min_length`/`max_length` are bounds of the same automaton, in characters). Running text: the
text written after the prompt (what `--no-echo` prints) matches; a sample ends when the automaton
reaches a state that allows no further token (finish reason `pattern_end`), or at a stop string or
`max_tokens`, as any sample does. A model whose vocabulary is lower case only reads the pattern
ignoring case, as it reads prompts folded.

How. The pattern is checked with Python's own parser (its syntax errors, and the constructs that are
not regular: look-around, back-references, anchors inside the pattern, atomic groups, possessive
quantifiers, each named), then compiled to a deterministic automaton over characters by
**interegular**. Why interegular: it is pure Python with no dependencies (the engine stays light;
outlines-core and llguidance are native builds made for byte-level BPE vocabularies and bring their
own tokenizer models), it compiles a typical pattern in about a millisecond (greenery, the other
pure-Python choice, took 50-100 ms), it is what outlines, vLLM and lm-format-enforcer used for this
job, and it refuses what it cannot do by name (`Unsupported`). The character automaton is then
walked with each token's text: a word model's token reads differently after a line break, an
opening quote or a dash (lstmgen.tokenizer.Detokenizer), so a state is (character state, length so
far, detokenizer mode), and the walk uses the Detokenizer itself, never a copy of its rules. States
from which no accepting state can be reached are pruned, so a sample never dead-ends; banned tokens
are left out before pruning, so a ban can never leave a state without a token to write.

The result, per state s and token v: `next[s, v]`, the state after writing v, or -1 where v is not
allowed (the end marker's column: the same state where the record may end). The decode loop masks
the disallowed tokens' logits to -inf before temperature, top-k and top-p (so what is allowed is
renormalised, then filtered); generate.onnx takes the same table as inputs. Compiled automata are
cached per (vocabulary, pattern, bounds, bans): a word model's per-state token index is computed
once per pattern.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import LstmgenError
from .options import OptionError, option
from .tokenizer import Detokenizer, Tokenizer

MAX_STATES = 20_000  # automaton states at most: beyond, a pattern (or bound) is refused, not slowly compiled
MAX_POSITIONS = 2_000  # characters a pattern spells out, repeats expanded ('a{3}' is 3): beyond, refused
CACHE_SIZE = 64  # compiled automata kept
FORMAT = "lstmgen-pattern"  # what `lstmgen compile-pattern` writes (js/lstmgen.mjs reads it)
FORMAT_VERSION = 1
UNSUPPORTED = "patterns are plain regular expressions: no look-around, back-references, \\b, anchors inside," \
              " atomic groups or possessive quantifiers"


# -- checking the regular expression -------------------------------------------------------------------------
def _parser():
    try:
        from re import _parser as parser  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as parser
    return parser


def _not_regular(tree) -> str | None:
    """The first construct of a parsed pattern that is not a plain regular expression, named."""
    names = {"ASSERT": "look-around", "ASSERT_NOT": "look-around", "GROUPREF": "a back-reference",
             "GROUPREF_EXISTS": "a conditional group", "ATOMIC_GROUP": "an atomic group",
             "POSSESSIVE_REPEAT": "a possessive quantifier", "AT": "an anchor or \\b inside the pattern"}
    for op, arg in tree:
        name = str(op)
        if name in names:
            if name.startswith("ASSERT"):
                return "look-behind" if arg[0] < 0 else "look-ahead"
            return names[name]
        for sub in _subpatterns(arg):
            found = _not_regular(sub)
            if found:
                return found
    return None


def _subpatterns(arg):
    """The nested patterns of one parsed item (groups, repeats, branches)."""
    items = arg if isinstance(arg, (list, tuple)) else [arg]
    for item in items:
        if hasattr(item, "data"):  # a SubPattern
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _subpatterns(item)


def _strip_anchors(regex: str) -> str:
    """A pattern always matches whole: a leading ^ or \\A and a trailing $ or \\Z say nothing more."""
    for start in ("^", "\\A"):
        if regex.startswith(start):
            regex = regex[len(start):]
    for end in ("$", "\\Z"):
        cut = regex[: -len(end)]
        if regex.endswith(end) and (len(cut) - len(cut.rstrip("\\"))) % 2 == 0:
            regex = cut
    return regex


_UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


def _plain_escapes(regex: str) -> str:
    """\\uXXXX and \\UXXXXXXXX (Python's) as the character itself, which interegular reads."""
    return _UNICODE_ESCAPE.sub(lambda m: m.group(1) + re.escape(chr(int(m.group(2) or m.group(3), 16))), regex)


def check_regex(regex: str) -> str:
    """The pattern as compiled (anchors stripped, escapes made plain); raises OptionError naming what is wrong."""
    bad = lambda why: OptionError(option("regex"), "{name} {why}", why=why)  # noqa: E731
    body = _plain_escapes(_strip_anchors(regex))
    try:
        tree = _parser().parse(body)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        raise bad(f"is not a valid regular expression: {e.msg}{where}") from None
    except (OverflowError, RecursionError) as e:  # a huge repeat count, or nesting deeper than Python parses
        raise bad(f"is not a valid regular expression: {e}") from None
    construct = _not_regular(tree)
    if construct:
        raise bad(f"uses {construct}, which is not supported ({UNSUPPORTED})")
    positions = _positions(tree)
    if positions > MAX_POSITIONS:
        raise bad(f"spells out about {positions} characters with its repeats (at most {MAX_POSITIONS}); use smaller"
                  " counts, or + and * for open ends")
    return body


def _positions(tree) -> int:
    """How many characters a pattern spells out with its repeats expanded: what its automaton grows with."""
    total = 0
    for op, arg in tree:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, sub = arg
            bound = high if high != _parser().MAXREPEAT else low + 1
            total += max(bound, 1) * _positions(sub)
        elif name == "BRANCH":
            total += max((_positions(b) for b in arg[1]), default=0)
        elif name == "SUBPATTERN":
            total += _positions(arg[-1])
        else:
            total += 1
    return total


def _char_fsm(body: str, fold_case: bool):
    """interegular's deterministic automaton of the pattern over characters."""
    import interegular

    try:
        return interegular.parse_pattern(("(?i)" if fold_case else "") + body).to_fsm()
    except Exception as e:  # interegular's Unsupported / InvalidSyntax and its internal errors alike
        raise OptionError(option("regex"), "{name} uses something the pattern compiler does not support ({why})",
                          why=str(e).splitlines()[0] if str(e) else type(e).__name__) from None


# -- what each token writes, in each detokenizer mode ----------------------------------------------------------
@dataclass
class TokenTexts:
    """Each token's text in each detokenizer mode (char models have one mode), as character ids."""

    modes: list[tuple]  # mode 0 is the start of a text
    texts: list[list[str]]  # [mode][token] the token's text there ('' for the end marker)
    mode_next: np.ndarray  # [modes, vocab] the mode after writing the token
    alphabet: list[str]  # every character any token writes
    chars: list[np.ndarray]  # [mode] int32 [vocab, longest]: character ids of each text, longest first, -1 past its end
    order: list[np.ndarray]  # [mode] the token of each row of `chars` (longest texts first)
    longer: list[np.ndarray]  # [mode] [longest]: how many texts are longer than j characters
    lengths: list[np.ndarray]  # [mode] int64 [vocab]


_MODE_FIELDS = ("line_start", "glue_next", "quote_open", "prev_dash")


def token_texts(tokenizer: Tokenizer) -> TokenTexts:
    """Walk every token in every reachable detokenizer mode with lstmgen's own Detokenizer."""
    d = Detokenizer(tokenizer)
    modes = [tuple(getattr(d, f) for f in _MODE_FIELDS)]
    texts, nexts, index = [], [], {modes[0]: 0}
    i = 0
    while i < len(modes):
        row_texts, row_next = [], []
        for v in range(tokenizer.vocab_size):
            for f, x in zip(_MODE_FIELDS, modes[i]):
                setattr(d, f, x)
            row_texts.append(d.piece(v))
            after = tuple(getattr(d, f) for f in _MODE_FIELDS)
            if after not in index:
                index[after] = len(modes)
                modes.append(after)
            row_next.append(index[after])
        texts.append(row_texts)
        nexts.append(row_next)
        i += 1
    alphabet = sorted({c for row in texts for t in row for c in t})
    char_id = {c: k for k, c in enumerate(alphabet)}
    chars, orders, longer, lengths = [], [], [], []
    for row in texts:
        length = np.array([len(t) for t in row], dtype=np.int64)
        order = np.argsort(-length, kind="stable")  # a walk's j-th character step touches only texts that long
        arr = np.full((len(row), max(int(length.max(initial=0)), 1)), -1, dtype=np.int32)
        for k, v in enumerate(order):
            arr[k, : length[v]] = [char_id[c] for c in row[v]]
        chars.append(arr)
        orders.append(order)
        longer.append(np.array([(length > j).sum() for j in range(arr.shape[1])], dtype=np.int64))
        lengths.append(length)
    return TokenTexts(modes, texts, np.array(nexts, dtype=np.int32), alphabet, chars, orders, longer, lengths)


def vocabulary_digest(tokenizer: Tokenizer) -> str:
    """sha256 of the vocabulary as compact JSON: what a compiled pattern file is tied to (js/lstmgen.mjs computes it too)."""
    text = json.dumps(tokenizer.tokens, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the automaton ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenAutomaton:
    """A compiled pattern over one vocabulary (see the module docstring).

    next: int32 [states, vocab], the state after each token or -1 (not allowed); accepting: bool
    [states] (where the text so far matches); terminal: bool [states] (no token allowed: running text
    ends there); start_by_mode: int32 [modes], the start state after a prompt that leaves the
    detokenizer in that mode (-1: nothing can follow such a prompt); mode_next: int32 [modes, vocab];
    min_tokens: int32 [states], the fewest tokens to a complete sample (the end marker included).
    """

    regex: str | None
    min_length: int | None
    max_length: int | None
    records: bool
    banned: tuple[int, ...]
    vocab_digest: str
    next: np.ndarray
    accepting: np.ndarray
    terminal: np.ndarray
    start_by_mode: np.ndarray
    mode_next: np.ndarray
    min_tokens: np.ndarray

    @property
    def states(self) -> int:
        return self.next.shape[0]

    # Asked every step (and frozen, so cached_property keeps them in the instance's __dict__).
    @cached_property
    def ends_early(self) -> bool:
        """Whether some state allows nothing (running text then ends there)."""
        return bool(self.terminal.any())

    @cached_property
    def blocked(self) -> np.ndarray:
        """bool [states, vocab]: the tokens each state does not allow."""
        return self.next < 0

    @cached_property
    def allowed(self) -> np.ndarray:
        """bool [states, vocab]: the tokens each state allows."""
        return self.next >= 0

    def start(self, prompt_ids, max_tokens: int | None = None) -> int:
        """The state rows start in after this prompt; raises one line when nothing can follow it."""
        if self.records:  # the record starts with the prompt: walk it
            state = int(self.start_by_mode[0])
            for i in prompt_ids:
                state = int(self.next[state, i]) if state >= 0 else -1
            if state < 0:
                which = "regex" if self.regex is not None else "max_length"
                raise OptionError(option(which), "the prompt cannot begin a record that matches {what}; change the"
                                  " prompt or the pattern", what=self._described())
        else:  # the pattern is for what follows the prompt, as the detokenizer will write it
            mode = 0
            for i in prompt_ids:
                mode = int(self.mode_next[mode, i])
            state = int(self.start_by_mode[mode])
            if state < 0:
                raise OptionError(option("regex"), "{name} cannot match what this model writes after this prompt"
                                  " (a word model writes a space before its next word: begin the pattern with one)")
        if max_tokens is not None and self.min_tokens[state] > max_tokens:
            raise OptionError(option("max_tokens"), "{name} is {given}, but the shortest sample that matches the"
                              " pattern takes {least} tokens; raise {name}", given=max_tokens,
                              least=int(self.min_tokens[state]))
        return state

    def _described(self) -> str:
        parts = [f"regex {self.regex!r}" if self.regex is not None else "",
                 f"min_length {self.min_length}" if self.min_length is not None else "",
                 f"max_length {self.max_length}" if self.max_length is not None else ""]
        return " with ".join(p for p in parts if p)

    # -- the file `lstmgen compile-pattern` writes ------------------------------------------------------------
    def to_dict(self, model: str | None = None) -> dict:
        """A JSON-able form: allowed transitions as flat [state, token, next, ...] triples (tables are sparse)."""
        s, v = np.nonzero(self.allowed)
        triples = np.stack([s, v, self.next[s, v]], axis=1).ravel()
        return {"format": FORMAT, "version": FORMAT_VERSION, "model": model, "vocab_sha256": self.vocab_digest,
                "vocab_size": int(self.next.shape[1]), "regex": self.regex, "min_length": self.min_length,
                "max_length": self.max_length, "records": self.records, "banned": list(self.banned),
                "states": self.states, "transitions": triples.tolist(),
                "accepting": np.flatnonzero(self.accepting).tolist(), "start_by_mode": self.start_by_mode.tolist(),
                "mode_next": self.mode_next.tolist(),
                "min_tokens": self.min_tokens.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenAutomaton":
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
            raise LstmgenError(f"not an lstmgen pattern file (format {FORMAT} version {FORMAT_VERSION}); write it with"
                               " `lstmgen compile-pattern`")
        states, vocab = int(d["states"]), int(d["vocab_size"])
        nxt = np.full((states, vocab), -1, dtype=np.int32)
        t = np.asarray(d["transitions"], dtype=np.int64).reshape(-1, 3)
        nxt[t[:, 0], t[:, 1]] = t[:, 2]
        accepting = np.zeros(states, dtype=bool)
        accepting[np.asarray(d["accepting"], dtype=np.int64)] = True
        return cls(d["regex"], d["min_length"], d["max_length"], bool(d["records"]), tuple(d["banned"]),
                   d["vocab_sha256"], nxt, accepting, ~(nxt >= 0).any(axis=1), np.asarray(d["start_by_mode"], np.int32),
                   np.asarray(d["mode_next"], np.int32), np.asarray(d["min_tokens"], np.int32))


# -- compiling -------------------------------------------------------------------------------------------------
class _Builder:
    """The product of the character automaton, a length counter and the detokenizer modes, walked
    breadth-first from the start states; tokens are walked all at once (NumPy) per (state, mode)."""

    def __init__(self, tokenizer: Tokenizer, texts: TokenTexts, fsm, min_length, max_length, records, banned):
        self.texts, self.records = texts, records
        self.min_length = min_length or 0
        self.max_length = max_length
        self.cap = max_length if max_length is not None else self.min_length  # counts above it change nothing
        self.dfa, self.finals = _dfa_table(fsm, texts.alphabet)
        self.dead = self.dfa.shape[0] - 1
        self.eos = tokenizer.eos_id
        blocked = np.zeros(tokenizer.vocab_size, dtype=bool)
        blocked[list(banned)] = True
        self.may_end = self.eos is not None and not blocked[self.eos]  # a banned end marker ends no record
        if self.eos is not None:
            blocked[self.eos] = True  # the end marker is allowed apart, where the pattern accepts
        self.blocked = blocked
        self.walks: dict[tuple[int, int], np.ndarray] = {}

    def walk(self, d: int, mode: int) -> np.ndarray:
        """The character state after each token's text from character state d in this mode."""
        key = (d, mode)
        if key not in self.walks:
            chars, longer = self.texts.chars[mode], self.texts.longer[mode]
            cur = np.full(chars.shape[0], d, dtype=np.int32)
            for j in range(chars.shape[1]):  # texts sorted longest first: the first longer[j] have a j-th character
                n = longer[j]
                cur[:n] = self.dfa[cur[:n], chars[:n, j]]
            out = np.empty_like(cur)
            out[self.texts.order[mode]] = cur
            self.walks[key] = out
        return self.walks[key]

    def accepts(self, d: int, count: int) -> bool:
        return bool(self.finals[d]) and count >= self.min_length

    def build(self):
        """(next [S, V], accepting [S], start_by_mode [M]) before pruning."""
        ids: dict[tuple[int, int, int], int] = {}
        keys: list[tuple[int, int, int]] = []

        def state_id(key):
            if key not in ids:
                if len(keys) >= MAX_STATES:
                    raise OptionError(option("regex"), "{name} (with its length bounds) needs more than {n} automaton"
                                      " states; simplify it", n=MAX_STATES)
                ids[key] = len(keys)
                keys.append(key)
            return ids[key]

        starts = [state_id((0, 0, m)) for m in range(len(self.texts.modes))]
        rows, accepting = [], []
        while len(rows) < len(keys):
            d, count, mode = keys[len(rows)]
            rows.append(self._row(d, count, mode, state_id))
            accepting.append(self.accepts(d, count) and (self.may_end or not self.records))
        return np.array(rows, dtype=np.int32), np.array(accepting, dtype=bool), np.array(starts, dtype=np.int32)

    def _row(self, d: int, count: int, mode: int, state_id) -> np.ndarray:
        nd = self.walk(d, mode)
        nc = count + self.texts.lengths[mode]
        ok = (nd != self.dead) & ~self.blocked & (self.texts.lengths[mode] > 0)
        if self.max_length is not None:
            ok &= nc <= self.max_length
        nc = np.minimum(nc, self.cap)
        row = np.full(len(nd), -1, dtype=np.int32)
        if ok.any():
            packed = (nd.astype(np.int64) * (self.cap + 1) + nc) * len(self.texts.modes) + self.texts.mode_next[mode]
            unique, inverse = np.unique(packed[ok], return_inverse=True)
            M, C = len(self.texts.modes), self.cap + 1
            targets = np.array([state_id((int(k) // M // C, int(k) // M % C, int(k) % M)) for k in unique], np.int32)
            row[ok] = targets[inverse]
        if self.records and self.may_end and self.accepts(d, count):
            row[self.eos] = state_id((d, count, mode))
        return row


def _dfa_table(fsm, alphabet: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """interegular's automaton as a table over the model's characters, with a dead state last; state 0 starts."""
    from interegular.fsm import anything_else

    order = [fsm.initial] + sorted((s for s in fsm.states if s != fsm.initial), key=repr)
    index = {s: k for k, s in enumerate(order)}
    dead = len(order)
    table = np.full((dead + 1, max(len(alphabet), 1)), dead, dtype=np.int32)
    symbols = [fsm.alphabet[c] if c in fsm.alphabet else fsm.alphabet[anything_else] for c in alphabet]
    for s in order:
        moves = fsm.map.get(s, {})
        for a, sym in enumerate(symbols):
            if sym in moves:
                table[index[s], a] = index[moves[sym]]
    finals = np.zeros(dead + 1, dtype=bool)
    finals[[index[s] for s in fsm.finals]] = True
    return table, finals


def _prune(nxt: np.ndarray, accepting: np.ndarray, starts: np.ndarray, records: bool):
    """Keep the states that can still reach acceptance (each with its fewest tokens to get there)."""
    S = len(accepting)
    src, tok = np.nonzero(nxt >= 0)
    edges = np.unique(src.astype(np.int64) * S + nxt[src, tok])  # many tokens lead along one edge
    preds = [[] for _ in range(S)]
    for a, b in zip((edges // S).tolist(), (edges % S).tolist()):
        preds[b].append(a)
    distance = np.full(S, -1, dtype=np.int64)
    frontier = np.flatnonzero(accepting).tolist()
    distance[frontier] = 1 if records else 0  # a record's end marker is one more token
    while frontier:  # breadth-first over reversed edges: fewest tokens to an accepting state
        nxt_frontier = []
        for b in frontier:
            for a in preds[b]:
                if distance[a] < 0:
                    distance[a] = distance[b] + 1
                    nxt_frontier.append(a)
        frontier = nxt_frontier
    live = distance >= 0
    renumber = np.full(S + 1, -1, dtype=np.int32)
    renumber[np.flatnonzero(live)] = np.arange(int(live.sum()), dtype=np.int32)
    pruned = renumber[np.where(nxt >= 0, nxt, S)][live]
    return pruned, accepting[live], renumber[starts], distance[live].astype(np.int32)


def _compile(tokenizer: Tokenizer, texts: TokenTexts, regex, min_length, max_length, records, banned) -> TokenAutomaton:
    if not records and (min_length is not None or max_length is not None):
        which = option("min_length" if min_length is not None else "max_length")
        raise OptionError(which, "{name} applies to records models (a record's length); this model writes running"
                          " text: bound its length with the maximum number of tokens, or a pattern such as .{{0,80}}")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise OptionError(option("min_length"), "{name} ({low}) is above the maximum length ({high})", low=min_length,
                          high=max_length)
    body = check_regex(regex) if regex is not None else "(.|\n)*"
    fsm = _char_fsm(body, tokenizer.folds_case)
    nxt, accepting, starts = _Builder(tokenizer, texts, fsm, min_length, max_length, records, banned).build()
    nxt, accepting, starts, min_tokens = _prune(nxt, accepting, starts, records)
    automaton = TokenAutomaton(regex, min_length, max_length, records, tuple(banned), vocabulary_digest(tokenizer), nxt,
                               accepting, ~(nxt >= 0).any(axis=1), starts, texts.mode_next, min_tokens)
    if (starts < 0).all():
        raise _why_empty(tokenizer, texts, fsm, regex, min_length, max_length, records, banned)
    return automaton


def _why_empty(tokenizer, texts, fsm, regex, min_length, max_length, records, banned) -> OptionError:
    """One line on why no sample can match: the bans, missing characters, the length bounds, or the pattern."""
    if banned:
        try:
            _compile(tokenizer, texts, regex, min_length, max_length, records, ())
            return OptionError(option("regex"), "no sample can match {name} without the banned tokens (ban, or <unk>:"
                               " allow_unk); ban fewer tokens")
        except OptionError:
            pass
    have = set(texts.alphabet)
    useful = _useful_symbols(fsm)
    missing = sorted(c for c in fsm.alphabet if isinstance(c, str) and c not in have and fsm.alphabet[c] in useful
                     and not (tokenizer.folds_case and c.lower() in have))
    from interegular.fsm import anything_else

    unnamed = fsm.alphabet[anything_else] in useful  # a negated class: characters the pattern does not list
    if (missing or unnamed) and regex is not None:
        shown = ", ".join(repr(c) for c in missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        shown = shown or "ones outside it"
        known = "".join(c for c in texts.alphabet if c.isprintable())
        return OptionError(option("regex"), "{name} needs characters this model's vocabulary lacks: {shown} (it writes"
                           " only {known!r})", shown=shown, known=known[:80])
    if min_length is not None or max_length is not None:
        return OptionError(option("min_length" if min_length is not None else "max_length"), "no record that matches"
                           " the pattern has a length within min_length {low} and max_length {high}",
                           low=min_length, high=max_length)
    return OptionError(option("regex"), "{name} matches no text this model can write")


def _useful_symbols(fsm) -> set:
    """interegular symbols on some path from the start to a match: the characters a match needs."""
    reachable, todo = {fsm.initial}, [fsm.initial]
    while todo:
        for t in fsm.map.get(todo.pop(), {}).values():
            if t not in reachable:
                reachable.add(t)
                todo.append(t)
    live, changed = set(fsm.finals), True
    while changed:
        changed = False
        for s, moves in fsm.map.items():
            if s not in live and any(t in live for t in moves.values()):
                live.add(s)
                changed = True
    return {sym for s in reachable for sym, t in fsm.map.get(s, {}).items() if t in live}


_cache: OrderedDict = OrderedDict()
_texts_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def compile_pattern(tokenizer: Tokenizer, *, regex: str | None = None, min_length: int | None = None,
                    max_length: int | None = None, records: bool, banned=()) -> TokenAutomaton:
    """The automaton of a pattern and length bounds over this vocabulary (cached); raises one-line OptionErrors."""
    vocab_key = (tokenizer.level, tokenizer.lowercase, tokenizer.eos_id, tuple(tokenizer.tokens))
    key = (vocab_key, regex, min_length, max_length, records, tuple(sorted(banned)))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        texts = _texts_cache.get(vocab_key)
    if texts is None:
        texts = token_texts(tokenizer)
    automaton = _compile(tokenizer, texts, regex, min_length, max_length, records, key[-1])
    with _lock:
        _texts_cache[vocab_key] = texts
        while len(_texts_cache) > 4:
            _texts_cache.popitem(last=False)
        _cache[key] = automaton
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return automaton
