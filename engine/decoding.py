"""The decode loop: every way of generating (generate, stream, the server, the bench, the PyTorch
reference) runs its rows through one `DecodeLoop` over a small `Backend` interface.

A `Job` is one checked request for one prompt: its rows are sampled in `RowBlock`s (a block is a
set of rows that joins the batch together, with one `RowSampler`). Blocks join the batch between
steps and their rows leave when they end (end of record, max tokens, a stop string, the job was
cancelled), so rows of many jobs can share one batch. Row r draws its random numbers from
(seed, r) alone, so a row writes the same text alone, in a batch, or beside other requests.

The loop owns the end conditions, each row's text (detokenizer, stop strings, the hold-back of text
that may still become a stop string while streaming) and each row's log-probabilities. A request's
pattern (lstmgen.patterns) lives in its RowSampler (each row's automaton state, the mask); the loop
records what it means for a row: `pattern_end` (running text the pattern lets go no further),
`pattern_accepted`, and each token's `constrained_logprob`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from .errors import LstmgenError
from .manifest import record_hash
from .patterns import TokenAutomaton
from .sampling import RowSampler, SamplingParams
from .scoring import log_softmax
from .tokenizer import Detokenizer, Tokenizer

OnPiece = Callable[[int, str, "list[TokenLogprob] | None"], None]  # (row, text, its tokens' logprobs)
NOVEL_ROUNDS = 50  # a novel job gives up after this many rounds of rows
BLOCK_ROWS = 1024  # rows of one job in the batch at a time (memory stays flat for --num 100000)


class Backend(Protocol):
    """One step of a recurrent LM over NumPy arrays; `state` is whatever the backend keeps per row."""

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, object]: ...  # ids [1, T] -> logits [1, T, V], state

    def expand(self, state: object, n: int) -> object: ...  # batch 1 -> n identical rows

    def join(self, state: object | None, other: object) -> object: ...  # rows of state, then rows of other

    def select(self, state: object, keep: np.ndarray) -> object: ...  # keep rows (int index array)

    def step(self, tokens: np.ndarray, state: object) -> tuple[np.ndarray, object]: ...  # [n] -> [n, V]


@dataclass(frozen=True)
class Request:
    """A checked generation request for one prompt (see Generator.jobs)."""

    num: int
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    stop: list[str]
    banned: list[int]
    bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None = off; N = each token's log-probability and the N best alternatives
    echo: bool = True  # the text starts with the prompt
    first_row: int = 0  # the job's rows are first_row, first_row + 1, ... (their random streams)
    pattern: TokenAutomaton | None = None  # regex / length bounds, compiled (lstmgen.patterns)
    pattern_start: int = 0  # the automaton's state after the prompt


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a sample under the model's own distribution (temperature 1, nothing filtered).

    With a pattern, `constrained_logprob` is the token's log-probability under the distribution the
    pattern leaves: the model's, restricted to the tokens the pattern allowed at that position and
    renormalised (still temperature 1, before bias, penalties, top-k and top-p). `logprob` stays the
    model's own, so the sum of a sample's `logprob`s is minus its `score`."""

    token: str  # the vocabulary entry
    id: int
    logprob: float | None  # None: nothing predicted this token (a prompt's own start token, see Generator.jobs)
    top: list[tuple[str, float]]  # the N most likely tokens at this position, most likely first
    constrained_logprob: float | None = None

    def to_dict(self) -> dict:
        out = {"token": self.token, "id": self.id, "logprob": self.logprob,
               "top": [{"token": t, "logprob": lp} for t, lp in self.top]}
        if self.constrained_logprob is not None:
            out["constrained_logprob"] = self.constrained_logprob
        return out


class FinishReason:
    """Why a sample ended: the decode loop records it; every interface maps it, none guesses it."""

    END_OF_RECORD = "end_of_record"  # a records model wrote its end marker
    STOP_STRING = "stop_string"  # one of the request's stop strings appeared (the text ends before it)
    LENGTH = "length"  # max_tokens tokens were written: the sample was cut there
    CANCELLED = "cancelled"  # the caller went away, or the request failed
    PATTERN_END = "pattern_end"  # running text: the pattern matched and allows nothing more
    ALL = (END_OF_RECORD, STOP_STRING, LENGTH, CANCELLED, PATTERN_END)


