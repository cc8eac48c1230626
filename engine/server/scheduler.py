"""Dynamic batching: many requests for one model share one decode loop.

A `Scheduler` owns a thread that runs the model's `DecodeLoop` (lstmgen.decoding) one token at a
time over every row in flight. A request's `Job` joins the batch between steps and its rows leave
when they end (end of record, stop string, max tokens, or the client went away). Each row keeps its
own random stream (seed, row) and each job its own sampling settings, so a request's text is what
`Generator.generate` gives for it alone with the same seed.

A prompt of more than PREFILL_INLINE_TOKENS is read on a second thread (one pass over the prompt can
take seconds) and joins the batch when read, so the rows in flight and short prompts keep moving
meanwhile; a shorter one is read between two steps, which costs less than handing it over.
"""

from __future__ import annotations

import queue
import threading

from ..decoding import DecodeLoop, Job
from ..errors import LstmgenError
from ..generator import Generator

__all__ = ["Job", "Scheduler"]

PREFILL_INLINE_TOKENS = 256  # longer contexts are read on the prefill thread


class Scheduler:
    """The decode loop of one model, shared by every request for it."""

    def __init__(self, gen: Generator, max_batch: int = 256, cache=None) -> None:
        self.gen = gen
        self.max_batch = max_batch
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.cache = cache  # the model's lstmgen.prefix_cache view: every job's prompt is read through it
        self.loop = DecodeLoop(gen.backend, gen.tokenizer, cache)
        self.rows_in_flight = 0
        self._prefilling: set[int] = set()  # ids of the jobs on the prefill thread (this set: the loop's thread only)
        self.steps = 0
        self._stop = threading.Event()
        self._to_prefill: queue.Queue[Job | None] = queue.Queue()
        self._prefiller = threading.Thread(target=self._prefill_long, name=f"lstmgen-prefill-{gen.manifest.name}",
                                           daemon=True)
        self._prefiller.start()
        self._thread = threading.Thread(target=self._run, name=f"lstmgen-batch-{gen.manifest.name}", daemon=True)
        self._thread.start()

    # -- requests --------------------------------------------------------------------------------------
    def jobs(self, **kwargs) -> list[Job]:
        """Jobs for a request, checked like Generator.generate (same checks, same messages); one per prompt.

        Takes Generator.generate's arguments (prompts, logprobs, echo, bias, ban, novel included, not
        progress) and `on_piece(row, text, logprobs)` to stream. At most max_batch samples per job.
        """
        # block_rows = num: a novel job's later rounds reuse the rows admitted for it, at most max_batch
        caps = {"num": self.max_batch, **kwargs.pop("caps", {})}
        return self.gen.jobs(caps=caps, block_rows=kwargs.get("num") or 1, **kwargs)

    def job(self, **kwargs) -> Job:
        """The job of a request for one prompt (see `jobs`)."""
        if kwargs.get("prompts") is not None:
            raise LstmgenError("Scheduler.job takes one prompt; use Scheduler.jobs for a list of prompts")
        [job] = self.jobs(**kwargs)
        return job

    def submit(self, job: Job) -> Job:
        if self._stop.is_set():
            raise LstmgenError("the server is shutting down")
        self.pending.put(job)
        return job

    def close(self) -> None:
        self._stop.set()
        self.pending.put(None)
        self._thread.join(timeout=30)
        self._to_prefill.put(None)
        self._prefiller.join(timeout=30)

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        waiting: list[Job] = []
        closing = False
        while not (closing and not waiting and not self.loop.blocks and not self._prefilling):
            idle = not self.loop.blocks and not waiting
            closing |= self._collect(waiting, block=idle and (not closing or bool(self._prefilling)))
            self._admit(waiting)
            if not self.loop.blocks:
                continue
            try:
                self.loop.step()
            except Exception as e:  # the backend broke: fail the requests in flight, keep serving
                self.loop.fail_all(e)
            self.steps += 1
            self.rows_in_flight = self.loop.rows

    def _collect(self, waiting: list[Job], block: bool) -> bool:
        """Move newly submitted jobs to `waiting`; True once close() was called."""
        closing = False
        try:
            while True:
                job = self.pending.get(block=block)
                block = False
                if job is None:
                    closing = True
                else:
                    waiting.append(job)
        except queue.Empty:
            return closing

    def _admit(self, waiting: list[Job]) -> None:
        """Let waiting jobs join the batch, in arrival order, while their rows fit; a long prompt goes to
        the prefill thread first and comes back to `pending` once read."""
        for job in list(waiting):
            if id(job) in self._prefilling:  # back from the prefill thread, read (or failed, or cancelled)
                self._prefilling.discard(id(job))
            elif job.prefilled is None and not job.cancelled and len(job.context) > PREFILL_INLINE_TOKENS:
                waiting.remove(job)
                self._prefilling.add(id(job))
                self._to_prefill.put(job)
        while waiting and (self.loop.rows + waiting[0].num <= self.max_batch or not self.loop.blocks):
            job = waiting.pop(0)
            if job.cancelled:
                job.done.set()
                continue
            self.loop.add(job)
        self.rows_in_flight = self.loop.rows

    def _prefill_long(self) -> None:
        """The prefill thread: read each long prompt handed over, then queue its job for the batch."""
        while (job := self._to_prefill.get()) is not None:
            if not job.cancelled:
                self.loop.prefill(job)  # a failure marks the job; _admit then ends it
            self.pending.put(job)
