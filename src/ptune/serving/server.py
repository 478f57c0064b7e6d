"""How the server treats connections, built in one place for ``ptune serve`` and ``ServerThread``: uvicorn's
concurrency limit and keep-alive timeout, and a deadline on request headers that uvicorn lacks.

Without the deadline, a socket that opens and never finishes its headers stays open for good; enough of them use up
the process's file descriptors and then ``/health`` fails too. ``HeaderDeadlineProtocol`` is uvicorn's h11
protocol with a timer: armed when a connection opens (and when a kept-alive connection receives the first bytes of
its next request), cancelled once the request's headers are in; when it fires, the connection gets a 408 and is
closed. The same timer covers the rest of a body the app answered without reading (a 401, 404 or 413, or a route
that takes no body): the client has as long to finish sending it, else the connection is closed. The body a route
reads has its own deadline, in the app (``state.read_json``, ``Limits.body_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass
class Connections:
    """What the server allows a connection (``ptune serve``'s ``--limit-concurrency``, ``--keep-alive-timeout``,
    ``--header-timeout``).

    Example:
        >>> Connections(header_timeout=2).limit_concurrency
        256
    """

    limit_concurrency: int | None = 256
    """Open connections (and requests in progress) beyond which a new request gets 503 at once (None: no limit).
    256 stays well under the usual 1,024 open files a process may hold, and is more than one model thread can serve
    together: the 256th request already waits behind 255 others' rows."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle kept-alive connection stays open after its last answer."""
    header_timeout: float = 10.0
    """Seconds a connection has to send a request's complete headers; then 408 and closed."""


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on request headers and on the rest of a body left unread.

    Args:
        *args: uvicorn's protocol arguments (``config``, ``server_state``, ``app_state``).
        header_timeout (float): seconds from the connection opening (or, on a kept-alive connection, from the next
            request's first byte) to its complete headers; and from an answer to the end of a body it did not read.
        **kwargs: uvicorn's protocol arguments.

    Example:
        >>> protocol = functools.partial(HeaderDeadlineProtocol, header_timeout=10.0)
        >>> config = uvicorn.Config(app, http=protocol)  # doctest: +SKIP
    """

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_timer = self.loop.call_later(self.header_timeout, self.deadline_passed)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch_headers()  # pipelined bytes of the next request may be waiting

    def connection_lost(self, exc) -> None:
        self.stop_header_timer()
        super().connection_lost(exc)

    def watch_headers(self) -> None:
        """Keep the deadline while part of a request's headers is in, or while the client is still sending a body
        that was answered unread; drop it otherwise (between requests on a kept-alive connection uvicorn's
        keep-alive timeout governs, and a body a route reads has the app's deadline)."""
        conn = self.conn
        headers_coming = conn.their_state is h11.IDLE and conn.trailing_data[0]
        answered_unread = conn.our_state is h11.DONE and conn.their_state is h11.SEND_BODY
        if headers_coming or answered_unread:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(self.header_timeout, self.deadline_passed)
        else:
            self.stop_header_timer()

    def stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def deadline_passed(self) -> None:
        """Headers late: 408 and close (written as bytes: h11 sends no answer before it has a request). A body
        answered unread still coming: close."""
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()
            return
        if self.conn.their_state is not h11.IDLE:
            return
        body = json.dumps({"error": f"the request headers did not arrive within {self.header_timeout:g} s"})
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body.encode()))
        self.transport.close()
        self.logger.info("%s: no complete request headers within %g s; answered 408 and closed",
                         self.client, self.header_timeout)


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, connections: Connections | None = None,
                   log_level: str = "info") -> uvicorn.Config:
    """The uvicorn config ``ptune serve`` runs ``app`` with: the h11 protocol with the header deadline (whatever
    uvicorn would pick otherwise), the concurrency limit, the keep-alive timeout, no WebSockets (no route uses them).

    Args:
        app: the ASGI app (``create_app(...)``).
        host (str): the address to bind.
        port (int): the port (0 picks a free one).
        connections (Connections | None): the connection limits (default ``Connections()``).
        log_level (str): uvicorn's log level.

    Returns:
        uvicorn.Config: pass it to ``uvicorn.Server``.

    Example:
        >>> uvicorn.Server(uvicorn_config(create_app({"topics": "runs/topics"}))).run()  # doctest: +SKIP
    """
    connections = connections or Connections()
    protocol = functools.partial(HeaderDeadlineProtocol, header_timeout=connections.header_timeout)
    return uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", lifespan="on", log_level=log_level,
                          limit_concurrency=connections.limit_concurrency,
                          timeout_keep_alive=connections.keep_alive_timeout)
