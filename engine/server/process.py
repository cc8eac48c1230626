"""The server process: a bound socket, uvicorn serving the app on it with the connection guard, signal
handling (SIGTERM or Ctrl-C: stop accepting, let running requests finish, exit) and the start-up
checks of `lstmgen serve` (open-file limit, a warning when serving beyond loopback without a key).
"""

from __future__ import annotations

import ipaddress
import resource
import signal
import socket
import threading
from typing import Callable

import uvicorn

from ..generator import Generator
from .app import make_app
from .connections import guarded_protocol
from .limits import Limits
from .served import Models

SHUTDOWN_GRACE_SECONDS = 30  # running requests get this long to finish after SIGTERM


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
                access_log: Callable[[str], None] | None = None, default_model: str | None = None) -> Server:
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
    return Server(Models(generators, limits or Limits(), default_model), sock, api_key=api_key, cors_origins=cors_origins,
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
