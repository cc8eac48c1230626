"""The app of `lstmgen serve`: the route table, and the Starlette app built from it.

`ROUTES` is the one declaration of the HTTP surface: each row names its method and path, its handler,
whether it needs the API key, which error shape it speaks (native or OpenAI), and its declared
request and response bodies. The Starlette routes, the API-key gate, the metrics' path labels and
/openapi.json are all derived from it.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route

from ..errors import LstmgenError
from ..options import JS, OPENAI, SESSION_OPTIONS, OptionError, on_surface
from . import native, openai_chat, openai_compat
from . import playground as pg
from . import schemas as s
from . import tokenize as tk
from .http import NATIVE_ERRORS, OPENAI_ERRORS, HttpError, error_response
from .openapi import openapi_document
from .operations import Gate, Metrics
from .served import Models


@dataclass(frozen=True)
class RouteSpec:
    """One endpoint. `request` names a request model of schemas.Schemas; `response` is a response model
    or a media type; `streams`: it may answer with Server-Sent Events instead."""

    method: str
    path: str  # Starlette's path syntax ({model:path}); OpenAPI's path drops the convertor
    endpoint: Callable
    summary: str
    response: type | str
    request: str | None = None
    auth: bool = True  # needs the API key, when the server has one
    errors: str = NATIVE_ERRORS
    streams: bool = False
    documented: bool = True  # listed in /openapi.json (the read-only code files are not an API)
    query: tuple[str, ...] = ()  # optional query parameters it reads

    @property
    def template(self) -> str:
        """The path as OpenAPI and the metrics' labels write it: /v1/models/{model}."""
        return re.sub(r"\{(\w+):\w+\}", r"{\1}", self.path)


async def playground(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.playground_page)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/", playground, "the playground page (no CDN; has a field for the API key)", "text/html",
              auth=False),
    RouteSpec("GET", "/v1/health", native.health, "liveness: the served models (never needs the API key)", s.Health,
              auth=False),
    RouteSpec("GET", "/openapi.json", openapi, "this document", "application/json", auth=False),
    RouteSpec("GET", "/v1/models", openai_compat.list_models, "OpenAI's model list; each model's details under"
              " `lstmgen`", s.ModelList, errors=OPENAI_ERRORS),
    RouteSpec("GET", "/v1/models/{model:path}", openai_compat.get_model, "one served model", s.ModelObject,
              errors=OPENAI_ERRORS),
    RouteSpec("POST", "/v1/completions", openai_compat.completions, "OpenAI-compatible completions, streamed or not",
              s.Completion, request="completion", errors=OPENAI_ERRORS, streams=True),
    RouteSpec("POST", "/v1/chat/completions", openai_chat.chat_completions, "OpenAI-compatible chat: the model's chat"
              " template (lstmgen.chat) makes the conversation a prompt", s.ChatCompletion, request="chat",
              errors=OPENAI_ERRORS, streams=True),
    RouteSpec("POST", "/v1/generate", native.generate, "samples of one or several prompts; with `stream`, one"
              " sample as Server-Sent Events", s.GenerateResponse, request="generate", streams=True),
    RouteSpec("POST", "/v1/next", native.next_tokens, "the likeliest next tokens after a text, with the chance"
              " generation writes each (autocomplete; read through the prefix-state cache)", s.NextResponse,
              request="next"),
    RouteSpec("POST", "/v1/score", native.score, "negative log-likelihood of a text (`lstmgen score`)",
              s.ScoreResponse, request="score"),
    RouteSpec("POST", "/v1/inspect", pg.inspect_endpoint, "surprisal and the cells that track the text's features"
              " (the playground's inspect view), at most --max-inspect-tokens tokens, two at a time",
              s.InspectResponse, request="inspect"),
    *(RouteSpec(method, prefix + path, handler, summary, response, request=body, query=query)
      for prefix in ("", "/v1")
      for method, path, handler, summary, response, body, query in (
          ("GET", "/tokenizer_info", tk.tokenizer_info, "the tokenizer's configuration (vLLM's shape), of `model` or"
           " the default model", s.TokenizerInfo, None, ("model",)),
          ("POST", "/tokenize", tk.tokenize_endpoint, "a text or conversation as token ids (vLLM's shape)",
           s.TokenizeResponse, "tokenize", ()),
          ("POST", "/detokenize", tk.detokenize_endpoint, "token ids as text (vLLM's shape)", s.DetokenizeResponse,
           "detokenize", ()))),
    RouteSpec("GET", "/metrics", native.metrics, "Prometheus text format", "text/plain"),
    RouteSpec("GET", "/js/ort/{file}", pg.ort_file, "onnxruntime-web's files for the in-browser generator",
              "application/octet-stream", auth=False, documented=False),
    RouteSpec("GET", "/js/{file}", pg.js_file, "the in-browser generator's JavaScript", "text/javascript",
              auth=False, documented=False),
    RouteSpec("GET", "/artifacts/{model}/{file}", pg.artifact_file, "a served model's manifest.json,"
              " generate-web.onnx or model.onnx, for the in-browser generator", "application/json application/octet-stream"),
    RouteSpec("POST", "/v1/pattern", pg.pattern_endpoint, "a regex and length bounds compiled over a model's"
              " vocabulary (`lstmgen compile-pattern`'s JSON), for the in-browser generator's `pattern`",
              "application/json", request="pattern"),
)