class Sample(str):
    """A sample: its text (the str itself, so a Sample is used as text) and the facts of how it was made.

    prompt_ids: the prompt as the model read it (case folded, words as the tokenizer cut them), the
    start tokens before it left out; token_ids: every token the model wrote, a record's end marker
    included, a token that completed a stop string included though its text was cut; finish_reason:
    a FinishReason. logprobs (when asked for) lists the prompt's tokens when echoed, then one entry
    per written token, so their sum is minus the `score` nats of the text the model read.
    pattern_accepted (with a pattern, else None): whether the pattern accepted what was written
    where the sample ended; False only for a sample cut at max_tokens (or by a stop string) before
    it could match.
    """

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    finish_reason: str
    logprobs: list[TokenLogprob] | None
    pattern_accepted: bool | None

    def __new__(cls, text: str, prompt_ids=(), token_ids=(), finish_reason: str = FinishReason.LENGTH,
                logprobs: list[TokenLogprob] | None = None, pattern_accepted: bool | None = None) -> "Sample":
        self = super().__new__(cls, text)
        self.prompt_ids, self.token_ids = tuple(prompt_ids), tuple(token_ids)
        self.finish_reason, self.logprobs = finish_reason, logprobs
        self.pattern_accepted = pattern_accepted
        return self

    @property
    def text(self) -> str:
        return str.__str__(self)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        out: dict = {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                     "completion_tokens": self.completion_tokens}
        if self.pattern_accepted is not None:
            out["pattern_accepted"] = self.pattern_accepted
        if self.logprobs is not None:
            out["logprobs"] = [t.to_dict() for t in self.logprobs]
            out["total_logprob"] = sum(t.logprob for t in self.logprobs if t.logprob is not None)
        return out


