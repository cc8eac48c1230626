"""The connection-level guards of `lstmgen serve`: uvicorn's HTTP/1.1 (h11) protocol with the two it lacks.

uvicorn closes a keep-alive connection that stays idle after a response, but it arms no timer before
the first request, and it cancels its timer as soon as any byte arrives. A client that opens a
connection, or sends a request line and one header, and then goes silent would hold its connection
(and its memory) for good. `GuardedH11Protocol` gives every request head a deadline, armed when the
connection opens and again after each response, and caps the number of open connections: past the
cap a new connection gets `503` with `Retry-After` and is closed.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

REFUSED_BODY = b'{"error": "too many open connections; retry in a second"}\n'
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(REFUSED_BODY), REFUSED_BODY))


def guarded_protocol(max_connections: int, head_timeout: float) -> type[H11Protocol]:
    """The protocol class for uvicorn's `http=` setting, with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"max_connections": max_connections,
                                                              "head_timeout": head_timeout})


class GuardedH11Protocol(H11Protocol):
    max_connections = 4096  # open connections of this server, this one included
    head_timeout = 10.0  # seconds a client has to send a whole request head

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.head_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(REFUSED)
            transport.close()
            return
        self.arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a whole request head arrived
            self.disarm_head_deadline()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        self.arm_head_deadline()
        super().on_response_complete()  # may start a pipelined request at once
        if self.cycle is not cycle or self.transport.is_closing():
            self.disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_head_deadline()
        super().connection_lost(exc)

    def arm_head_deadline(self) -> None:
        self.disarm_head_deadline()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.drop_if_no_request)

    def disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def drop_if_no_request(self) -> None:
        self.head_deadline = None
        running = self.cycle is not None and not self.cycle.response_complete
        if not running and not self.transport.is_closing():
            self.transport.close()
