"""`lstmgen serve`: the engine over HTTP/1.1 (Starlette on uvicorn), with dynamic batching.

Per model one `batching.Scheduler` thread runs every request's rows in one batched step loop; the
event loop hands jobs to it and gets pieces and ends back without blocking (`job_bridge`). Endpoints:

    GET  /                     the playground page
    GET  /v1/health            {"status": "ok", "models": [...]}             (no API key needed)
    GET  /v1/models            OpenAI's model list; each model's details under "lstmgen"
    GET  /v1/models/{model}    one of those
    POST /v1/completions       OpenAI-compatible completions, streamed or not (openai_api)
    POST /v1/generate          {"model", "num", "prompt", "max_tokens", "temperature", "top_k", "top_p",
                                "min_p", "repetition_penalty", "repetition_window", "seed", "stop",
                                "novel", "allow_unk", "stream"} -> {"model", "seed", "samples": [...]}
                               with "stream": true -> Server-Sent Events: `data: {"text": piece}` ...,
                               then `event: done` with {"text", "seed"}
    POST /v1/score             {"model", "text", "records", "streams"} -> the fields of `lstmgen score --json`
    POST /v1/inspect           the playground's inspect view; with the files of its "run in my browser"
                               switch (/js/..., /artifacts/{model}/{file}) in `playground`
    GET  /metrics              Prometheus text format

Parameters and their checks are those of Generator.generate / Generator.score (one definition); bad
input gets 400 with one line. Connection-level limits are in `http_guard`, the API key, request bound,
metrics and access log in `serve_ops`.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import ipaddress
import resource
import signal
import socket
import threading
from importlib import resources
from typing import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import openai_compat
from . import playground as pg
from ..errors import LstmgenError
from ..generator import Generator
from .connections import guarded_protocol
from .bridge import JobRun, finish_or_disconnect
from ..sampling import new_seed
from .operations import Gate, Metrics
from .http import (EventStream, HttpError, Limits, Models, count_tokens, error_response, note_tokens, prompt_text,
                      read_json, sse)



GENERATE_FIELDS = set(inspect.signature(Generator.generate).parameters) - {"self"}
SCORE_FIELDS = {"text", "records", "streams"}
SHUTDOWN_GRACE_SECONDS = 30  # running requests get this long to finish after SIGTERM


# -- native endpoints ----------------------------------------------------------------------------------
def generate_args(models: Models, body: dict) -> dict:
    unknown = set(body) - GENERATE_FIELDS
    if unknown:
        raise LstmgenError(f"unknown field(s) {', '.join(sorted(unknown))} (known: model, stream, "
                           f"{', '.join(sorted(GENERATE_FIELDS))})")
    models.check_max_tokens(body.get("max_tokens"))
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    if body.get("seed") is None:
        body["seed"] = new_seed()  # chosen here so that the response can report it
    return body


async def generate(request: Request) -> Response:
    models: Models = request.app.state.models
    body = await read_json(request, models.limits)
    name = models.pick(body.pop("model", None))
    stream = body.pop("stream", False) is True
    args = generate_args(models, body)
    gen = models.generators[name]
    if stream:
        return generate_stream(request, models, name, args)
    scheduler = models.schedulers[name]
    runs = [JobRun(scheduler, job=job) for job in scheduler.jobs(**args)]  # one per prompt; checks the arguments
    if not await finish_or_disconnect(runs, request.receive):
        return Response(status_code=499)
    if args.get("logprobs") is not None:
        samples = [[s.to_dict() for s in run.samples()] for run in runs]
    else:
        samples = [run.results() for run in runs]
    prompts = args.get("prompts") if args.get("prompts") is not None else [args.get("prompt")]
    echo = args.get("echo", True)
    skips = [echoed_prompt_length(gen, p, echo) for p in prompts]  # once per prompt, not per sample
    note_tokens(request, name, sum(count_tokens(gen, (s if isinstance(s, str) else s["text"])[skip:])
                                   for skip, per_prompt in zip(skips, samples) for s in per_prompt))
    return JSONResponse({"model": name, "seed": args["seed"],
                         "samples": samples if args.get("prompts") is not None else samples[0]})


def echoed_prompt_length(gen: Generator, prompt: str | None, echo: bool = True) -> int:
    """Characters at the start of a sample that are the prompt written back (metrics count the rest)."""
    return len(prompt_text(gen, prompt)[1]) if echo else 0


def generate_stream(request: Request, models: Models, name: str, args: dict) -> Response:
    if args.get("num", 1) != 1 or args.get("novel"):
        raise LstmgenError("stream one sample at a time: leave out num (or set it to 1) and novel")
    if args.get("prompts") is not None:
        raise LstmgenError("stream one prompt at a time: send 'prompt', not 'prompts'")
    args.pop("num", None)
    args.pop("novel", None)
    models.open_stream()
    try:
        run = JobRun(models.schedulers[name], stream=True, **args)
    except BaseException:
        models.close_stream()
        raise

    async def events():
        while True:
            _, row, text = await run.queue.get()
            if row is None:
                break
            yield sse({"text": text})
        try:
            final = {"text": run.results()[0], "seed": args["seed"]}
            if args.get("logprobs") is not None:  # streamed pieces carry text only; the end carries the figures
                final.update(run.samples()[0].to_dict())
        except LstmgenError as e:
            final = {"error": str(e)}
        else:
            gen = models.generators[name]
            skip = echoed_prompt_length(gen, args.get("prompt"), args.get("echo", True))
            note_tokens(request, name, count_tokens(gen, final["text"][skip:]))
        yield sse(final, event="done")

    def on_close() -> None:
        run.cancel()
        models.close_stream()

    return EventStream(events(), on_close)


async def score(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    body = await read_json(request, models.limits)
    name = models.pick(body.pop("model", None))
    unknown = set(body) - SCORE_FIELDS
    if unknown or not isinstance(body.get("text"), str):
        raise LstmgenError(f"score takes a 'text' string and optionally {', '.join(sorted(SCORE_FIELDS - {'text'}))}"
                           + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    gen = models.generators[name]
    result = await run_in_threadpool(lambda: gen.score(body["text"], records=body.get("records"),
                                                       streams=body.get("streams", 1)))
    return JSONResponse(result.to_dict())


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "models": list(request.app.state.models.generators)})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def playground(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.playground_page)


def playground_page(browser_runtime_missing: str | None) -> str:
    """The page, telling it why "run in my browser" is off here when it is (fixed for a server's life)."""
    if browser_runtime_missing is None:
        return PLAYGROUND
    return PLAYGROUND.replace("<body", f'<body data-browser-off="{html.escape(browser_runtime_missing)}"', 1)


PLAYGROUND = resources.files("lstmgen.server").joinpath("static", "playground.html").read_text(encoding="utf-8")


# -- the app -------------------------------------------------------------------------------------------
async def on_http_error(request: Request, e: HttpError) -> Response:
    return error_response(request.url.path, e.status, str(e), e.retry_after)


async def on_bad_input(request: Request, e: LstmgenError) -> Response:
    return error_response(request.url.path, 400, str(e))


def make_app(models: Models, *, api_key: str | None = None, cors_origins: list[str] = (),
             access_log: Callable[[str], None] | None = None, connections: Callable[[], int] = lambda: 0) -> Starlette:
    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/models", openai_compat.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_compat.get_model, methods=["GET"]),
        Route("/v1/completions", openai_compat.completions, methods=["POST"]),
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/score", score, methods=["POST"]),
        Route("/v1/inspect", pg.inspect_endpoint, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/js/ort/{file}", pg.ort_file, methods=["GET"]),
        Route("/js/{file}", pg.js_file, methods=["GET"]),
        Route("/artifacts/{model}/{file}", pg.artifact_file, methods=["GET"]),
    ]
    stats = Metrics(models, connections)
    middleware = []
    if cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"], max_age=600))
    middleware.append(Middleware(Gate, models=models, metrics=stats, api_key=api_key, access_log=access_log))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HttpError: on_http_error, LstmgenError: on_bad_input, 404: not_found,
                                        405: not_allowed})
    app.state.models = models
    app.state.metrics = stats
    app.state.playground_page = playground_page(pg.browser_runtime_missing())
    app.state.inspect_slots = asyncio.Semaphore(pg.INSPECTIONS_AT_ONCE)
    return app


