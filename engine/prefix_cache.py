"""The prefix-state cache: a model's state after reading a token sequence, kept so that a prompt read
before, or one that begins with one read before, is not read again from the start.

An LSTM's whole context is its state (2 x layers x hidden floats) and the logits of the next token,
so an entry costs a few kilobytes (plus the ids that key it), where a transformer's would cost its
KV cache. `PrefixCache` is one LRU bounded in bytes, shared by the models of a server and keyed by
(model, token ids); `PrefixCache.view(name, backend)` is one model's part of it, which the decode
loop prefills through (generate, completions, and anything else that runs a Job), as do sessions
(POST /v1/next) and scoring (`Generator.score(..., cache=...)`).

A hit never changes a text: an exact hit returns what that same prefill computed, and the longest
cached prefix of a longer sequence is used only for a model whose runtime gives bit-identical
results when a sequence is read in two parts (`reads_in_parts_exactly`, probed once per model: fp32
LSTMs do; int8 models quantise activations over the whole input, so they get exact hits only).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .scoring import SCORE_CHUNK, surprisal

ENTRY_OVERHEAD = 600  # bytes of Python objects around an entry's arrays (dict slot, tuples, headers)
_P = np.uint64(0x100000001B3)  # odd multiplier of the prefix hash (the FNV-1a 64-bit prime)
_PROBE_CUTS = (1, 2, 31, 95)  # where the probe splits a 96-token read


def prefix_hashes(ids: np.ndarray) -> np.ndarray:
    """uint64 [n + 1]: a hash of ids[:k] for every k (sum of (id + 1) * P^i, wrapping), in one pass."""
    n = len(ids)
    powers = np.empty(n, dtype=np.uint64)
    if n:
        powers[0] = 1
        powers[1:] = _P
        powers = np.cumprod(powers, dtype=np.uint64)
    out = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((ids.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64, out=out[1:])
    return out


@dataclass
class Entry:
    """The state after reading `ids` from a zero state, the logits of the next token, and (when a score
    read it) the surprisal of ids[1:], which is what a score of those ids sums."""

    model: str
    ids: np.ndarray  # int32 [n], read-only
    logits: np.ndarray  # float32 [vocab], read-only
    state: tuple  # (h, c) arrays [layers, 1, hidden], read-only
    surprisal: np.ndarray | None = None  # float64 [n - 1]

    @property
    def nbytes(self) -> int:
        arrays = [self.ids, self.logits, *self.state] + ([self.surprisal] if self.surprisal is not None else [])
        return sum(a.nbytes for a in arrays) + ENTRY_OVERHEAD


class PrefixCache:
    """States after reading token sequences, for every model of a server: one LRU bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()  # (model, length, hash) -> entry, oldest first
        self._lengths: dict[str, list[int]] = {}  # model -> sorted lengths of its entries (one per entry)
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.views: dict[str, ModelCache] = {}

    def view(self, name: str, backend) -> "ModelCache":
        """The part of the cache for one model (named as the server names it) over its backend."""
        self.views[name] = ModelCache(self, name, backend)
        return self.views[name]

    def nbytes(self, model: str | None = None) -> int:
        return sum(self._bytes.values()) if model is None else self._bytes.get(model, 0)

    def entries(self, model: str) -> int:
        return len(self._lengths.get(model, ()))

    def find(self, model: str, ids: np.ndarray, hashes: np.ndarray, *, prefix: bool, scored: bool) -> Entry | None:
        """The entry of ids itself, or (prefix) of its longest cached prefix; scored: only entries with surprisal."""
        with self._lock:
            lengths = self._lengths.get(model, [])
            candidates = [len(ids)] if not prefix else reversed(lengths[:bisect.bisect_right(lengths, len(ids))])
            for n in candidates:
                entry = self._entries.get((model, n, int(hashes[n])))
                if entry is not None and (entry.surprisal is not None or not scored) \
                        and np.array_equal(entry.ids, ids[:n]):
                    self._entries.move_to_end((model, n, int(hashes[n])))
                    return entry
        return None

    def put(self, entry: Entry, hash_: int) -> None:
        """Keep an entry (replacing one of the same ids), then drop the least recently used past the bound."""
        size = entry.nbytes
        if size > self.max_bytes:
            return
        for a in (entry.ids, entry.logits, *entry.state, *([entry.surprisal] if entry.surprisal is not None else [])):
            a.flags.writeable = False  # handed to every later reader: none may change it
        key = (entry.model, len(entry.ids), hash_)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = entry
            bisect.insort(self._lengths.setdefault(entry.model, []), len(entry.ids))
            self._bytes[entry.model] = self._bytes.get(entry.model, 0) + size
            while sum(self._bytes.values()) > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key)
        lengths = self._lengths[entry.model]
        del lengths[bisect.bisect_left(lengths, len(entry.ids))]
        self._bytes[entry.model] -= entry.nbytes


