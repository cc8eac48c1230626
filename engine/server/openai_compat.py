"""OpenAI-compatible endpoints of `lstmgen serve`: `POST /v1/completions` and `GET /v1/models`.

Shapes follow the OpenAI API's legacy completions (`Completion`, `CompletionChoice`, `Logprobs`,
`CompletionUsage`, `Model` in the openai-python types): the official `openai` client works against
them unchanged. Each prompt of a request is one scheduler job of `n` rows with the request's seed,
so choice `i * n + j` is what `Generator.generate(num=n, prompt=prompts[i], seed=seed)[j]` gives,
minus the prompt (unless `echo`). Extra sampling fields: top_k, min_p, repetition_penalty,
repetition_window. `max_tokens` defaults to the model's own default (its manifest), not OpenAI's 16.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..errors import LstmgenError
from .bridge import JobRun, finish_or_disconnect
from ..decoding import Sample
from ..sampling import new_seed
from ..tokenizer import Detokenizer
from .http import EventStream, Models, count_tokens, note_tokens, prompt_text, read_json, sse

SAMPLING_FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repetition_window"}
ACCEPTED_FIELDS = SAMPLING_FIELDS | {"model", "prompt", "n", "stop", "seed", "stream", "stream_options", "logprobs",
                                     "echo", "user"}
# OpenAI fields accepted only at their neutral value (clients often send them).
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "best_of": 1, "suffix": None, "logit_bias": None}
CREATED = int(time.time())  # the models' "created": when this server started
FINGERPRINT = f"lstmgen-{__version__}"


class Completion:
    """One checked completions request: its prompts, its job arguments and how to shape the answer."""

    def __init__(self, models: Models, body: dict) -> None:
        unknown = set(body) - ACCEPTED_FIELDS - set(NEUTRAL)
        if unknown:
            raise LstmgenError(f"unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(ACCEPTED_FIELDS))})")
        for k, neutral in NEUTRAL.items():
            if body.get(k, neutral) not in (neutral, None):
                raise LstmgenError(f"{k} is not supported by lstmgen; leave it out")
        logprobs = body.get("logprobs")
        if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 5):
            raise LstmgenError(f"logprobs must be an integer in [0, 5] (alternatives per token), got {logprobs!r}")
        if logprobs is not None and body.get("stream") is True:
            raise LstmgenError("logprobs is given for whole completions only: leave out stream, or logprobs")
        self.name = models.pick(body.get("model"))
        self.gen = models.generators[self.name]
        self.prompts = self.check_prompts(body.get("prompt"))
        models.check_max_tokens(body.get("max_tokens"))
        self.n = body.get("n") if body.get("n") is not None else 1
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= models.limits.max_batch:
            raise LstmgenError(f"n must be an integer in [1, {models.limits.max_batch}], got {self.n!r}")
        self.echo = bool(body.get("echo"))
        self.stream = body.get("stream") is True
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        seed = body.get("seed")
        stop = body.get("stop")
        self.job_args = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
        self.job_args.update(num=self.n, seed=new_seed() if seed is None else seed,
                             stop=[stop] if isinstance(stop, str) else (stop or []))
        self.logprobs = logprobs
        if logprobs is not None:
            self.job_args["logprobs"] = logprobs
        self.max_tokens = self.job_args.get("max_tokens", self.gen.manifest.defaults.max_tokens)
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.encoded = [prompt_text(self.gen, p) for p in self.prompts]  # (ids, text written back); checks each prompt

    @staticmethod
    def check_prompts(prompt) -> list[str]:
        if prompt is None:
            return [""]
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return prompt
        raise LstmgenError("prompt must be a string or a non-empty list of strings (token ids are not accepted)")

    def start(self, scheduler, queue: asyncio.Queue | None = None) -> list[JobRun]:
        return [JobRun(scheduler, queue, i, stream=queue is not None, prompt=p or None, **self.job_args)
                for i, p in enumerate(self.prompts)]

    def completion_of(self, prompt_index: int, sample: str) -> str:
        """The text after the prompt (the model writes the prompt back first)."""
        return sample[len(self.encoded[prompt_index][1]):]

    def choice_logprobs(self, prompt_index: int, sample: Sample) -> dict:
        """OpenAI's `logprobs` of one choice: its tokens as written, with the prompt's when `echo`.

        The job lists the prompt's tokens first (it echoes); the end-of-record marker writes no text
        and is left out, as OpenAI lists no end token."""
        prompt_ids = self.encoded[prompt_index][0]
        tokens = sample.logprobs if self.echo else sample.logprobs[len(prompt_ids):]
        tokens = [t for t in tokens if t.id != self.gen.tokenizer.eos_id]
        detok = Detokenizer(self.gen.tokenizer)
        if not self.echo:
            for i in prompt_ids:  # word spacing after the prompt depends on what came before
                detok.piece(i)
        return logprobs_object([(detok.piece(t.id), t.logprob, dict(t.top)) for t in tokens])

    def choice(self, index: int, text: str, finish_reason: str | None, logprobs=None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def finish_reason(self, completion_tokens: int) -> str:
        return "length" if completion_tokens >= self.max_tokens else "stop"

    def envelope(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
               "system_fingerprint": FINGERPRINT, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def usage(self, completion_tokens: int) -> dict:
        prompt_tokens = sum(len(ids) for ids, _ in self.encoded) * self.n
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}


def logprobs_object(tokens: list[tuple[str, float, dict[str, float]]], text_offset: int = 0) -> dict:
    """OpenAI's `Logprobs` for one choice from (token text, its logprob, top alternatives) per token;
    `text_offset` is where the first token starts in the choice's text (the prompt's length with echo)."""
    offsets = []
    at = text_offset
    for text, _, _ in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": [t for t, _, _ in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens], "text_offset": offsets}


async def completions(request: Request) -> Response:
    models: Models = request.app.state.models
    req = Completion(models, await read_json(request, models.limits))
    scheduler = models.schedulers[req.name]
    if req.stream:
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
    runs = req.start(scheduler)
    if not await finish_or_disconnect(runs, request.receive):
        return Response(status_code=499)
    choices, total = [], 0
    for i, run in enumerate(runs):
        samples = run.samples() if req.logprobs is not None else [None] * req.n
        for j, sample in enumerate(run.results()):
            text = req.completion_of(i, sample)
            tokens = count_tokens(req.gen, text)
            total += tokens
            logprobs = req.choice_logprobs(i, samples[j]) if samples[j] is not None else None
            choices.append(req.choice(i * req.n + j, (req.prompts[i] + text) if req.echo else text,
                                      req.finish_reason(tokens), logprobs))
    note_tokens(request, req.name, total)
    return JSONResponse(req.envelope(choices, req.usage(total)))


async def stream_events(request: Request, req: Completion, runs: list[JobRun], queue: asyncio.Queue):
    """Chunks as the rows write them: each row's first characters (the prompt written back) are
    skipped, or replaced by the prompt as given when `echo`."""
    to_skip = {(i, j): len(req.encoded[i][1]) for i in range(len(runs)) for j in range(req.n)}
    if req.echo:
        for (i, j) in to_skip:
            yield sse(req.envelope([req.choice(i * req.n + j, req.prompts[i], None)]))
    running = len(runs)
    total = 0
    while running:
        i, row, text = await queue.get()
        if row is None:
            running -= 1
            try:
                samples = runs[i].results()
            except LstmgenError as e:
                yield sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
                return
            for j, sample in enumerate(samples):
                tokens = count_tokens(req.gen, req.completion_of(i, sample))
                total += tokens
                yield sse(req.envelope([req.choice(i * req.n + j, "", req.finish_reason(tokens))]))
            continue
        skip = to_skip[i, row]
        to_skip[i, row] = max(0, skip - len(text))
        if len(text) > skip:
            yield sse(req.envelope([req.choice(i * req.n + row, text[skip:], None)]))
    note_tokens(request, req.name, total)
    if req.include_usage:
        yield sse(req.envelope([], req.usage(total)))
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
