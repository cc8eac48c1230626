"""The native endpoints of `lstmgen serve`: generate (whole or streamed), next, score, health and metrics.

Bodies are checked by their declared models (lstmgen.server.schemas); generation options go to
the model's scheduler as they are, where lstmgen.options' table checks them once more against the
artifact (its vocabulary, its records). What the response says of a sample (why it ended, how many
tokens it read and wrote) is what the decode loop recorded, never re-derived from its text. Every
prompt, text to score and text of /v1/next is read through the model's prefix-state cache.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import LstmgenError
from ..sampling import new_seed
from .bridge import JobRun, finish_or_disconnect, usage
from .http import EventStream, given, read_body, sse
from .served import Models


async def generate(request: Request) -> Response:
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.generate)
    name = models.pick(body.model)
    args = given(body, "model", "stream")
    args.setdefault("seed", new_seed())  # chosen here so that the response can report it
    if body.stream:
        return generate_stream(request, models, name, args)
    scheduler = models.schedulers[name]
    runs = [JobRun(scheduler, job=job) for job in scheduler.jobs(caps=models.limits.caps, **args)]  # one per prompt
    if not await finish_or_disconnect(runs, request.receive):
        return Response(status_code=499)
    groups = [run.samples() for run in runs]
    detailed = args.get("logprobs") is not None
    samples = [[s.to_dict() if detailed else s.text for s in group] for group in groups]
    reasons = [[s.finish_reason for s in group] for group in groups]
    used = usage(runs, [s for group in groups for s in group])
    note_tokens(request, name, used["completion_tokens"])
    several = "prompts" in args
    return JSONResponse({"model": name, "seed": args["seed"], "samples": samples if several else samples[0],
                         "finish_reasons": reasons if several else reasons[0], "usage": used})


def generate_stream(request: Request, models: Models, name: str, args: dict) -> Response:
    unsupported = [k for k in ("prompts", "novel") if args.get(k)] + (["num"] if args.get("num", 1) != 1 else [])
    if unsupported:
        raise LstmgenError(f"stream one sample of one prompt at a time: leave out {', '.join(unsupported)}")
    args.pop("num", None)
    models.open_stream()
    try:
        run = JobRun(models.schedulers[name], stream=True, caps=models.limits.caps, **args)
    except BaseException:
        models.close_stream()
        raise

    async def events():
        while True:
            _, row, text, _ = await run.queue.get()
            if row is None:
                break
            yield sse({"text": text})
        try:
            [sample] = run.samples()
        except LstmgenError as e:
            yield sse({"error": str(e)}, event="done")
            return
        note_tokens(request, name, sample.completion_tokens)
        yield sse({**sample.to_dict(), "seed": args["seed"]}, event="done")

    def on_close() -> None:
        run.cancel()
        models.close_stream()

    return EventStream(events(), on_close)


async def next_tokens(request: Request) -> JSONResponse:
    """The likeliest next tokens after a text, with the chance generation with the given options writes
    each: a fresh lstmgen Session's `top` (stateless for the client; the prefix cache remembers)."""
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.next)
    name = models.pick(body.model)
    gen, cache = models.generators[name], models.caches[name]
    options = given(body, "model", "text", "top")

    def work() -> dict:  # a prefill of up to --max-body characters: off the event loop
        session = gen.session(prompt=body.text or None, cache=cache, seed=0, **options)
        top = [{"token": t.token, "id": t.id, "text": t.text, "probability": t.probability}
               for t in session.top(body.top or 5)]
        return {"model": name, "text": session.text, "prompt_tokens": len(session.token_ids),
                "cached_tokens": session.cached_tokens, "top": top}

    return JSONResponse(await run_in_threadpool(work))


async def score(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.score)
    name = models.pick(body.model)
    segments = body.segments or body.streams or 1
    result = await run_in_threadpool(lambda: models.generators[name].score(
        body.text, records=body.records, segments=segments, cache=models.caches[name]))
    return JSONResponse(result.to_dict())


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "models": list(request.app.state.models.generators)})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


def note_tokens(request: Request, model: str, tokens: int) -> None:
    """Count generated tokens in the metrics and for the access log line."""
    request.state.tokens = getattr(request.state, "tokens", 0) + tokens
    request.app.state.metrics.tokens.labels(model).inc(tokens)
