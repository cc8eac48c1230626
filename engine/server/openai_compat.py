"""OpenAI-compatible endpoints of `lstmgen serve`: `POST /v1/completions` and `GET /v1/models`.

Shapes follow the OpenAI API's legacy completions (`Completion`, `CompletionChoice`, `Logprobs`,
`CompletionUsage`, `Model` in the openai-python types): the official `openai` client works against
them unchanged. Each prompt of a request is one scheduler job of `n` rows with the request's seed,
so choice `i * n + j` is `Generator.generate(num=n, prompt=prompts[i], seed=seed, echo=echo)[j]`.
Extra sampling fields are the rest of lstmgen.options' OpenAI surface (top_k, min_p, ...).
`max_tokens` defaults to the model's own default (its manifest), not OpenAI's 16.

A prompt may be token ids (`[1, 2, 3]`, or a list of such lists), as lm-evaluation-harness and
LiteLLM send them; `max_tokens: 0` with `echo` scores the prompt and writes nothing (the way
log-likelihood evaluations call completions). Streams carry logprobs chunk by chunk in OpenAI's
shape (each chunk lists the tokens its text came from).

Every figure comes from the decode loop's facts (lstmgen.decoding.Sample): `finish_reason` is
"stop" for an end of record or a stop string and "length" for max_tokens; `usage.prompt_tokens`
counts each prompt once, as the model read it; with `echo` the text starts with the prompt as the
model read it (case folded, words re-spaced), which is what `tokens` and `text_offset` describe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..decoding import FinishReason, Sample
from ..sampling import new_seed
from ..tokenizer import Detokenizer
from .bridge import JobRun, finish_or_disconnect, usage
from .http import EventStream, given, read_body, sse
from .native import note_tokens
from .served import Models

CREATED = int(time.time())  # the models' "created": when this server started
FINGERPRINT = f"lstmgen-{__version__}"
OPENAI_FINISH = {FinishReason.END_OF_RECORD: "stop", FinishReason.STOP_STRING: "stop", FinishReason.LENGTH: "length",
                 FinishReason.CANCELLED: "length", FinishReason.PATTERN_END: "stop"}
NOT_OPTIONS = ("model", "prompt", "stream", "stream_options", "user", "suffix", "best_of")


class Completion:
    """One checked completions request: its prompts, its job arguments and how to shape the answer."""

    def __init__(self, models: Models, body) -> None:
        self.name = models.pick(body.model)
        self.gen = models.generators[self.name]
        self.prompts = prompt_list(body.prompt)
        self.n = body.n or 1
        self.echo = bool(body.echo)
        self.stream = bool(body.stream)
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.logprobs = body.logprobs
        options = given(body, *NOT_OPTIONS)
        options["num"] = options.pop("n", 1)
        options.setdefault("seed", new_seed())
        options["echo"] = self.echo  # the loop writes the prompt back or not: no text is cut here
        self.job_args = {**options, "caps": models.limits.caps}
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def start(self, scheduler, queue: asyncio.Queue | None = None) -> list[JobRun]:
        return [JobRun(scheduler, queue, i, stream=queue is not None, prompt=p or None, **self.job_args)
                for i, p in enumerate(self.prompts)]

    def written_pieces(self, prompt_ids) -> Detokenizer:
        """A detokenizer at the start of a choice's text: after the prompt when it is not echoed (a word's
        spacing depends on what came before)."""
        detok = Detokenizer(self.gen.tokenizer)
        if not self.echo:
            for i in prompt_ids:
                detok.piece(i)
        return detok

    def choice_logprobs(self, sample: Sample) -> dict:
        """OpenAI's `logprobs` of one choice: a token per listed entry, as written in the choice's text.

        The loop lists the prompt's tokens (with echo) and every written token; a record's end marker
        writes no text and is listed as an empty token, so the tokens join to the text and
        usage.prompt_tokens + usage.completion_tokens is the number of tokens listed."""
        detok = self.written_pieces(sample.prompt_ids)
        return logprobs_object([(detok.piece(t.id), t.logprob, dict(t.top)) for t in sample.logprobs])

    def choice(self, index: int, text: str, finish_reason: str | None, logprobs=None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def envelope(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
               "system_fingerprint": FINGERPRINT, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out


def prompt_list(prompt) -> list:
    """OpenAI's prompt forms: a text, texts, token ids, or lists of token ids -> one entry per prompt."""
    if prompt is None or isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]  # one prompt of token ids
    return list(prompt)