class RowText:
    """One sample's text built token by token, ended at the first stop string.

    Text is kept as a list of pieces (appending is O(1)); only the last few characters, where a stop
    string could still begin, are searched at each token. With `streaming`, `take` hands out the
    text not yet sent, holding back what could still turn out to be the start of a stop string.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], stop: Sequence[str], *,
                 streaming: bool = False, echo: bool = True) -> None:
        self.detok = Detokenizer(tokenizer)
        prompt = "".join(self.detok.piece(i) for i in prompt_ids)
        self.prompt_len = len(prompt)
        self.parts = [prompt]
        self.length = len(prompt)
        self.stop = list(stop)
        self.hold = max((len(s) for s in stop), default=1) - 1  # characters a stop string may still need
        self.tail = ""  # the last `hold` characters after the prompt
        self.cut: int | None = None  # where the text ends: at the first stop string
        self.sent = 0 if echo else self.prompt_len
        self.unsent: str | None = (prompt if echo else "") if streaming else None  # text not handed out yet

    def add(self, token_id: int) -> bool:
        """Append a token; True when a stop string has appeared (the text then ends before it)."""
        piece = self.detok.piece(token_id)
        if not piece:
            return False
        self.parts.append(piece)
        if self.unsent is not None:
            self.unsent += piece
        start = self.length - len(self.tail)
        self.length += len(piece)
        if self.stop:
            window = self.tail + piece
            hits = [i for i in (window.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.cut = start + min(hits)
                return True
            self.tail = window[len(window) - self.hold:] if self.hold else ""
        return False

    def end(self) -> int:
        return self.length if self.cut is None else self.cut

    def take(self, final: bool) -> str:
        """Text not handed out yet: all of it when final, else what no stop string can start in."""
        upto = self.end() if final or not self.stop else max(self.prompt_len, self.length - self.hold)
        n = upto - self.sent
        if n <= 0:
            return ""
        piece, self.unsent = self.unsent[:n], self.unsent[n:]
        self.sent = upto
        return piece

    def text(self, echo: bool = True) -> str:
        full = "".join(self.parts)
        return full[0 if echo else self.prompt_len: self.end()]


class Job:
    """One request for one prompt: its rows, how they end, and the samples they made.

    `done` is set when every row has ended; then `results()` (texts) or `samples()` (texts with
    log-probabilities) hold the outcome, or `error` says why there is none. `on_piece(row, text,
    logprobs)` streams each row's text as it is written, with the log-probability entries of the tokens
    that text came from (None unless the request asked for logprobs); setting `cancelled` ends the
    job's rows at the next step. A request for `max_tokens=0` (echo: its prompt scored) runs no step.
    With `known` (sorted record hashes) the job keeps only records that are neither in that list nor
    repeated (nor, with a pattern, cut before it matched), trying more rows in rounds until it has
    `num` of them.
    """

    def __init__(self, request: Request, context: Sequence[int], tokenizer: Tokenizer, *,
                 known: np.ndarray | None = None, on_piece: OnPiece | None = None,
                 block_rows: int = BLOCK_ROWS, on_sample: Callable[[int], None] | None = None) -> None:
        self.request = request
        self.context = list(context)
        self.tokenizer = tokenizer
        self.known = known
        self.on_piece = on_piece
        self.on_sample = on_sample  # called with the number of samples each time some are done (progress bars)
        self.block_rows = block_rows
        self.done = threading.Event()
        self.error: Exception | None = None
        self.cancelled = False
        self._samples: list[Sample] = []  # novel jobs: accepted samples, in order
        self._finished: list[RowBlock] = []  # other jobs: finished blocks, decoded when asked for
        self._accepted = 0
        self._seen: set[str] = set()
        self._next_row = request.first_row
        self._round_end = request.first_row
        self._rounds = 0
        self.prefilled: tuple[np.ndarray, object] | None = None  # (last logits [V], state) of the context
        self.prompt_logprobs: list[TokenLogprob] = []

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def num(self) -> int:
        return self.request.num

    def results(self) -> list[str]:
        """The samples' texts as plain strings."""
        return [s.text for s in self.samples()]

    def samples(self) -> list[Sample]:
        for block in self._finished:
            self._samples += block.samples()
        self._finished = []
        return list(self._samples)

    def fail(self, error: Exception) -> None:
        self.error, self.cancelled = error, True

    def score_only(self) -> None:
        """max_tokens=0 (with echo): each sample is the prompt as read, with its tokens' log-probabilities."""
        r = self.request
        text = self.tokenizer.decode(r.prompt_ids)
        lps = list(self.prompt_logprobs) if r.logprobs is not None else None
        self._samples = [Sample(text, r.prompt_ids, (), FinishReason.LENGTH, lps) for _ in range(r.num)]
        self._count(r.num)
        self.done.set()

    # -- rows -------------------------------------------------------------------------------------------
    def next_rows(self) -> range | None:
        """The rows of the job's next block, or None when it needs no more."""
        if self.cancelled or self._accepted >= self.num:
            return None
        if self._next_row >= self._round_end:
            if self._rounds >= (NOVEL_ROUNDS if self.known is not None else 1):
                return None
            want = self.num if self.known is None else max(8, 2 * (self.num - self._accepted))
            self._round_end = self._next_row + want
            self._rounds += 1
        end = min(self._round_end, self._next_row + self.block_rows)
        rows = range(self._next_row, end)
        self._next_row = end
        return rows

    def accept(self, block: "RowBlock") -> None:
        """Take a finished block's samples in row order (novel jobs: only new records, up to num)."""
        if self.known is None:  # decoded only when asked for, so that the bench times the loop alone
            self._finished.append(block)
            self._count(len(block.rows))
            return
        for sample in block.samples():
            if self._accepted >= self.num:
                break
            key = block.novelty_key(sample)
            if not key or key in self._seen or is_listed(self.known, key) or sample.pattern_accepted is False:
                continue  # known, repeated, or cut at max_tokens before its pattern matched: not a new record
            self._seen.add(key)
            self._samples.append(sample)
            self._count(1)

    def _count(self, n: int) -> None:
        self._accepted += n
        if self.on_sample is not None:
            self.on_sample(n)