def route_of(app: Starlette, scope) -> RouteSpec | None:
    """The route a request is for (a path that matches with another method counts: its 405 speaks its shape)."""
    for route, spec in zip(app.routes, ROUTES):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return spec
    return None


def shape_of(app: Starlette, scope) -> str:
    """The route's error shape; an unknown path under /v1/ answers in OpenAI's (its clients read only that)."""
    spec = route_of(app, scope)
    if spec is not None:
        return spec.errors
    return OPENAI_ERRORS if scope["path"].startswith("/v1/") else NATIVE_ERRORS


def error_shape(request: Request) -> str:
    return shape_of(request.app, request.scope)


# -- errors: one line, in the shape the route speaks ----------------------------------------------------
def answer_error(request: Request, status: int, message: str, retry_after: int | None = None,
                 param: str | None = None) -> Response:
    """An error in the route's shape; its one line also goes to the access log (request.state.reason)."""
    request.state.reason = message
    return error_response(error_shape(request), status, message, retry_after, param)


async def on_http_error(request: Request, e: HttpError) -> Response:
    return answer_error(request, e.status, str(e), e.retry_after, e.param)


async def on_bad_input(request: Request, e: LstmgenError) -> Response:
    if isinstance(e, OptionError):  # worded with the field as this route's callers write it (OpenAI's n for num)
        field = (e.option.openai_name or e.param) if error_shape(request) == OPENAI_ERRORS else e.param
        return answer_error(request, 400, e.spelled(field), param=field)
    return answer_error(request, 400, str(e), param=getattr(e, "param", None))


async def not_found(request: Request, e) -> Response:
    return answer_error(request, 404, f"no such endpoint: {request.method} {request.url.path}")


async def not_allowed(request: Request, e) -> Response:
    return answer_error(request, 405, f"{request.method} is not allowed on {request.url.path}")


# -- the app ----------------------------------------------------------------------------------------------
def make_app(models: Models, *, api_key: str | None = None, cors_origins: list[str] = (),
             access_log: Callable[[str], None] | None = None, connections: Callable[[], int] = lambda: 0) -> Starlette:
    stats = Metrics(models, connections)
    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"], max_age=600))
    middleware.append(Middleware(Gate, models=models, metrics=stats, api_key=api_key, access_log=access_log,
                                 route_of=lambda scope: route_of(app, scope), shape_of=lambda scope: shape_of(app, scope)))
    app = Starlette(routes=[Route(r.path, r.endpoint, methods=[r.method]) for r in ROUTES], middleware=middleware,
                    exception_handlers={HttpError: on_http_error, LstmgenError: on_bad_input, 404: not_found,
                                        405: not_allowed})
    app.state.models = models
    app.state.metrics = stats
    app.state.schemas = s.Schemas(models.limits, list(models.generators))
    app.state.openapi = openapi_document(ROUTES, app.state.schemas, api_key is not None)
    app.state.playground_page = playground_page(pg.browser_runtime_missing())
    app.state.inspect_slots = asyncio.Semaphore(pg.INSPECTIONS_AT_ONCE)
    return app


def playground_page(browser_runtime_missing: str | None) -> str:
    """The page with its sampling fields (the options table's numeric OpenAI options, as JSON) and, when
    "run in my browser" is off here, why (both fixed for a server's life)."""
    fields = [{"name": o.name, "js": o.js_name, "kind": o.kind, "low": o.low, "high": o.high, "help": o.help,
               "describe": o.describe(), "default": None if o.manifest else o.default, "browser": JS in o.runtimes,
               "session": o.name in SESSION_OPTIONS, "recordsOnly": o.records_only, "compiled": o.js_instead is not None}
              for o in on_surface(OPENAI) if o.kind in ("int", "float", "text") and o.name not in ("num", "logprobs")]
    data = json.dumps(fields).replace("</", "<\\/")  # never closes the script element early
    page = PLAYGROUND.replace("</head>", f'<script type="application/json" id="options">{data}</script>\n</head>', 1)
    if browser_runtime_missing is None:
        return page
    return page.replace("<body", f'<body data-browser-off="{html.escape(browser_runtime_missing)}"', 1)


PLAYGROUND = resources.files("lstmgen.server").joinpath("static", "playground.html").read_text(encoding="utf-8")