class ModelCache:
    """One model's part of a PrefixCache: `prefill` (the decode loop's and a session's) and `surprisal`
    (a score's) read through it; `hits`, `misses` and `reused_tokens` count what it saved."""

    def __init__(self, cache: PrefixCache, name: str, backend) -> None:
        self.cache, self.name, self.backend = cache, name, backend
        self.reads_in_parts_exactly = reads_in_parts_exactly(backend)
        self.hits = self.misses = self.reused_tokens = 0

    def prefill(self, ids) -> tuple[np.ndarray, tuple]:
        """(logits of the next token [vocab], state) after reading ids from a zero state: what
        backend.prefill gives, read from the cache where it can be (the decode loop's prefill)."""
        logits, state, _ = self.read(ids)
        return logits, state

    def read(self, ids) -> tuple[np.ndarray, tuple, int]:
        """`prefill`'s (logits, state), and how many of the ids came from the cache."""
        ids = np.asarray(ids, dtype=np.int64)
        hashes = prefix_hashes(ids)
        entry = self.cache.find(self.name, ids, hashes, prefix=self.reads_in_parts_exactly, scored=False)
        self._count(entry)
        if entry is not None and len(entry.ids) == len(ids):
            return entry.logits, entry.state, len(ids)
        if entry is None:
            logits, state = self.backend.prefill(ids[None, :])
        else:
            logits, h, c = self.backend.run(ids[None, len(entry.ids):], *entry.state)
            state = (h, c)
        last = logits[0, -1].copy()
        self.cache.put(Entry(self.name, ids.astype(np.int32), last, state), int(hashes[-1]))
        return last, state, 0 if entry is None else len(entry.ids)

    def surprisal(self, ids) -> np.ndarray:
        """float64 [n - 1]: -log p of ids[1:], each given the ids before it, read from a zero state as
        lstmgen.scoring reads running text (the same values, whatever was cached). Needs
        `reads_in_parts_exactly`: scoring reads in chunks."""
        if not self.reads_in_parts_exactly:
            raise ValueError("scores are cached only for models that read a sequence in parts exactly")
        ids = np.asarray(ids, dtype=np.int64)
        hashes = prefix_hashes(ids)
        entry = self.cache.find(self.name, ids, hashes, prefix=True, scored=True)
        self._count(entry)
        if entry is not None and len(entry.ids) == len(ids):
            return entry.surprisal
        at, state, parts = 0, (None, None), []
        if entry is not None:
            at, state = len(entry.ids), entry.state
            parts = [entry.surprisal, surprisal(entry.logits[None, None, :], ids[None, None, at])[0]]
        last = None
        for a in range(at, len(ids), SCORE_CHUNK):
            chunk = ids[a: a + SCORE_CHUNK]
            logits, h, c = self.backend.run(chunk[None, :], *state)
            state, last = (h, c), logits[0, -1]
            targets = ids[a + 1: a + 1 + len(chunk)]  # the last input of the text predicts nothing
            parts.append(surprisal(logits[:, :len(targets)], targets[None, :])[0])
        out = np.concatenate(parts)
        self.cache.put(Entry(self.name, ids.astype(np.int32), last.copy(), state, out), int(hashes[-1]))
        return out

    def _count(self, entry: Entry | None) -> None:
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
            self.reused_tokens += len(entry.ids)


def reads_in_parts_exactly(backend) -> bool:
    """Whether reading a sequence in two parts (the state carried) gives the very bits of reading it at once.

    True for fp32 LSTMs on ONNX Runtime's CPU kernels (each position's arithmetic does not depend on the
    sequence's length); false for int8 models, whose activations are quantised with one scale per run.
    Probed rather than assumed, so that a runtime or machine where it fails gets exact hits only."""
    V = backend.V
    ids = np.random.default_rng(0).integers(0, V, size=(1, 96), dtype=np.int64)
    whole, h, c = backend.run(ids)
    for cut in _PROBE_CUTS:
        first, h1, c1 = backend.run(ids[:, :cut])
        rest, h2, c2 = backend.run(ids[:, cut:], h1, c1)
        if not (np.array_equal(first[0], whole[0, :cut]) and np.array_equal(rest[0], whole[0, cut:])
                and np.array_equal(h2, h) and np.array_equal(c2, c)):
            return False
    return True
