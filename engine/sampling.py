"""Choosing the next token: temperature, top-k, top-p, min-p, repetition penalty, greedy.

`sample_rows` is the Numba kernel every generation path calls (the engine and the PyTorch reference
loop alike). Randomness is not drawn inside: each row brings one uniform number per step, a hash of
(seed, row, step) (`RowRandom`, lstmgen.rng), so row i's text depends only on the seed and i,
whatever the batch, device, backend or runtime (generate.onnx draws the same numbers). `sample_rows_reference` is a plain NumPy twin used by
the tests.

The kernel's order, step for step the reference's: penalise recently seen tokens (`_penalise`),
greedy takes the first maximum, scale by 1/temperature, keep the candidates (top-k:
`_top_k_from_groups` or `_top_k_by_threshold`, then `_keep_best_k`; without top-k, the nucleus
superset `_nucleus_candidates`), sort them by preference (`_sort_candidates`), cut at top-p of what
top-k kept and at min-p, and invert the CDF of what is left at the row's uniform number
(`_cut_and_draw`). With no filter on, the CDF is inverted in id order (`_invert_cdf_in_id_order`),
which needs no sort. The rest is speed: candidates are gathered without touching the whole
distribution where possible.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import field, make_dataclass

import numpy as np

# Numba caches compiled code beside this file; where that is read-only (a system install) it falls
# back to its user cache dir. An explicit NUMBA_CACHE_DIR from the user wins.
from numba import get_num_threads, njit, prange  # noqa: E402

from . import rng
from .errors import LstmgenError
from .options import SAMPLING_OPTIONS, check_options

PARALLEL_MIN_ROWS = 4  # rows per thread below which one thread samples the whole batch
PARALLEL_MIN_WORK = 20_000  # logits in a batch below which threads cost more than they save
GROUPS = 16  # top-k first takes the maximum of each of V // GROUPS strided groups of GROUPS tokens
STATUS_OK = 0
STATUS_NAN = 1
STATUS_ALL_NEG_INF = 2


def _sampling_params_class():
    """SamplingParams: a frozen dataclass with one field per sampling row of lstmgen.options, checked there."""
    names = [o.name for o in SAMPLING_OPTIONS]

    def __post_init__(self) -> None:
        checked = check_options({n: getattr(self, n) for n in names})  # normalised (e.g. tiny temperature -> 0)
        for n in names:
            object.__setattr__(self, n, checked[n])

    fields_ = [(o.name, {"int": int, "float": float}[o.kind], field(default=o.default)) for o in SAMPLING_OPTIONS]
    doc = "Validated sampling settings (one set for a whole batch), one field per sampling option:\n" + "\n".join(
        f"    {o.name}: {o.help}" for o in SAMPLING_OPTIONS)
    cls = make_dataclass("SamplingParams", fields_, frozen=True, namespace={"__post_init__": __post_init__, "__doc__": doc})
    cls.__module__ = __name__
    return cls


SamplingParams = _sampling_params_class()


class RowRandom:
    """Per-row uniform streams: row i's number at step t is lstmgen.rng's hash of (seed, i, t) and nothing else.

    The hashes are computed BLOCK steps at a time: one vectorised pass instead of a dozen tiny NumPy
    calls per step, which at batch 1 cost more than the sampler itself.
    """

    BLOCK = 256  # steps hashed at a time

    def __init__(self, seed: int, rows: range | list[int]) -> None:
        self.rows = list(rows)
        self._keys = rng.row_keys(seed, self.rows)
        self._block = np.empty((len(self.rows), 0))  # [rows, steps] uniforms of the current block
        self._step = 0

    def next(self) -> np.ndarray:
        """One uniform per row (in the order of `rows`), for the next step."""
        at = self._step % self.BLOCK
        if at == 0:
            self._block = rng.uniform_block(self._keys, self._step, self.BLOCK)
        self._step += 1
        return self._block[:, at]

    @property
    def step(self) -> int:
        """The step whose numbers `next` returns next (how many steps the rows have drawn)."""
        return self._step

    def seek(self, step: int) -> None:
        """Continue from `step` (a restored session): the next call returns that step's numbers."""
        self._step = step
        if step % self.BLOCK:
            self._block = rng.uniform_block(self._keys, step - step % self.BLOCK, self.BLOCK)


