"""A server on a background thread, for tests and the load script: ``with ServerThread(app) as url: ...``."""

from __future__ import annotations

import threading
import time

from .server import Connections, uvicorn_config


class ServerThread:
    """Run an ASGI app with uvicorn on a background thread until the ``with`` block ends.

    Args:
        app: the ASGI app (e.g. ``create_app(...)``).
        host (str): the address to bind.
        port (int): 0 picks a free port.
        timeout (float): seconds to wait for the server to start, and to stop.
        connections (Connections | None): the connection limits (default ``Connections()``, as ``ptune serve``).

    Example:
        >>> with ServerThread(create_app({"topics": "runs/topics"})) as url:  # doctest: +SKIP
        ...     httpx.get(f"{url}/health").json()["status"]
        'ok'
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0,
                 connections: Connections | None = None):
        import uvicorn

        self.config = uvicorn_config(app, host, port, connections, log_level="warning")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout = timeout

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout)
