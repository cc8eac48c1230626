"""Dynamic batching: many requests for one model share one batched step loop.

A `Scheduler` owns a thread that runs the model one token at a time over every row in flight.
A request (`Job`) adds its rows between steps: its context is prefilled at batch 1 and its state
joins the batch; its rows leave when they end (end of record, stop string, max tokens, or the client
went away). Each row keeps its own random stream (seed, row) and each job its own sampling settings,
so a request's text is what `Generator.generate` gives for it alone with the same seed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import LstmgenError
from .generator import Generator, _RowText
from .sampling import RowSampler


@dataclass(eq=False)
class Job:
    """One request's rows. `on_piece(row, text)` streams; `done` is set when every row has ended."""

    context: list[int]
    prompt_ids: list[int]
    num: int
    max_tokens: int
    sampler: RowSampler  # the request's sampling settings, random streams and banned ids
    seed: int
    stop: list[str]
    on_piece: Callable[[int, str], None] | None = None
    texts: list[_RowText] = field(default_factory=list)
    steps: int = 0
    live: np.ndarray | None = None  # per row: still generating
    error: Exception | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    sent: list[int] = field(default_factory=list)

    def results(self) -> list[str]:
        return [t.final() for t in self.texts]


class Scheduler:
    """The step loop of one model, shared by every request for it."""

    def __init__(self, gen: Generator, max_batch: int = 256) -> None:
        self.gen = gen
        self.max_batch = max_batch
        self.pending: queue.Queue[Job] = queue.Queue()
        self.rows_in_flight = 0
        self.steps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lstmgen-batch-{gen.manifest.name}", daemon=True)
        self._thread.start()

    # -- requests --------------------------------------------------------------------------------------
    def job(self, *, num: int = 1, prompt: str | None = None, max_tokens: int | None = None, seed: int | None = None,
            stop=(), on_piece=None, allow_unk: bool = False, **sampling) -> Job:
        """Validate like Generator.generate (same checks, same messages) and build the job."""
        gen = self.gen
        r = gen.request(num=num, prompt=prompt, max_tokens=max_tokens, seed=seed, stop=stop, allow_unk=allow_unk,
                        max_num=self.max_batch, **sampling)
        context = list(gen.manifest.start_ids) + r.prompt_ids
        sampler = RowSampler(r.params, r.seed, range(r.num), context, r.banned)
        job = Job(context, r.prompt_ids, r.num, r.max_tokens, sampler, r.seed, r.stop, on_piece)
        job.texts = [_RowText(gen.tokenizer, r.prompt_ids, r.stop) for _ in range(r.num)]
        job.sent = [0] * r.num
        return job

    def submit(self, job: Job) -> Job:
        if self._stop.is_set():
            raise LstmgenError("the server is shutting down")
        self.pending.put(job)
        return job

    def close(self) -> None:
        self._stop.set()
        self.pending.put(None)  # type: ignore[arg-type]
        self._thread.join(timeout=30)

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backend, eos = self.gen.backend, self.gen.tokenizer.eos_id
        jobs: list[Job] = []  # in batch order; each owns job.num consecutive rows, finished rows removed
        owners: list[tuple[Job, int]] = []  # batch row -> (job, row within job)
        state = None
        logits = None
        waiting: list[Job] = []
        while True:
            block = not jobs and not waiting
            try:
                while True:
                    j = self.pending.get(block=block, timeout=None if block else 0)
                    block = False
                    if j is None:
                        if not jobs and not waiting:
                            return
                        continue
                    waiting.append(j)
            except queue.Empty:
                pass
            # Admit waiting jobs while they fit.
            while waiting and (len(owners) + waiting[0].num <= self.max_batch or not owners):
                j = waiting.pop(0)
                if j.cancelled:
                    j.done.set()
                    continue
                try:
                    lg, st = backend.prefill(np.asarray([j.context], dtype=np.int64))
                except Exception as e:  # surfaced to the request
                    j.error = e
                    j.done.set()
                    continue
                h_new, c_new = backend.expand(st, j.num)
                if state is None:
                    state, logits = (h_new, c_new), np.repeat(lg, j.num, axis=0)
                else:
                    h, c = _arrays(state)
                    state = (np.concatenate([h, h_new], axis=1), np.concatenate([c, c_new], axis=1))
                    logits = np.concatenate([logits, np.repeat(lg, j.num, axis=0)], axis=0)
                j.live = np.ones(j.num, dtype=bool)
                jobs.append(j)
                owners += [(j, r) for r in range(j.num)]
            if not owners:
                continue
            # One step: sample every row with its job's settings and random stream.
            tokens = np.empty(len(owners), dtype=np.int64)
            keep = np.ones(len(owners), dtype=bool)
            pos = 0
            for j in jobs:
                rows = np.flatnonzero(j.live)
                n = len(rows)
                try:
                    t = j.sampler.sample(logits[pos: pos + n], rows)
                except LstmgenError as e:
                    j.error, j.cancelled = e, True
                    t = np.zeros(n, dtype=np.int64)
                tokens[pos: pos + n] = t
                j.steps += 1
                for k, (r, tok) in enumerate(zip(rows, t)):
                    ended = j.cancelled or (eos is not None and tok == eos)
                    if not ended:
                        ended = j.texts[r].add(int(tok)) or j.steps >= j.max_tokens
                        if j.on_piece is not None:
                            self._emit(j, r, final=ended)
                    elif j.on_piece is not None and not j.cancelled:
                        self._emit(j, r, final=True)
                    if ended:
                        j.live[r] = False
                        keep[pos + k] = False
                pos += n
            self.steps += 1
            for j in [j for j in jobs if not j.live.any()]:
                jobs.remove(j)
                j.done.set()
            if not keep.all():
                idx = np.flatnonzero(keep)
                owners = [owners[i] for i in idx]
                tokens = tokens[idx]
                state = backend.select(state, idx) if len(idx) else None
            self.rows_in_flight = len(owners)
            if owners:
                logits, state = backend.step(tokens, state)
                logits = logits.copy()  # the step buffer is reused by the next step; joins concatenate

    @staticmethod
    def _emit(job: Job, row: int, final: bool) -> None:
        text = job.texts[row]
        upto = len(text.final()) if final else text.safe_length()
        if upto > job.sent[row]:
            piece = text.text[job.sent[row]: upto]
            job.sent[row] = upto
            try:
                job.on_piece(row, piece)
            except Exception:  # the client went away: its rows end at the next step
                job.cancelled = True


def _arrays(state):
    from .generator import _StepBuffers

    if isinstance(state, _StepBuffers):
        return state.h_in, state.c_in
    return state