class RowSampler:
    """The sampling state of one request's rows: random streams, logit bias, banned ids, repetition history,
    counts of written tokens (frequency and presence penalties), and each row's state in the request's
    pattern automaton (lstmgen.patterns), if it has one.

    The decode loop (lstmgen.decoding) samples every row through this, so a request gets the same
    tokens whether it runs alone or shares a batch with others.
    """

    def __init__(self, params: SamplingParams, seed: int, rows: range | list[int], context: Sequence[int],
                 banned: Sequence[int] = (), bias: dict[int, float] | None = None, pattern=None,
                 pattern_start: int = 0) -> None:
        self.params = params
        self.pattern = pattern  # a TokenAutomaton: tokens it does not allow are masked before sampling
        self.pattern_states = np.full(len(rows), pattern_start, dtype=np.int64) if pattern is not None else None
        self.rng = RowRandom(seed, rows)
        self.banned = list(banned)
        self.bias_ids = np.array(list(bias or {}), dtype=np.int64)
        self.bias_values = np.array(list((bias or {}).values()), dtype=np.float32)
        self.history = None  # [rows, window] most recent token ids, -1 for none
        if params.repetition_penalty != 1.0:
            window = params.repetition_window
            self.history = np.full((len(self.rng.rows), window), -1, dtype=np.int64)
            tail = list(context)[-window:]
            if tail:
                self.history[:, -len(tail):] = tail
        self.counts = None  # [rows, vocab] times each token was written, for the frequency/presence penalties
        self.penalised_counts = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0

    def sample(self, logits: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Next token of each active row; logits [len(active), vocab] is modified (bias added, banned ids masked).

        Every row's random stream advances, active or not, so a row's draws depend on the step alone.
        """
        u = self.rng.next()[active]
        if len(self.bias_ids):
            logits[:, self.bias_ids] += self.bias_values
        if self.penalised_counts:
            self._penalise_written(logits, active)
        if self.banned:
            logits[:, self.banned] = -np.inf
        if self.pattern is not None:  # masked, so temperature, top-k and top-p act on what the pattern allows
            _mask_blocked(logits, self.pattern.blocked, self.pattern_states, active)
        history = None if self.history is None else self.history[active]
        tokens = sample_rows(logits, u, self.params, history)
        if self.pattern is not None:
            _advance_states(self.pattern.next, self.pattern_states, active, tokens)
        if self.history is not None:
            self.history[active, :-1] = self.history[active, 1:]
            self.history[active, -1] = tokens
        if self.counts is not None:
            self.counts[active, tokens] += 1
        return tokens

    def allowed(self, active: np.ndarray) -> np.ndarray | None:
        """bool [len(active), vocab]: what the pattern allows each active row to write next (None: no pattern)."""
        return None if self.pattern is None else self.pattern.allowed[self.pattern_states[active]]

    def pattern_ended(self, active: np.ndarray) -> np.ndarray | None:
        """Which active rows are in a state that allows nothing more (running text ends there); None: no pattern."""
        if self.pattern is None or not self.pattern.ends_early:  # records end at their end marker, never here
            return None
        return self.pattern.terminal[self.pattern_states[active]]

    def pattern_accepted(self) -> np.ndarray | None:
        """Per row: whether the pattern accepts what the row has written so far (None: no pattern)."""
        return None if self.pattern is None else self.pattern.accepting[self.pattern_states]

    def probabilities(self, logits: np.ndarray, active: np.ndarray) -> np.ndarray:
        """[len(active), vocab] float64: the chance that `sample` draws each token now (nothing advances).

        The same adjustments as `sample` (bias, written-token penalties, bans), on a copy, then the
        kernel's filters (`distribution_rows`). A step-by-step Session reports its `top` from this."""
        x = np.array(logits, dtype=np.float32)
        if len(self.bias_ids):
            x[:, self.bias_ids] += self.bias_values
        if self.penalised_counts and self.counts is not None:
            self._penalise_written(x, active)
        if self.banned:
            x[:, self.banned] = -np.inf
        if self.pattern is not None:
            _mask_blocked(x, self.pattern.blocked, self.pattern_states, active)
        history = None if self.history is None else self.history[active]
        return distribution_rows(x, self.params, history)

    def read(self, tokens: Sequence[int]) -> None:
        """Tokens every row read without drawing them (a session's appended text): they enter the
        repetition window, as the prompt does; the written counts (frequency, presence) stay as they are."""
        if self.history is None or not len(tokens):
            return
        tail = np.asarray(tokens, dtype=np.int64)[-self.history.shape[1]:]
        self.history = np.concatenate([self.history, np.broadcast_to(tail, (len(self.history), len(tail)))],
                                      axis=1)[:, -self.history.shape[1]:].copy()

    def _penalise_written(self, logits: np.ndarray, active: np.ndarray) -> None:
        """OpenAI's formula: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty,
        count[j] being how often row's sample has written token j so far (the prompt not included)."""
        if self.counts is None:
            self.counts = np.zeros((len(self.rng.rows), logits.shape[1]), dtype=np.int32)
        written = self.counts[active]
        p = self.params
        logits -= (written * p.frequency_penalty + (written > 0) * p.presence_penalty).astype(np.float32)


@njit(cache=True, nogil=True)
def _mask_blocked(logits, blocked, states, active):
    """logits[k, j] = -inf where the pattern state of row active[k] does not allow token j (in place).

    One compiled loop instead of NumPy's gather, negate and masked copy: at batch 1 each NumPy call
    costs about as much as the whole row's work."""
    for k in range(active.shape[0]):
        row = blocked[states[active[k]]]
        for j in range(logits.shape[1]):
            if row[j]:
                logits[k, j] = -np.inf


@njit(cache=True, nogil=True)
def _advance_states(next_table, states, active, tokens):
    """Each active row's pattern state after its token (in place)."""
    for k in range(active.shape[0]):
        r = active[k]
        states[r] = next_table[states[r], tokens[k]]


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


# ------------------------------------------------------------------------------------------------
# The kernel
# ------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _key_less(p, i, q, j):
    # Order of preference: higher probability first, lower id first among equals.
    return p < q or (p == q and i > j)


@njit(cache=True, nogil=True, inline="always")
def _sift_down_min(heap_p, heap_i, start, n):
    # Min-heap on the key (p, -id): the root is the least preferred candidate kept so far.
    pos = start
    while True:
        left = 2 * pos + 1
        if left >= n:
            break
        child = left
        right = left + 1
        if right < n and _key_less(heap_p[right], heap_i[right], heap_p[left], heap_i[left]):
            child = right
        if _key_less(heap_p[child], heap_i[child], heap_p[pos], heap_i[pos]):
            heap_p[pos], heap_p[child] = heap_p[child], heap_p[pos]
            heap_i[pos], heap_i[child] = heap_i[child], heap_i[pos]
            pos = child
        else:
            break


@njit(cache=True, nogil=True, inline="always")
def _key(i):
    # float32 bits -> int32 with the same order (for non-NaN values); its own inverse.
    return i ^ ((i >> 31) & np.int32(0x7FFFFFFF))


@njit(cache=True, nogil=True)
def _row_max(x):
    # Integer max over order-preserving keys: LLVM vectorises it, a float max loop it does not.
    bits = x.view(np.int32)
    m = np.int32(-2147483648)
    for j in range(bits.shape[0]):
        m = max(m, _key(bits[j]))
    out = np.empty(1, dtype=np.int32)
    out[0] = _key(m)
    return out.view(np.float32)[0]


@njit(cache=True, nogil=True)
def _group_max(x, out):
    # Maxima of the strided groups {s, s+S, s+2S, ...} on integer keys (see _row_max): the inner
    # loop runs over contiguous memory, so it vectorises. NaN is detected separately.
    S = out.shape[0]
    bits = x.view(np.int32)
    keys = np.empty(S, dtype=np.int32)
    for s in range(S):
        keys[s] = _key(bits[s])
    for g in range(1, GROUPS):
        base = g * S
        for s in range(S):
            keys[s] = max(keys[s], _key(bits[base + s]))
    obits = out.view(np.int32)
    for s in range(S):
        obits[s] = _key(keys[s])
    return out


@njit(cache=True, nogil=True, fastmath=True)
def _count_at_least(a, t):
    n = 0
    for j in range(a.shape[0]):
        n += a[j] >= t
    return n


@njit(cache=True, nogil=True)
def _has_nan(bits):
    # float32 NaN <=> exponent all ones and mantissa non-zero; an integer max-reduction vectorises.
    worst = 0
    for j in range(bits.shape[0]):
        worst = max(worst, bits[j] & 0x7FFFFFFF)
    return worst > 0x7F800000


@njit(cache=True, nogil=True)
def _keep_best_k(x, cand_p, cand_i, n, k):
    """Keep the k most preferred of the n candidate ids in cand_i[:k] (unordered); returns k."""
    for a in range(n):
        cand_p[a] = x[cand_i[a]]
    # Min-heap on the key (x, -id) over the first k; the root is the least preferred kept.
    for s in range(k // 2 - 1, -1, -1):
        _sift_down_min(cand_p, cand_i, s, k)
    for a in range(k, n):
        if _key_less(cand_p[0], cand_i[0], cand_p[a], cand_i[a]):
            cand_p[0] = cand_p[a]
            cand_i[0] = cand_i[a]
            _sift_down_min(cand_p, cand_i, 0, k)
    return k


@njit(cache=True, nogil=True)
def _exp_candidates(x, cand_i, n, m, inv_t, probs):
    """probs[id] = exp((x[id] - max) / T) for the candidates; returns their sum."""
    total = 0.0
    for a in range(n):
        e = math.exp((x[cand_i[a]] - m) * inv_t)
        probs[cand_i[a]] = e
        total += e
    return total


@njit(cache=True, nogil=True)
def _penalise(row, penalty, history, scratch, stamp, stamp_value):
    """A copy of row in which each token seen in history is penalised once (reference: `seen`)."""
    scratch[:] = row
    for t in range(history.shape[0]):
        tok = history[t]
        if tok >= 0 and stamp[tok] != stamp_value:  # stamp[tok] == stamp_value: tok already penalised for this row
            stamp[tok] = stamp_value
            if scratch[tok] > 0:
                scratch[tok] = scratch[tok] / penalty
            else:
                scratch[tok] = scratch[tok] * penalty
    return scratch


@njit(cache=True, nogil=True)
def _max_logit(x, group_max):
    """The row's maximum; from the group maxima (plus the tail beyond the last full group) when there are any."""
    S = group_max.shape[0]
    if S == 0:
        return _row_max(x)
    if x.shape[0] > S * GROUPS:
        return max(_row_max(group_max), _row_max(x[S * GROUPS:]))
    return _row_max(group_max)


@njit(cache=True, nogil=True)
def _first_index_of(x, value):
    for j in range(x.shape[0]):
        if x[j] == value:
            return j
    return -1


@njit(cache=True, nogil=True)
def _top_k_from_groups(x, group_max, m, k, cand_i):
    """Ids of a superset of the top k into cand_i; returns their count (>= k).

    Any threshold that at least k group maxima reach is one that at least k tokens reach, and only
    those groups can hold tokens above it. Bisect for the highest such threshold by counting
    (vectorised), then scan just those groups.
    """
    S, V = group_max.shape[0], x.shape[0]
    lo = group_max[0]
    for a in range(1, S):
        if group_max[a] < lo:
            lo = group_max[a]
    hi = m
    if _count_at_least(group_max, hi) < k:
        for _ in range(30):
            mid = np.float32(0.5 * (lo + hi))
            if mid <= lo or mid >= hi:
                break
            if _count_at_least(group_max, mid) >= k:
                lo = mid
            else:
                hi = mid
        thr = lo
    else:
        thr = hi
    n = 0
    for a in range(S):
        if group_max[a] >= thr:
            for j in range(a, S * GROUPS, S):
                if x[j] >= thr:
                    cand_i[n] = j
                    n += 1
    for j in range(S * GROUPS, V):
        if x[j] >= thr:
            cand_i[n] = j
            n += 1
    return n


@njit(cache=True, nogil=True)
def _top_k_by_threshold(x, m, k, temperature, cand_i):
    """Ids of a superset of the top k into cand_i (all ids if fewer pass); returns their count.

    Top-k never needs the whole distribution: keep the tokens whose logit is within ratio x
    temperature of the maximum (probability at least exp(-ratio) times the top one's), widening the
    ratio 4x per pass until at least k tokens pass.
    """
    ratio = 8.0
    while True:
        thr = m - ratio * temperature
        n = 0
        for j in range(x.shape[0]):
            if x[j] >= thr:
                cand_i[n] = j
                n += 1
        if n >= k or ratio > 1e4:
            return n
        ratio *= 4.0


@njit(cache=True, nogil=True)
def _exp_all(x, m, inv_t, probs):
    """probs[id] = exp((x[id] - max) / T) for every id; returns their sum."""
    total = 0.0
    for j in range(x.shape[0]):
        e = math.exp((x[j] - m) * inv_t)
        probs[j] = e
        total += e
    return total


@njit(cache=True, nogil=True)
def _invert_cdf_in_id_order(probs, target):
    """The first id whose cumulative (unnormalised) probability passes target: no sort needed."""
    acc = 0.0
    last = 0
    for j in range(probs.shape[0]):
        if probs[j] > 0.0:
            acc += probs[j]
            last = j
            if acc > target:
                return j
    return last


@njit(cache=True, nogil=True)
def _nucleus_candidates(probs, total, top_p, min_p, cand_i):
    """Ids with probability >= t into cand_i (returns their count), for a threshold t whose mass reaches top_p.

    Every token of the nucleus has p >= t for such a t; dividing t by 64 per pass finds one in a pass
    or two on real models. min_p is a floor (relative to the maximum, which is 1.0 after the shift).
    """
    floor = min_p
    t = 1.0 / 64.0 if top_p < 1.0 else floor
    if t < floor:
        t = floor
    while True:
        mass = 0.0
        for j in range(probs.shape[0]):
            if probs[j] >= t:
                mass += probs[j]
        if mass >= top_p * total or t <= floor or t == 0.0:
            break
        t = t / 64.0
        if t < 1e-300:
            t = 0.0
        if t < floor:
            t = floor
    n = 0
    for j in range(probs.shape[0]):
        if probs[j] >= t:
            cand_i[n] = j
            n += 1
    return n


@njit(cache=True, nogil=True)
def _sort_candidates(cand_i, n, probs):
    """(ids, ps, order): the a-th preferred candidate is ids[order[a]] with probability ps[order[a]].

    Preference: probability descending, lower id first among equals (the reference's stable argsort).
    """
    if n <= 64:
        # Few candidates (top-k): insertion sort of the ids in place; order is the identity.
        ids = cand_i[:n]
        ps = np.empty(n, dtype=np.float64)
        for a in range(n):
            ps[a] = probs[ids[a]]
        for a in range(1, n):
            pa, ia = ps[a], ids[a]
            b = a - 1
            while b >= 0 and (ps[b] < pa or (ps[b] == pa and ids[b] > ia)):
                ps[b + 1] = ps[b]
                ids[b + 1] = ids[b]
                b -= 1
            ps[b + 1] = pa
            ids[b + 1] = ia
        return ids, ps, np.arange(n)
    ids = np.sort(cand_i[:n])
    ps = np.empty(n, dtype=np.float64)
    for a in range(n):
        ps[a] = probs[ids[a]]
    return ids, ps, np.argsort(-ps, kind="mergesort")


@njit(cache=True, nogil=True)
def _sum(a):
    total = 0.0
    for j in range(a.shape[0]):
        total += a[j]
    return total


@njit(cache=True, nogil=True)
def _cut_and_draw(ids, ps, order, limit, min_p, u):
    """Keep the preferred candidates until their mass reaches limit (the token crossing it included)
    and while they are at least min_p times the top one; invert their CDF at u."""
    n = ids.shape[0]
    pmax = ps[order[0]]
    acc = 0.0
    kept = 0
    for a in range(n):
        pa = ps[order[a]]
        if a > 0 and pa < min_p * pmax:
            break
        acc += pa
        kept += 1
        if acc >= limit:
            break
    target = u * acc
    run = 0.0
    for a in range(kept):
        run += ps[order[a]]
        if run > target:
            return ids[order[a]]
    return ids[order[kept - 1]]


@njit(cache=True, nogil=True)
def _sample_one(row, u, temperature, top_k, top_p, min_p, penalty, history, scratch, stamp, stamp_value,
                probs, cand_p, cand_i, group_buf):
    """Returns (token, status) for one row of logits; the reference's steps, in its order.

    The work arrays (scratch, stamp, probs, cand_p, cand_i, group_buf) are allocated once per range
    of rows by the caller, not per row.
    """
    V = row.shape[0]
    if _has_nan(row.view(np.int32)):
        return -1, STATUS_NAN
    penalised = penalty != 1.0 and history.shape[0] > 0
    k = top_k if 0 < top_k < V else V
    # Group maxima speed up top-k (and the max) when k is small; a penalty changes the logits, so not then.
    S = V // GROUPS if (k < V and V // GROUPS >= k and not penalised) else 0
    group_max = _group_max(row, group_buf[:S])
    x = _penalise(row, penalty, history, scratch, stamp, stamp_value) if penalised else row
    m = _max_logit(x, group_max)
    if m == -np.inf:
        return -1, STATUS_ALL_NEG_INF
    if temperature == 0.0:
        return _first_index_of(x, m), STATUS_OK
    inv_t = 1.0 / temperature
    if k < V:
        if S > 0:
            n = _top_k_from_groups(x, group_max, m, k, cand_i)
        else:
            n = _top_k_by_threshold(x, m, k, temperature, cand_i)
        n = _keep_best_k(x, cand_p, cand_i, n, min(k, n))
        total = _exp_candidates(x, cand_i, n, m, inv_t, probs)
    else:
        total = _exp_all(x, m, inv_t, probs)
        if top_p >= 1.0 and min_p <= 0.0:
            return _invert_cdf_in_id_order(probs, u * total), STATUS_OK
        n = _nucleus_candidates(probs, total, top_p, min_p, cand_i)
    ids, ps, order = _sort_candidates(cand_i, n, probs)
    # As in the usual chain of filters, top-p is taken of the mass that top-k left.
    mass = total if k == V else _sum(ps)
    return _cut_and_draw(ids, ps, order, top_p * mass, min_p, u), STATUS_OK


@njit(cache=True, nogil=True)
def _sample_rows_range(logits, uniforms, temperature, top_k, top_p, min_p, penalty, history, out, status, lo, hi):
    V = logits.shape[1]
    group_buf = np.empty(V // GROUPS + 1, dtype=np.float32)
    scratch = np.empty(V, dtype=np.float32)
    stamp = np.zeros(V, dtype=np.int64)
    probs = np.empty(V, dtype=np.float64)
    cand_p = np.empty(V, dtype=np.float32)
    cand_i = np.empty(V, dtype=np.int64)
    for b in range(lo, hi):
        tok, st = _sample_one(logits[b], uniforms[b], temperature, top_k, top_p, min_p, penalty, history[b],
                              scratch, stamp, b + 1, probs, cand_p, cand_i, group_buf)
        out[b] = tok
        status[b] = st


@njit(cache=True, nogil=True)
def _sample_rows_kernel(logits, uniforms, temperature, top_k, top_p, min_p, penalty, history, out, status):
    _sample_rows_range(logits, uniforms, temperature, top_k, top_p, min_p, penalty, history, out, status,
                       0, logits.shape[0])


@njit(cache=True, nogil=True, parallel=True)
def _sample_rows_parallel(logits, uniforms, temperature, top_k, top_p, min_p, penalty, history, out, status,
                          chunks):
    # The cores are idle between model steps: rows are split into one chunk per thread. Each row's
    # result depends only on its own logits and uniform, so the split changes nothing in the output.
    B = logits.shape[0]
    for c in prange(chunks):
        _sample_rows_range(logits, uniforms, temperature, top_k, top_p, min_p, penalty, history, out, status,
                           c * B // chunks, (c + 1) * B // chunks)




def sample_rows(logits: np.ndarray, uniforms: np.ndarray, params: SamplingParams,
                history: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Next token id for each row of logits [batch, vocab], one uniform in [0, 1) per row.

    history: [batch, window] recent token ids (-1 for none), used only by the repetition penalty.
    threads > 1 samples rows on that many Numba threads (same result). The engine keeps 1: ONNX
    Runtime's worker threads spin between steps, and two thread pools fighting over the cores cost
    more than the sampling itself (measured: word-10k, batch 64, 8.5 ms/step serial, 16.9 parallel).
    Raises LstmgenError when a row's logits hold NaN or are all -inf.
    """
    if logits.dtype != np.float32 or not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits, dtype=np.float32)
    B, V = logits.shape
    if uniforms.dtype != np.float64 or not uniforms.flags.c_contiguous:
        uniforms = np.ascontiguousarray(uniforms, dtype=np.float64)
    if history is None or params.repetition_penalty == 1.0:
        history = np.empty((B, 0), dtype=np.int64)
    elif history.dtype != np.int64 or not history.flags.c_contiguous:
        history = np.ascontiguousarray(history, dtype=np.int64)
    out = np.empty(B, dtype=np.int64)
    status = np.zeros(B, dtype=np.int8)
    args = (logits, uniforms, float(params.temperature), int(params.top_k), float(params.top_p),
            float(params.min_p), float(params.repetition_penalty), history, out, status)
    threads = min(threads, get_num_threads(), B // PARALLEL_MIN_ROWS) if threads > 1 else 1
    if threads > 1 and B * V >= PARALLEL_MIN_WORK:
        _sample_rows_parallel(*args, threads)
    else:
        _sample_rows_kernel(*args)
    if status.max():
        _raise_status(status)
    return out


def _raise_status(status: np.ndarray) -> None:
    row = int(np.flatnonzero(status)[0])
    what = "NaN" if status[row] == STATUS_NAN else "only -inf"
    raise LstmgenError(f"the model produced {what} logits (row {row}); the model or its inputs are broken")


def distribution_rows(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None) -> np.ndarray:
    """[batch, vocab] float64: the probability with which `sample_rows` draws each token of each row.

    The kernel's steps and arithmetic (the penalty and the shift by the maximum in float32, the
    exponent in float64, ties to the lower id), so that a token's probability is the share of
    uniform numbers for which the kernel draws it. Raises LstmgenError as the kernel does.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    out = np.zeros(logits.shape, dtype=np.float64)
    for b in range(logits.shape[0]):
        seen = None if history is None or params.repetition_penalty == 1.0 else history[b][history[b] >= 0]
        out[b] = _row_distribution(logits[b], params, seen, b)
    return out


def _row_distribution(row: np.ndarray, p: SamplingParams, seen: np.ndarray | None, b: int) -> np.ndarray:
    V = row.shape[0]
    status = STATUS_NAN if np.isnan(row).any() else STATUS_OK
    x = row
    if seen is not None and len(seen):
        x = row.copy()
        seen = np.unique(seen)
        v = x[seen].astype(np.float64)  # the kernel divides in float64 and stores float32
        x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty).astype(np.float32)
    m = x.max() if status == STATUS_OK else np.float32(np.nan)
    if status == STATUS_OK and m == -np.inf:
        status = STATUS_ALL_NEG_INF
    if status != STATUS_OK:
        _raise_status(np.array([0] * b + [status], dtype=np.int8))
    out = np.zeros(V)
    if p.temperature == 0.0:
        out[int(np.argmax(x == m))] = 1.0
        return out
    e = np.exp((x - m).astype(np.float64) * (1.0 / p.temperature))  # x - m in float32, as the kernel
    k = p.top_k if 0 < p.top_k < V else V
    if k == V and p.top_p >= 1.0 and p.min_p <= 0.0:
        return e / e.sum()
    ids = np.arange(V)
    if k < V:
        cand = np.lexsort((ids, -x))[:k]  # the k largest logits, lower id first among equals
        pref = cand[np.lexsort((cand, -e[cand]))]
        limit = p.top_p * e[cand].sum()
    else:
        pref = np.lexsort((ids, -e))
        limit = p.top_p * e.sum()
    ps = e[pref]
    acc = np.cumsum(ps)
    by_mass = int(np.searchsorted(acc >= limit, True)) + 1  # the token that crosses top_p is kept
    by_floor = max(1, int(np.sum(ps >= p.min_p * ps[0]))) if p.min_p > 0 else V
    kept = min(by_mass, by_floor, len(ps))
    out[pref[:kept]] = ps[:kept] / acc[kept - 1]
    return out


# ------------------------------------------------------------------------------------------------
# Plain NumPy reference (tests compare the kernel against it)
# ------------------------------------------------------------------------------------------------
def sample_rows_reference(logits: np.ndarray, uniforms: np.ndarray, params: SamplingParams,
                          history: np.ndarray | None = None) -> np.ndarray:
    out = []
    for b in range(logits.shape[0]):
        x = logits[b].astype(np.float64).copy()
        if np.isnan(x).any() or np.all(x == -np.inf):
            raise LstmgenError("bad logits")
        if history is not None and params.repetition_penalty != 1.0:
            seen = np.unique(history[b][history[b] >= 0])
            x[seen] = np.where(x[seen] > 0, x[seen] / params.repetition_penalty, x[seen] * params.repetition_penalty)
        if params.temperature == 0:
            out.append(int(np.argmax(x)))
            continue
        p = np.exp((x - x.max()) / params.temperature)
        if params.top_k in (0,) or params.top_k >= len(p):
            if params.top_p >= 1.0 and params.min_p <= 0:
                cum = np.cumsum(p)  # unfiltered: the CDF is inverted in id order, as the kernel does
                out.append(int(np.searchsorted(cum, uniforms[b] * cum[-1], side="right")))
                continue
        order = np.argsort(-p, kind="stable")
        ps = p[order]
        keep = len(ps)
        if 0 < params.top_k < keep:
            keep = params.top_k
        if params.top_p < 1.0:
            cum = np.cumsum(ps[:keep])
            keep = min(keep, int(np.searchsorted(cum, params.top_p * cum[-1])) + 1)
        if params.min_p > 0:
            keep = min(keep, max(1, int(np.sum(ps[:keep] >= params.min_p * ps[0]))))
        ps, order = ps[:keep], order[:keep]
        cum = np.cumsum(ps)
        j = int(np.searchsorted(cum, uniforms[b] * cum[-1], side="right"))
        out.append(int(order[min(j, keep - 1)]))
    return np.array(out, dtype=np.int64)
