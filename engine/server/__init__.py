"""`lstmgen serve`: the engine over HTTP (Starlette on uvicorn), with dynamic batching.

Needs the `serve` extra; the engine never imports this package. `make_server` binds and builds a
server, `serve` runs it until SIGTERM or Ctrl-C.
"""

from .app import Server, make_app, make_server, serve
from .http import Limits

__all__ = ["Limits", "Server", "make_app", "make_server", "serve"]
