"""OpenAI-compatible chat: `POST /v1/chat/completions`, whole or streamed, with n, stop, seed and logprobs.

The conversation becomes a prompt through the model's chat template (lstmgen.chat: speaker lines for
script models, paragraphs for prose, a record's start for records models); the reply is what the
model writes until the template's stop (a line break for a script's line) or the request's own.
Each request is one scheduler job of `n` rows, so choice j is `Generator.chat(messages, num=n,
seed=seed)[j]`. Shapes follow openai-python's `ChatCompletion` and `ChatCompletionChunk`.
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat import ChatTemplate
from ..decoding import Sample, TokenLogprob
from ..sampling import new_seed
from .bridge import JobRun, finish_or_disconnect, usage
from .http import EventStream, given, read_body, sse
from .native import note_tokens
from .openai_compat import FINGERPRINT, OPENAI_FINISH
from .served import Models

NOT_OPTIONS = ("model", "messages", "stream", "stream_options", "user", "logprobs", "top_logprobs",
               "max_completion_tokens", "speakers")


class Chat:
    """One checked chat request: its prompt, the job's arguments and the answer's shape."""

    def __init__(self, models: Models, body) -> None:
        self.name = models.pick(body.model)
        self.gen = models.generators[self.name]
        self.prompt, self.template = self.gen.chat_prompt([m.as_message() for m in body.messages], body.speakers)
        self.n = body.n or 1
        self.stream = bool(body.stream)
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.logprobs = body.logprobs is True
        options = given(body, *NOT_OPTIONS)
        options["num"] = options.pop("n", 1)
        options.setdefault("seed", new_seed())
        options.setdefault("stop", list(self.template.stop) or None)
        if body.max_completion_tokens is not None:
            options["max_tokens"] = body.max_completion_tokens
        if self.logprobs:
            options["logprobs"] = body.top_logprobs or 0
        options["echo"] = self.template.style == "record"  # a record's reply is the whole record
        self.job_args = {**options, "caps": models.limits.caps}
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def envelope(self, choices: list[dict], usage_: dict | None = None, chunk: bool = False) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if chunk else "chat.completion", "created": self.created,
               "model": self.name, "system_fingerprint": FINGERPRINT, "choices": choices}
        if usage_ is not None:
            out["usage"] = usage_
        return out

    def choice(self, index: int, sample: Sample) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": self.template.reply(sample.text)},
                "logprobs": self.content_logprobs(written_entries(sample)) if self.logprobs else None,
                "finish_reason": OPENAI_FINISH[sample.finish_reason]}

    def content_logprobs(self, entries: list[TokenLogprob]) -> dict:
        """OpenAI's chat logprobs; each token is written as its vocabulary entry (a script line's end, '\n',
        is listed though the stop string ends the reply before it)."""
        return {"content": [_token_entry(t.token, t.logprob, t.top) for t in entries]}


def written_entries(sample: Sample) -> list[TokenLogprob]:
    """The reply's own tokens: a record's echoed start is not the assistant's writing."""
    return sample.logprobs[len(sample.logprobs) - sample.completion_tokens:]


def _token_entry(token: str, logprob, top) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top]}


async def chat_completions(request: Request) -> Response:
    models: Models = request.app.state.models
    chat = Chat(models, await read_body(request, request.app.state.schemas.chat))
    scheduler = models.schedulers[chat.name]
    if chat.stream:
        return stream_chat(request, models, chat, scheduler)
    run = JobRun(scheduler, prompt=chat.prompt or None, **chat.job_args)
    if not await finish_or_disconnect([run], request.receive):
        return Response(status_code=499)
    samples = run.samples()
    used = usage([run], samples)
    note_tokens(request, chat.name, used["completion_tokens"])
    return JSONResponse(chat.envelope([chat.choice(j, s) for j, s in enumerate(samples)], used))


def stream_chat(request: Request, models: Models, chat: Chat, scheduler) -> Response:
    models.open_stream()
    try:
        run = JobRun(scheduler, stream=True, prompt=chat.prompt or None, **chat.job_args)
    except BaseException:
        models.close_stream()
        raise

    def on_close() -> None:
        run.cancel()
        models.close_stream()

    return EventStream(chat_events(request, chat, run), on_close)


class ReplyText:
    """A streamed reply trimmed as ChatTemplate.reply trims the whole one: no leading white space, and
    trailing white space held back until more text shows it was inside the reply."""

    def __init__(self, template: ChatTemplate) -> None:
        self.trims = template.style != "record"
        self.started = not self.trims
        self.pending = ""

    def take(self, piece: str) -> str:
        if not self.trims:
            return piece
        piece = self.pending + (piece if self.started else piece.lstrip())
        self.started = self.started or bool(piece)
        body = piece.rstrip()
        self.pending = piece[len(body):]
        return body


async def chat_events(request: Request, chat: Chat, run: JobRun):
    """A role chunk per choice, content chunks as the rows write them, a final chunk per choice."""
    for j in range(chat.n):
        yield sse(chat.envelope([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}], chunk=True))
    replies = [ReplyText(chat.template) for _ in range(chat.n)]
    while True:
        _, row, text, entries = await run.queue.get()
        if row is None:
            break
        content = replies[row].take(text)
        if content or entries:
            logprobs = chat.content_logprobs(entries) if chat.logprobs and entries else None
            yield sse(chat.envelope([{"index": row, "delta": {"content": content}, "logprobs": logprobs,
                                      "finish_reason": None}], chunk=True))
    try:
        samples = run.samples()
    except Exception as e:  # the request failed after its answer began: say so in the stream
        yield sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
        return
    for j, s in enumerate(samples):
        yield sse(chat.envelope([{"index": j, "delta": {}, "logprobs": None,
                                  "finish_reason": OPENAI_FINISH[s.finish_reason]}], chunk=True))
    used = usage([run], samples)
    note_tokens(request, chat.name, used["completion_tokens"])
    if chat.include_usage:
        yield sse(chat.envelope([], used, chunk=True))
    yield "data: [DONE]\n\n"
