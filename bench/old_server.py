"""The server `lstmgen serve` had before issue 14 (standard library, HTTP/1.0, one thread per
connection), kept verbatim for one purpose: `serve_compare` measures it against the new one.
Run it with `python -m lstmgen.bench.old_server MODEL --port PORT`.

Its original description follows.

`lstmgen serve`: a small HTTP/JSON server over the engine, with dynamic batching.

Standard library only (ThreadingHTTPServer): one thread per connection, and per model one
`batching.Scheduler` thread that runs every request's rows in one batched step loop. Endpoints:

    GET  /v1/health            {"status": "ok", "models": [...]}
    GET  /v1/models            {"models": [{"name", "level", "records", "precision", "dims", "defaults"}]}
    POST /v1/generate          {"model", "num", "prompt", "max_tokens", "temperature", "top_k", "top_p",
                                "min_p", "repetition_penalty", "repetition_window", "seed", "stop",
                                "novel", "stream"} -> {"model", "seed", "samples": [...]}
                               with "stream": true -> Server-Sent Events: `data: {"text": piece}` ...,
                               then `event: done` with {"text", "seed"}
    POST /v1/score             {"model", "text", "records", "streams"} -> the fields of `lstmgen score --json`

Parameters and their checks are those of Generator.generate / Generator.score (one definition);
bad input gets HTTP 400 with {"error": "<one line>"}.
"""

from __future__ import annotations

import inspect
import json
import queue
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lstmgen.errors import LstmgenError
from lstmgen.generator import Generator
from lstmgen.sampling import new_seed
from lstmgen.server.scheduler import Scheduler

GENERATE_FIELDS = set(inspect.signature(Generator.generate).parameters) - {"self"}
SCORE_FIELDS = {"text", "records", "streams"}


@dataclass
class Limits:
    max_body: int = 1 << 20  # bytes of a request body
    max_tokens: int = 2000  # per sample
    max_batch: int = 256  # rows in one model's step loop at once
    max_streams: int = 32  # concurrent streaming responses


class App:
    def __init__(self, models: dict[str, Generator], limits: Limits) -> None:
        self.models = models
        self.limits = limits
        self.schedulers = {name: Scheduler(g, limits.max_batch) for name, g in models.items()}
        self.streams = threading.BoundedSemaphore(limits.max_streams)

    def pick(self, body: dict) -> str:
        name = body.pop("model", None)
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models))
            raise LstmgenError(f"say which model: one of {', '.join(self.models)}")
        if name not in self.models:
            raise LstmgenError(f"no model named {name!r} here (serving: {', '.join(self.models)})")
        return name

    def generate_args(self, body: dict) -> dict:
        unknown = set(body) - GENERATE_FIELDS
        if unknown:
            raise LstmgenError(f"unknown field(s) {', '.join(sorted(unknown))} (known: model, stream, "
                               f"{', '.join(sorted(GENERATE_FIELDS))})")
        mt = body.get("max_tokens")
        if isinstance(mt, int) and not isinstance(mt, bool) and mt > self.limits.max_tokens:
            raise LstmgenError(f"max_tokens {mt} is over this server's limit of {self.limits.max_tokens}")
        if isinstance(body.get("stop"), str):
            body["stop"] = [body["stop"]]
        return body

    def close(self) -> None:
        for s in self.schedulers.values():
            s.close()


