"""API keys: with keys set, every endpoint that answers with data needs ``Authorization: Bearer KEY`` (``/health``
and the pages that hold no data, ``PAGES``, do not); without keys the server listens on loopback only, unless told
``--insecure``."""

from __future__ import annotations

import hmac
import ipaddress
import json

from ..errors import PtuneError

OPEN_PATHS = frozenset({"/health"})
"""Answered without a key (a load balancer's health check carries none)."""
PAGES = frozenset({"/", "/playground", "/docs"})
"""Pages that load without a key: the playground and the Swagger UI shell hold no data, and send the key typed into
them with every call they make."""


def api_keys_from(options: list[str] | tuple[str, ...], env: str | None) -> list[str]:
    """The keys from ``--api-key`` options and the ``PTUNE_API_KEY`` value (comma-separated), in that order.

    Args:
        options (list[str]): the ``--api-key`` values.
        env (str | None): the environment variable's value.

    Returns:
        list[str]: the keys, without blanks and repeats.

    Example:
        >>> api_keys_from(["a"], "b, c,,a")
        ['a', 'b', 'c']
    """
    keys: list[str] = []
    for key in [*options, *(env or "").split(",")]:
        key = key.strip()
        if key and key not in keys:
            keys.append(key)
    return keys


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, keys: list[str], insecure: bool) -> None:
    """Refuse to listen beyond this machine without a key, unless ``insecure``.

    Args:
        host (str): the address to bind.
        keys (list[str]): the API keys (may be empty).
        insecure (bool): serve without a key on any address.

    Example:
        >>> check_bind("127.0.0.1", [], False)
        >>> check_bind("0.0.0.0", ["secret"], False)
    """
    if keys or insecure or is_loopback(host):
        return
    raise PtuneError(f"serve: refusing to listen on {host} without an API key: give --api-key KEY (or set "
                     "PTUNE_API_KEY), bind to 127.0.0.1, or pass --insecure to serve anyone who can connect")


def key_matches(header: str | None, keys: list[str]) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys`` as a bearer token (constant-time comparisons,
    every key compared).

    Example:
        >>> key_matches("Bearer s3cret", ["other", "s3cret"])
        True
    """
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


class RequireKey:
    """ASGI middleware: HTTP requests outside ``open_paths`` and ``open_prefixes`` without a valid bearer key get a
    401 in OpenAI's error shape.

    Args:
        app: the ASGI app to guard.
        keys (list[str]): the accepted keys (non-empty).
        open_paths (frozenset[str]): paths answered without a key (default: ``OPEN_PATHS``).
        open_prefixes (tuple[str, ...]): path prefixes answered without a key (static files holding no data).

    Example:
        >>> app.add_middleware(RequireKey, keys=["s3cret"], open_paths=OPEN_PATHS | PAGES)  # doctest: +SKIP
    """

    def __init__(self, app, keys: list[str], open_paths: frozenset[str] = OPEN_PATHS,
                 open_prefixes: tuple[str, ...] = ()):
        if not keys:
            raise ValueError("RequireKey needs at least one key")
        self.app = app
        self.keys = list(keys)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if key_matches(header, self.keys):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"message": "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
