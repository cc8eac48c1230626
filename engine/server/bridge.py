"""Scheduler jobs driven from asyncio: the bridge between a model's step-loop thread and the event loop.

The scheduler thread calls `on_piece` and sets `job.done`; neither may block or touch asyncio objects
directly. Both are handed to the event loop with `call_soon_threadsafe`, in the order they happen, so
a job's pieces are all queued before its end is. Nothing here waits in a thread: a request costs no
thread while its rows run.
"""

from __future__ import annotations

import asyncio
import threading

from ..decoding import Job, Sample
from ..errors import LstmgenError
from .scheduler import Scheduler


class LoopEvent(threading.Event):
    """A threading.Event that also runs `on_set` on the event loop when set (from any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_set) -> None:
        super().__init__()
        self.loop = loop
        self.on_set = on_set

    def set(self) -> None:
        super().set()
        try:
            self.loop.call_soon_threadsafe(self.on_set)
        except RuntimeError:  # the loop is closed: the server has stopped and nobody waits any more
            pass


class JobRun:
    """One request's job on a scheduler, seen from asyncio.

    Events go to `queue` as `(tag, row, text, logprobs)` for a piece of text (logprobs: the entries of
    its tokens when asked for, else None) and `(tag, None, None, None)` when the job has ended; several
    runs may share one queue (a request with several prompts). `finished` is a future that resolves
    when the job has ended.
    """

    def __init__(self, scheduler: Scheduler, queue: asyncio.Queue | None = None, tag: int = 0, *, stream: bool = False,
                 job: Job | None = None, **job_args) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = queue if queue is not None else asyncio.Queue()
        self.tag = tag
        self.finished: asyncio.Future = loop.create_future()
        on_piece = None
        if stream:
            def on_piece(row: int, text: str, logprobs) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (tag, int(row), text, logprobs))
        if job is None:
            job = scheduler.job(on_piece=on_piece, **job_args)  # checks the arguments: LstmgenError
        else:  # built by Scheduler.jobs (several prompts, each with its own rows)
            job.on_piece = on_piece
        self.job = job
        self.job.done = LoopEvent(loop, self.end)
        scheduler.submit(self.job)

    def end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)
        self.queue.put_nowait((self.tag, None, None, None))

    def cancel(self) -> None:
        """The client went away: the job's rows leave the batch at the next step."""
        self.job.cancelled = True

    def results(self) -> list[str]:
        self.raise_error()
        return self.job.results()

    def samples(self) -> list[Sample]:
        """The texts with their log-probabilities (a job asked for `logprobs`)."""
        self.raise_error()
        return self.job.samples()

    def raise_error(self) -> None:
        error = self.job.error
        if error is not None:
            raise error if isinstance(error, LstmgenError) else LstmgenError(f"generation failed: {error}")


async def finish_or_disconnect(runs: list[JobRun], receive) -> bool:
    """Wait until every run has ended (True), or the client has disconnected (False: the runs are cancelled)."""
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    everything = asyncio.gather(*(r.finished for r in runs))
    try:
        await asyncio.wait({watcher, everything}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if everything.done():
        return True
    for r in runs:
        r.cancel()
    return False


def usage(runs: list[JobRun], samples: list[Sample]) -> dict:
    """OpenAI's usage from the loop's facts: each prompt counted once (as OpenAI does), every written token
    once (end markers too); every endpoint that generates reports it so."""
    prompt = sum(len(run.job.request.prompt_ids) for run in runs)
    completion = sum(s.completion_tokens for s in samples)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