def logprobs_object(tokens: list[tuple[str, float, dict[str, float]]], text_offset: int = 0) -> dict:
    """OpenAI's `Logprobs` for one choice from (token text, its logprob, top alternatives) per token;
    `text_offset` is where the first token starts in the choice's text."""
    offsets = []
    at = text_offset
    for text, _, _ in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": [t for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens], "text_offset": offsets}


async def completions(request: Request) -> Response:
    models: Models = request.app.state.models
    req = Completion(models, await read_body(request, request.app.state.schemas.completion))
    scheduler = models.schedulers[req.name]
    if req.stream:
        return stream_completion(request, models, req, scheduler)
    runs = req.start(scheduler)
    if not await finish_or_disconnect(runs, request.receive):
        return Response(status_code=499)
    samples = [s for run in runs for s in run.samples()]
    choices = [req.choice(k, s.text, OPENAI_FINISH[s.finish_reason],
                          req.choice_logprobs(s) if req.logprobs is not None else None) for k, s in enumerate(samples)]
    used = usage(runs, samples)
    note_tokens(request, req.name, used["completion_tokens"])
    return JSONResponse(req.envelope(choices, used))


def stream_completion(request: Request, models: Models, req: Completion, scheduler) -> Response:
    models.open_stream()
    queue: asyncio.Queue = asyncio.Queue()
    try:
        runs = req.start(scheduler, queue)
    except BaseException:
        models.close_stream()
        raise

    def on_close() -> None:
        for r in runs:
            r.cancel()
        models.close_stream()

    return EventStream(stream_events(request, req, runs, queue), on_close)


class ChunkLogprobs:
    """Streamed logprobs: each chunk lists the tokens its text came from (text that might still begin a
    stop string waits, and its tokens with it), offsets counted as in the whole choice's text."""

    def __init__(self, req: Completion, runs: list[JobRun]) -> None:
        self.req = req
        self.detoks = {(i, j): req.written_pieces(run.job.request.prompt_ids) for i, run in enumerate(runs)
                       for j in range(req.n)}
        self.offsets = dict.fromkeys(self.detoks, 0)

    def of(self, i: int, row: int, text: str, entries) -> dict | None:
        if entries is None:
            return None
        detok = self.detoks[i, row]
        tokens = [(detok.piece(t.id), t.logprob, dict(t.top)) for t in entries]
        out = logprobs_object(tokens, self.offsets[i, row])
        self.offsets[i, row] += sum(len(piece) for piece, _, _ in tokens)  # as the whole answer counts them
        return out


async def stream_events(request: Request, req: Completion, runs: list[JobRun], queue: asyncio.Queue):
    """Chunks as the rows write them (the prompt as read first, with echo), then each choice's end."""
    running, samples = len(runs), []
    chunk_logprobs = ChunkLogprobs(req, runs)
    while running:
        i, row, text, entries = await queue.get()
        if row is not None:
            logprobs = chunk_logprobs.of(i, row, text, entries)
            yield sse(req.envelope([req.choice(i * req.n + row, text, None, logprobs)]))
            continue
        running -= 1
        try:
            done = runs[i].samples()
        except Exception as e:  # the request failed after its answer began: say so in the stream
            yield sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
            return
        samples += done
        for j, s in enumerate(done):
            yield sse(req.envelope([req.choice(i * req.n + j, "", OPENAI_FINISH[s.finish_reason])]))
    used = usage(runs, samples)
    note_tokens(request, req.name, used["completion_tokens"])
    if req.include_usage:
        yield sse(req.envelope([], used))
    yield "data: [DONE]\n\n"


async def list_models(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    return JSONResponse({"object": "list", "data": [model_object(name, g) for name, g in models.generators.items()]})


async def get_model(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    name = models.pick(request.path_params["model"])  # 404 for a model not served here
    return JSONResponse(model_object(name, models.generators[name]))


def model_object(name: str, gen) -> dict:
    """OpenAI's `Model`, with the artifact's own description under `lstmgen`."""
    m = gen.manifest
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "lstmgen",
            "lstmgen": {"level": gen.tokenizer.level, "records": gen.records, "precision": m.precision,
                        "dims": asdict(m.dims), "defaults": asdict(m.defaults)}}
