"""HTTP plumbing every endpoint shares: reading a body within bounds and checking it against its
declared model, errors in the two shapes the server speaks (native `{"error": "<one line>"}`, and
OpenAI's error object), and Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .limits import Limits
from .schemas import explain

NATIVE_ERRORS, OPENAI_ERRORS = "native", "openai"  # the two error shapes (a route says which it speaks)
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                      405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
                      429: "rate_limit_error", 499: "invalid_request_error", 503: "server_error"}


class HttpError(Exception):
    """An answer other than 200, with one line saying why; `param` is the request field at fault (as the
    caller wrote it), `retry_after` seconds for 429 and 503."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.param = param


def error_response(shape: str, status: int, message: str, retry_after: int | None = None,
                   param: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if shape == OPENAI_ERRORS:
        body = {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"), "param": param,
                          "code": "invalid_api_key" if status == 401 else None}}
    else:
        body = {"error": message} | ({"param": param} if param else {})
    return JSONResponse(body, status_code=status, headers=headers)


async def read_raw(request: Request, limits: Limits) -> bytes:
    """The request's body, read within the size limit and the client timeout."""
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
        return await asyncio.wait_for(read(), limits.client_timeout)
    except asyncio.TimeoutError:
        raise HttpError(408, f"the body did not arrive within {limits.client_timeout:g} s") from None


async def read_body(request: Request, model: type[BaseModel]):
    """The body checked against its declared model; a body that fails it is a 400 naming the field."""
    limits: Limits = request.app.state.models.limits
    raw = await read_raw(request, limits)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as e:
        message, param = explain(e, model, limits.caps)
        raise HttpError(400, message, param=param) from None


def given(body: BaseModel, *exclude: str) -> dict:
    """The fields the caller set to something other than null, as a dict (nested models included)."""
    return {k: v for k, v in body.model_dump(exclude_none=True).items() if k not in exclude}


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