async def not_found(request: Request, e) -> Response:
    return error_response(request.url.path, 404, f"no such endpoint: {request.method} {request.url.path}")


async def not_allowed(request: Request, e) -> Response:
    return error_response(request.url.path, 405, f"{request.method} is not allowed on {request.url.path}")


class UvicornServer(uvicorn.Server):
    """uvicorn's server, telling when it is up (its signal handlers are in place by then)."""

    on_ready: Callable[[], None] = staticmethod(lambda: None)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_ready()


class Server:
    """A bound socket and the uvicorn server for it. `run()` blocks until SIGTERM/Ctrl-C (main thread)
    or `stop()`, lets running requests finish, then stops the models' step loops."""

    def __init__(self, models: Models, sock: socket.socket, *, api_key: str | None = None, cors_origins: list[str] = (),
                 access_log: Callable[[str], None] | None = None) -> None:
        self.models = models
        self.socket = sock
        self.api_key = api_key
        limits = models.limits
        self.app = make_app(models, api_key=api_key, cors_origins=cors_origins, access_log=access_log,
                            connections=lambda: len(self.uvicorn.server_state.connections))
        config = uvicorn.Config(self.app, http=guarded_protocol(limits.max_connections, limits.client_timeout),
                                loop="asyncio", ws="none", lifespan="off", log_config=None, access_log=False,
                                timeout_keep_alive=max(1, round(limits.client_timeout)),
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS, backlog=2048,
                                h11_max_incomplete_event_size=16 * 1024, server_header=False)
        self.uvicorn = UvicornServer(config)

    @property
    def host(self) -> str:
        return self.socket.getsockname()[0]

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def run(self, on_ready: Callable[[], None] = lambda: None) -> None:
        """Serve; `on_ready` is called once requests are answered and SIGTERM is handled."""
        # uvicorn re-raises the stop signal to the handler it found once it has shut down; a quiet
        # one there lets the process finish its own way (close the models, exit 0).
        in_main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        self.uvicorn.on_ready = on_ready
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.models.close()
            self.socket.close()

    def stop(self) -> None:
        self.uvicorn.should_exit = True


