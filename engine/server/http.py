"""What every endpoint of `lstmgen serve` shares: the limits, the served models and their schedulers,
reading a request body within bounds, and errors in the two shapes the server speaks (native
`{"error": "<one line>"}`, and OpenAI's error object on the OpenAI-compatible paths).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .scheduler import Scheduler
from ..errors import LstmgenError
from ..generator import Generator
from ..tokenizer import Detokenizer

OPENAI_PATHS = ("/v1/completions", "/v1/models")
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                      408: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                      499: "invalid_request_error", 503: "server_error"}


@dataclass
class Limits:
    max_body: int = 1 << 20  # bytes of a request body
    max_tokens: int = 2000  # per sample
    max_batch: int = 256  # rows in one model's step loop at once
    max_streams: int = 32  # concurrent streaming responses; past it 429
    max_requests: int = 512  # requests being answered at once; past it 503
    max_connections: int = 4096  # open connections; past it a new one gets 503 and is closed
    client_timeout: float = 10.0  # seconds a client may take to send a request, or stay idle between requests
    max_inspect_tokens: int = 20_000  # tokens of one /v1/inspect text (its states are held in memory)


class HttpError(Exception):
    """An answer other than 200, with one line saying why; `retry_after` seconds for 429 and 503."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def error_response(path: str, status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if path.startswith(OPENAI_PATHS):
        body = {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"), "param": None,
                          "code": "invalid_api_key" if status == 401 else None}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request, limits: Limits) -> dict:
    """The request's JSON object, read within the size limit and the client timeout."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body:
        raise HttpError(413, f"body over {limits.max_body} bytes")

    async def read() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limits.max_body:
                raise HttpError(413, f"body over {limits.max_body} bytes")
        return bytes(data)

    try:
        raw = await asyncio.wait_for(read(), limits.client_timeout)
    except asyncio.TimeoutError:
        raise HttpError(408, f"the body did not arrive within {limits.client_timeout:g} s") from None
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HttpError(400, f"body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object")
    return body


def sse(obj: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A Server-Sent Events response that calls `on_close` however it ends: finished, client gone, or
    server stopping. A client that goes away mid-stream thus cancels its job and frees its stream slot."""

    def __init__(self, events, on_close) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class Models:
    """The served models, one scheduler (one shared step loop) each, and the server-wide counters."""

    def __init__(self, models: dict[str, Generator], limits: Limits) -> None:
        self.generators = models
        self.limits = limits
        self.schedulers = {name: Scheduler(g, limits.max_batch) for name, g in models.items()}
        self.open_streams = 0
        self.running_requests = 0

    def pick(self, name) -> str:
        if name is None:
            if len(self.generators) == 1:
                return next(iter(self.generators))
            raise LstmgenError(f"say which model: one of {', '.join(self.generators)}")
        if name not in self.generators:
            raise HttpError(404, f"no model named {name!r} here (serving: {', '.join(self.generators)})")
        return name

    def check_max_tokens(self, value) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value > self.limits.max_tokens:
            raise LstmgenError(f"max_tokens {value} is over this server's limit of {self.limits.max_tokens}")

    def open_stream(self) -> None:
        if self.open_streams >= self.limits.max_streams:
            raise HttpError(429, f"over {self.limits.max_streams} concurrent streams; retry later", retry_after=1)
        self.open_streams += 1

    def close_stream(self) -> None:
        self.open_streams -= 1

    def close(self) -> None:
        for s in self.schedulers.values():
            s.close()


def prompt_text(gen: Generator, prompt: str | None) -> tuple[list[int], str]:
    """The prompt's ids and its text as the model writes it back (the start of every sample)."""
    ids = gen.encode_prompt(prompt)
    detok = Detokenizer(gen.tokenizer)
    return ids, "".join(detok.piece(i) for i in ids)


def count_tokens(gen: Generator, completion: str) -> int:
    """Tokens of a completion (text after the prompt), counted by encoding it again."""
    return len(gen.tokenizer.encode(completion)) if completion else 0


def note_tokens(request: Request, model: str, tokens: int) -> None:
    """Count generated tokens in the metrics and for the access log line."""
    request.state.tokens = getattr(request.state, "tokens", 0) + tokens
    request.app.state.metrics.tokens.labels(model).inc(tokens)
