"""`lstmgen serve`: the engine over HTTP (Starlette on uvicorn), with dynamic batching.

Needs the `serve` extra; the engine's core never imports this package. One module per role:

    app.py            the route table and the app built from it
    native.py         /v1/generate, /v1/next, /v1/score, /v1/health, /metrics
    openai_compat.py  /v1/completions, /v1/models (OpenAI's shapes)
    playground.py     the page's needs: /v1/inspect and the files of "run in my browser"
    schemas.py        declared request and response bodies (pydantic); openapi.py writes /openapi.json
    http.py           reading bodies, errors in the native and OpenAI shapes, Server-Sent Events
    limits.py         the server's limits and their flags; connections.py guards connections
    operations.py     API key, request bound, metrics, access log
    served.py         the served models; scheduler.py their batched step loops; bridge.py to asyncio
    process.py        the socket, uvicorn, signals

`make_server` binds and builds a server, `serve` runs it until SIGTERM or Ctrl-C. Importing this
package is cheap: the HTTP stack loads only when one of those names is used, so that
`lstmgen.server.limits` (the CLI's flags) needs no `serve` extra.
"""

from __future__ import annotations

from .limits import Limits

__all__ = ["Limits", "Server", "make_app", "make_server", "serve"]


def __getattr__(name: str):
    if name in ("Server", "make_server", "serve"):
        from . import process

        return getattr(process, name)
    if name == "make_app":
        from .app import make_app

        return make_app
    raise AttributeError(f"module 'lstmgen.server' has no attribute {name!r}")