def make_server(generators: dict[str, Generator], host: str = "127.0.0.1", port: int = 8088, limits: Limits | None = None,
                *, api_key: str | None = None, cors_origins: list[str] = (),
                access_log: Callable[[str], None] | None = None) -> Server:
    """Bind the socket now (so that a taken port is an error here) and build the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # keep-alive response's second write waits for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections made before uvicorn has started wait in the backlog
    return Server(Models(generators, limits or Limits()), sock, api_key=api_key, cors_origins=cors_origins,
                  access_log=access_log)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_open_file_limit(wanted: int, log) -> None:
    """Each connection is a file descriptor: lift the soft limit (often 1024) towards --max-connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        log(f"warning: the open-file limit ({hard}) is below --max-connections plus headroom ({wanted});"
            " raise it (ulimit -n) or lower --max-connections")


def serve(server: Server, log=print) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop accepting, let running requests finish, and return."""
    raise_open_file_limit(server.models.limits.max_connections + 256, log)
    if not is_loopback(server.host) and not server.api_key:
        log(f"warning: serving on {server.host} without an API key: anyone who can reach this port can use it"
            " (set --api-key or LSTMGEN_API_KEY)")
    server.run(on_ready=lambda: log(f"serving {', '.join(server.models.generators)} on {server.url}"
                                    " (Ctrl-C or SIGTERM to stop)"))
    log("stopped")