class RowBlock:
    """Rows of one job that joined the batch together and share one RowSampler.

    It records the facts of each row as they happen: the tokens drawn at each step (`trace`) and why
    the row ended (`reasons`), so a Sample never has to be re-derived from its text.
    """

    # Why a row ended, coded per row as FinishReason's index (numpy arrays hold small ints, not strings).
    LENGTH, END_OF_RECORD, STOP_STRING, CANCELLED, PATTERN_END = (FinishReason.ALL.index(r) for r in (
        FinishReason.LENGTH, FinishReason.END_OF_RECORD, FinishReason.STOP_STRING, FinishReason.CANCELLED,
        FinishReason.PATTERN_END))

    def __init__(self, job: Job, rows: range, eos: int | None) -> None:
        r = job.request
        self.job = job
        self.rows = rows
        self.eos = eos
        self.sampler = RowSampler(r.params, r.seed, rows, job.context, r.banned, r.bias, r.pattern, r.pattern_start)
        self.live_rows = np.arange(len(rows))  # positions (in rows) of the rows still generating
        self.reasons = np.full(len(rows), self.LENGTH, dtype=np.int8)
        self.steps = 0
        # Per-row text is built while generating only when something needs it then (stop strings,
        # streaming); otherwise the text is decoded from the trace at the end.
        self.texts: list[RowText] | None = None
        if r.stop or job.on_piece is not None:
            self.texts = [RowText(job.tokenizer, r.prompt_ids, r.stop, streaming=job.on_piece is not None,
                                  echo=r.echo) for _ in rows]
        self.trace: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, tokens) of each step
        self.logprobs: list[list[TokenLogprob]] | None = None
        if r.logprobs is not None:
            self.logprobs = [list(job.prompt_logprobs) if r.echo else [] for _ in rows]
            self.logprobs_sent = [0] * len(rows)  # entries already streamed with a piece, per row

    @property
    def n_live(self) -> int:
        return len(self.live_rows)

    def _end_all(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_live
        self.reasons[self.live_rows] = self.CANCELLED
        self.live_rows = self.live_rows[:0]
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)

    def advance(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Sample the next token of every live row; returns (tokens, ended) for those rows (ended None: none did)."""
        live = self.live_rows
        job = self.job
        if job.cancelled:
            return self._end_all()
        model_logprobs = log_softmax(logits) if self.logprobs is not None else None  # before bias and bans
        allowed = self.sampler.allowed(live) if model_logprobs is not None else None  # the pattern's, at this step
        try:
            tokens = self.sampler.sample(logits, live)
        except LstmgenError as e:
            job.fail(e)
            return self._end_all()
        self.steps += 1
        self.trace.append((live, tokens))
        ended = self._ended(live, tokens)
        if model_logprobs is not None:
            self._record_logprobs(live, tokens, model_logprobs, allowed)
        if self.texts is not None:
            self._write_texts(live, tokens, ended)
        if not ended.any():
            return tokens, None
        self.live_rows = live[~ended]
        return tokens, ended

    def _ended(self, live: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Which live rows end with this step's tokens; records why (an end marker wins over the length)."""
        at_end = tokens == self.eos if self.eos is not None else np.zeros(len(live), dtype=bool)
        pattern_end = self.sampler.pattern_ended(live)  # running text whose pattern allows nothing more
        if self.steps >= self.job.request.max_tokens:
            self.reasons[live] = self.LENGTH
            if pattern_end is not None:
                self.reasons[live[pattern_end]] = self.PATTERN_END
            self.reasons[live[at_end]] = self.END_OF_RECORD
            return np.ones(len(live), dtype=bool)
        self.reasons[live[at_end]] = self.END_OF_RECORD
        if pattern_end is None:
            return at_end
        self.reasons[live[pattern_end]] = self.PATTERN_END
        return at_end | pattern_end

    def _record_logprobs(self, live: np.ndarray, tokens: np.ndarray, logprobs: np.ndarray,
                         allowed: np.ndarray | None) -> None:
        n_top = self.job.request.logprobs
        constrained = None
        if allowed is not None:  # the model's distribution restricted to what the pattern allowed, renormalised
            kept = np.where(allowed, logprobs, -np.inf)
            top = kept.max(axis=1, keepdims=True)
            constrained = kept - (top + np.log(np.exp(kept - top).sum(axis=1, keepdims=True)))
        for k, (r, tok) in enumerate(zip(live, tokens)):
            entry = _token_logprob(self.job.tokenizer, logprobs[k], int(tok), n_top)
            if constrained is not None:
                entry = dataclasses.replace(entry, constrained_logprob=float(constrained[k, tok]))
            self.logprobs[r].append(entry)

    def _write_texts(self, live: np.ndarray, tokens: np.ndarray, ended: np.ndarray) -> None:
        for k, (r, tok) in enumerate(zip(live, tokens)):
            if (self.eos is None or tok != self.eos) and self.texts[r].add(int(tok)):
                ended[k] = True
                self.reasons[r] = self.STOP_STRING
            if self.job.on_piece is not None:
                self._hand_out(r, final=bool(ended[k]))

    def _hand_out(self, r: int, final: bool) -> None:
        """Stream row r's text not yet sent (what no stop string can still claim) with its tokens' logprobs;
        at a row's end the last entries go out even when the stop string left no text to send."""
        piece = self.texts[r].take(final=final)
        entries = None if self.logprobs is None else self.logprobs[r][self.logprobs_sent[r]:]
        if not piece and not (final and entries):
            return  # held back (it may still start a stop string): its tokens go out with the text that follows
        if entries is not None:
            self.logprobs_sent[r] = len(self.logprobs[r])
        try:
            self.job.on_piece(self.rows[r] - self.job.request.first_row, piece, entries)
        except Exception:  # the client went away: its rows end at the next step
            self.job.cancelled = True

    def token_ids(self) -> list[list[int]]:
        """Each row's written tokens in order, its end marker included."""
        if not self.trace:
            return [[] for _ in self.rows]
        rows = np.concatenate([r for r, _ in self.trace])
        tokens = np.concatenate([t for _, t in self.trace])
        order = np.argsort(rows, kind="stable")  # stable: each row's tokens stay in step order
        rows, tokens = rows[order], tokens[order]
        bounds = np.searchsorted(rows, np.arange(len(self.rows) + 1))
        return [tokens[bounds[i]: bounds[i + 1]].tolist() for i in range(len(self.rows))]

    def samples(self) -> list[Sample]:
        r = self.job.request
        written = self.token_ids()
        if self.texts is not None:
            texts = [t.text(r.echo) for t in self.texts]
        else:
            decode = self.job.tokenizer.decode  # the end marker writes no text
            prompt_len = len(decode(r.prompt_ids))
            texts = [decode([*r.prompt_ids, *ids])[0 if r.echo else prompt_len:] for ids in written]
        lps = self.logprobs if self.logprobs is not None else [None] * len(texts)
        accepted = self.sampler.pattern_accepted()
        accepted = [None] * len(texts) if accepted is None else accepted.tolist()
        return [Sample(text, r.prompt_ids, ids, FinishReason.ALL[reason], lp, ok)
                for text, ids, reason, lp, ok in zip(texts, written, self.reasons, lps, accepted)]

    def novelty_key(self, sample: Sample) -> str:
        """What makes a record new: its whole text (with the prompt), stripped."""
        if self.job.request.echo:
            return sample.text.strip()
        return (self.job.tokenizer.decode(self.job.request.prompt_ids) + sample.text).strip()


class DecodeLoop:
    """A batch of rows over one backend; jobs join between steps and their rows leave when they end."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer, cache=None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.cache = cache  # a lstmgen.prefix_cache view over this backend: prompts are read through it
        self.eos = tokenizer.eos_id
        self.blocks: list[RowBlock] = []  # in batch order
        self.state: object | None = None
        self.logits: np.ndarray | None = None  # [rows, V]: what the next token of each live row is drawn from

    @property
    def rows(self) -> int:
        return sum(b.n_live for b in self.blocks)

    def add(self, job: Job) -> None:
        """Prefill the job's context (once, unless `prefill` did) and let its first rows join the batch."""
        self.prefill(job)
        self._start_next_block(job)

    def prefill(self, job: Job) -> None:
        """Read the job's context into job.prefilled; a failure is the job's (job.error), not the loop's.
        Reads nothing the loop's steps change, so another thread may call it while the loop steps
        (the server prefills long prompts that way: lstmgen.server.scheduler)."""
        if job.prefilled is not None or job.error is not None:
            return
        try:
            job.prefilled = self._prefill(job)
        except Exception as e:  # surfaced to the request
            job.fail(e)

    def _prefill(self, job: Job) -> tuple[np.ndarray, object]:
        """(logits of the first token [vocab], state) after the job's context; through the prefix cache
        unless the prompt's own log-probabilities are asked for (they need every position's logits)."""
        if self.cache is not None and not (job.request.logprobs is not None and job.request.echo):
            return self.cache.prefill(job.context)
        logits, state = self.backend.prefill(np.asarray([job.context], dtype=np.int64))
        if job.request.logprobs is not None and job.request.echo:
            job.prompt_logprobs = self._prompt_logprobs(job, logits[0])
        return logits[0, -1].copy(), state  # a copy: the view would keep every position's logits alive

    def _prompt_logprobs(self, job: Job, logits: np.ndarray) -> list[TokenLogprob]:
        """The prompt's tokens under the model: token k of the context is predicted by the logits after
        token k - 1; the context's first token (a prompt that brings its own start token) by nothing."""
        n_prompt = len(job.request.prompt_ids)
        start = len(job.context) - n_prompt
        lp = log_softmax(logits[max(start - 1, 0): len(job.context) - 1])
        out = [TokenLogprob(self.tokenizer.tokens[job.context[0]], job.context[0], None, [])] if start == 0 else []
        return out + [_token_logprob(self.tokenizer, lp[k - (start == 0)], job.context[start + k], job.request.logprobs)
                      for k in range(start == 0, n_prompt)]

    def _start_next_block(self, job: Job) -> None:
        if job.request.max_tokens == 0 and job.error is None:
            job.score_only()
            return
        rows = job.next_rows()
        if rows is None:
            job.done.set()
            return
        block = RowBlock(job, rows, self.eos)
        last_logits, state = job.prefilled
        self.state = self.backend.join(self.state, self.backend.expand(state, len(rows)))
        new_logits = np.repeat(last_logits[None, :], len(rows), axis=0)
        self.logits = new_logits if self.logits is None else np.concatenate([self.logits, new_logits])
        self.blocks.append(block)

    def step(self) -> None:
        """Sample one token for every live row, end rows, and run the model for the rest."""
        tokens, ended = self._sample() if len(self.blocks) > 1 else self.blocks[0].advance(self.logits)
        finished = []
        if ended is not None:
            finished = [b for b in self.blocks if not b.n_live]
            self.blocks = [b for b in self.blocks if b.n_live]
            idx = np.flatnonzero(~ended)
            tokens = tokens[idx]
            self.state = self.backend.select(self.state, idx) if len(idx) else None
        try:
            if len(tokens):
                self.logits, self.state = self.backend.step(tokens, self.state)
            else:
                self.logits, self.state = None, None
        except Exception as e:  # jobs that just finished are no longer in self.blocks for fail_all to end
            for block in finished:
                block.job.fail(e)
                block.job.done.set()
            raise
        for block in finished:
            block.job.accept(block)
            self._start_next_block(block.job)

    def _sample(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every block's advance over its slice of the batch; ended None when no row ended."""
        sampled, pos = [], 0
        for block in self.blocks:
            k = block.n_live
            sampled.append(block.advance(self.logits[pos: pos + k]))
            pos += k
        tokens = np.concatenate([t for t, _ in sampled])
        if all(e is None for _, e in sampled):
            return tokens, None
        return tokens, np.concatenate([np.zeros(len(t), dtype=bool) if e is None else e for t, e in sampled])

    def run(self, jobs: Sequence[Job]) -> None:
        """Run jobs until every one is done; raise the first one's error, if any."""
        for job in jobs:
            self.add(job)
        while self.blocks:
            self.step()
        for job in jobs:
            if job.error is not None:
                raise job.error

    def fail_all(self, error: Exception) -> None:
        """The backend broke: end every job in the batch with this error."""
        for block in self.blocks:
            block.job.fail(error)
            block.job.done.set()
        self.blocks, self.state, self.logits = [], None, None


def _token_logprob(tokenizer: Tokenizer, logprobs: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    top: list[tuple[str, float]] = []
    if n_top > 0:
        best = np.argpartition(-logprobs, n_top - 1)[:n_top] if n_top < len(logprobs) else np.arange(len(logprobs))
        best = best[np.lexsort((best, -logprobs[best]))]
        top = [(tokenizer.tokens[i], float(logprobs[i])) for i in best]
    return TokenLogprob(tokenizer.tokens[token], token, float(logprobs[token]), top)


def is_listed(sorted_hashes: np.ndarray, record: str) -> bool:
    """Whether a record's hash is in a sorted hash list (binary search: the novel filter stays linear)."""
    h = record_hash(record)
    i = int(np.searchsorted(sorted_hashes, np.uint64(h)))
    return i < len(sorted_hashes) and int(sorted_hashes[i]) == h