class Handler(BaseHTTPRequestHandler):
    server_version = "lstmgen"
    app: App  # set on the class made by make_server

    def log_message(self, fmt, *args):  # quiet by default; the CLI prints one line per request with -v
        if getattr(self.server, "verbose", False):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    # -- plumbing -------------------------------------------------------------------------------------
    def _json(self, status: int, obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _body(self) -> dict | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "send a JSON body with a Content-Length header")
            return None
        if int(length) > self.app.limits.max_body:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {self.app.limits.max_body} bytes")
            return None
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not valid JSON ({e})")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
            return None
        return body

    # -- endpoints -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path == "/v1/health":
            self._json(200, {"status": "ok", "models": list(self.app.models)})
        elif self.path == "/v1/models":
            self._json(200, {"models": [{"name": n, "level": g.tokenizer.level, "records": g.records,
                                         "precision": g.manifest.precision, "dims": asdict(g.manifest.dims),
                                         "defaults": asdict(g.manifest.defaults)} for n, g in self.app.models.items()]})
        else:
            self._error(404, f"no such endpoint: GET {self.path}")

    def do_POST(self) -> None:
        if self.path not in ("/v1/generate", "/v1/score"):
            self._error(404, f"no such endpoint: POST {self.path}")
            return
        body = self._body()
        if body is None:
            return
        try:
            name = self.app.pick(body)
            if self.path == "/v1/score":
                self._score(name, body)
            elif body.pop("stream", False) is True:
                self._stream(name, self.app.generate_args(body))
            else:
                self._generate(name, self.app.generate_args(body))
        except LstmgenError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))

    def _generate(self, name: str, args: dict) -> None:
        gen = self.app.models[name]
        if args.pop("novel", False):
            if args.get("seed") is None:
                args["seed"] = new_seed()  # chosen here so that the response can report it
            self._json(200, {"model": name, "seed": args["seed"], "samples": gen.generate(novel=True, **args)})
            return
        sched = self.app.schedulers[name]
        job = sched.submit(sched.job(**args))
        job.done.wait()
        if job.error is not None:
            raise job.error if isinstance(job.error, LstmgenError) else LstmgenError(str(job.error))
        self._json(200, {"model": name, "seed": job.seed, "samples": job.results()})

    def _stream(self, name: str, args: dict) -> None:
        if args.get("num", 1) != 1 or args.get("novel"):
            raise LstmgenError("stream one sample at a time: leave out num (or set it to 1) and novel")
        args.pop("num", None)
        args.pop("novel", None)
        if not self.app.streams.acquire(blocking=False):
            self._error(HTTPStatus.TOO_MANY_REQUESTS, f"over {self.app.limits.max_streams} concurrent streams; retry later")
            return
        try:
            pieces: queue.Queue = queue.Queue()
            sched = self.app.schedulers[name]
            job = sched.job(on_piece=lambda row, text, _: pieces.put(text), **args)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            sched.submit(job)
            try:
                while not (job.done.is_set() and pieces.empty()):
                    try:
                        text = pieces.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    self.wfile.write(f"data: {json.dumps({'text': text}, ensure_ascii=False)}\n\n".encode())
                    self.wfile.flush()
                final = {"text": job.results()[0], "seed": job.seed} if job.error is None else {"error": str(job.error)}
                self.wfile.write(f"event: done\ndata: {json.dumps(final, ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                job.cancelled = True  # frees its row at the next step
            self.close_connection = True
        finally:
            self.app.streams.release()

    def _score(self, name: str, body: dict) -> None:
        unknown = set(body) - SCORE_FIELDS
        if unknown or not isinstance(body.get("text"), str):
            raise LstmgenError(f"score takes a 'text' string and optionally {', '.join(sorted(SCORE_FIELDS - {'text'}))}"
                               + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
        gen = self.app.models[name]
        self._json(200, gen.score(body["text"], records=body.get("records"), streams=body.get("streams", 1)).to_dict())


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # socketserver's default of 5 drops bursts of connections (1 s SYN retries)


def make_server(models: dict[str, Generator], host: str = "127.0.0.1", port: int = 8088,
                limits: Limits | None = None) -> ThreadingHTTPServer:
    app = App(models, limits or Limits())
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = _Server((host, port), handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


def serve(server: ThreadingHTTPServer, log=print) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop accepting, let running requests finish, and return."""
    def shutdown(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    old = {s: signal.signal(s, shutdown) for s in (signal.SIGTERM, signal.SIGINT)}
    host, port = server.server_address[:2]
    log(f"serving {', '.join(server.app.models)} on http://{host}:{port} (Ctrl-C or SIGTERM to stop)")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.app.close()
        server.server_close()
        for s, h in old.items():
            signal.signal(s, h)
        log("stopped")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lstmgen.bench.old_server", description="the pre-issue-14 server, for benchmarks")
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8089, help="TCP port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=256, help="rows in the step loop (default %(default)s)")
    a = p.parse_args(argv)
    gen = Generator.load(a.model)
    server = make_server({gen.manifest.name or gen.folder.name: gen}, "127.0.0.1", a.port, Limits(max_batch=a.max_batch))
    serve(server, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
