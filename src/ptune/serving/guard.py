"""What a web page open in the operator's browser cannot make the server do.

A server without API keys serves whoever can connect to it: on loopback, the programs of this machine. The
operator's browser is one of them, and the pages open in it can send requests two ways:

- Cross-site requests. A page may send a POST whose body is ``text/plain``, form data, or has no ``Content-Type``
  without asking the server first (no CORS preflight); it cannot read the answer, but the request runs. So every
  body must be sent as ``Content-Type: application/json`` (``require_json``, on every server, keyed or not), a type
  a foreign page may only send after a preflight this server never grants; and, without keys, a request that
  carries an ``Origin`` other than the server's own is refused (403).
- DNS rebinding. A page of ``attacker.example`` points its name at 127.0.0.1; its requests then count as its own
  origin's, so it may read the answers, and they reach the server with ``Host: attacker.example:PORT``. So, without
  keys, only the ``Host`` names the server is known by are served (421): loopback ones, and ``--allowed-host``.

With keys neither check runs: a browser never adds an ``Authorization: Bearer`` header by itself, and a page of
another origin cannot read the tab's session storage, where the playground keeps the key.
"""

from __future__ import annotations

import ipaddress

from fastapi.responses import JSONResponse

from ..errors import PtuneError
from .openai import openai_error
from .protocol import RequestError

JSON_TYPE = "application/json"
ANY_HOST = "*"
ANY_ADDRESS = frozenset({"0.0.0.0", "::"})
"""As an allowed host: any IP address (the wildcard addresses a server binds to listen on every interface)."""
OPENAI_PREFIXES = ("/v1/models", "/v1/completions", "/v1/chat/")
"""Paths whose errors take OpenAI's shape."""
DEFAULT_PORTS = {"http": 80, "https": 443}


def require_json(headers) -> None:
    """Refuse a body that is not sent as ``application/json`` (parameters such as ``; charset=utf-8`` allowed).

    Args:
        headers: the request's headers (a mapping with case-insensitive keys, e.g. starlette's ``Headers``).

    Raises:
        RequestError: 415 naming the type sent.

    Example:
        >>> require_json({"content-type": "application/json; charset=utf-8"})  # taken
        >>> require_json({"content-type": "text/plain"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ptune.serving.protocol.RequestError: the body must be JSON sent with 'Content-Type: application/json', not ...
    """
    sent = headers.get("content-type")
    if sent is not None and sent.split(";", 1)[0].strip().lower() == JSON_TYPE:
        return
    what = f"not {sent[:100]!r}" if sent else "and no Content-Type was sent"
    raise RequestError(415, f"the body must be JSON sent with 'Content-Type: {JSON_TYPE}', {what}")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` from a ``Host`` header or an allowed-host entry, the host lower-cased and without IPv6
    brackets; None if it is malformed.

    Example:
        >>> split_host("[::1]:8000"), split_host("LocalHost"), split_host("a:b")
        (('::1', 8000), ('localhost', None), None)
    """
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 address
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port = value.partition(":")
        port = port if colon else None
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    if not host or any(c in host for c in "/@ \t\\"):
        return None
    return host, int(port) if port is not None else None


def as_address(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_allowed_hosts(entries) -> frozenset[str]:
    """The ``--allowed-host`` entries, checked: names or addresses (any port), ``0.0.0.0`` or ``::`` for any
    address, ``*`` for any host.

    Args:
        entries (Iterable[str]): what the operator gave.

    Returns:
        frozenset[str]: the entries, lower-cased, IPv6 addresses without brackets.

    Example:
        >>> sorted(parse_allowed_hosts(["Ptune.Internal", "[fe80::1]", "*"]))
        ['*', 'fe80::1', 'ptune.internal']
    """
    allowed = set()
    for entry in entries:
        entry = entry.strip()
        address = as_address(entry.strip("[]"))
        if entry == ANY_HOST or address is not None:
            allowed.add(ANY_HOST if address is None else str(address))
            continue
        parts = split_host(entry)
        if parts is None or parts[1] is not None:
            raise PtuneError(f"serve: --allowed-host {entry[:100]!r} is not a host name or address (give the name "
                             "alone, without a scheme, port or path)")
        allowed.add(parts[0])
    return frozenset(allowed)


class BrowserGuard:
    """ASGI middleware for a server without keys: a request whose ``Host`` is not one the server is known by gets
    421, one whose ``Origin`` is not the server's own gets 403, each with a JSON error naming the rule.

    Args:
        app: the ASGI app to guard.
        allowed_hosts (Iterable[str]): ``Host`` names served besides the loopback ones (``localhost``,
            ``127.x.x.x``, ``[::1]``), as ``parse_allowed_hosts`` takes them.

    Example:
        >>> app.add_middleware(BrowserGuard, allowed_hosts=["ptune.internal"])  # doctest: +SKIP
    """

    def __init__(self, app, allowed_hosts=()):
        self.app = app
        self.allowed = parse_allowed_hosts(allowed_hosts)

    def host_allowed(self, host: str) -> bool:
        address = as_address(host)
        if host == "localhost" or (address is not None and address.is_loopback):
            return True
        if ANY_HOST in self.allowed or host in self.allowed:
            return True
        return address is not None and (bool(self.allowed & ANY_ADDRESS) or str(address) in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host"), headers.get("origin")
        refusal = self.check_host(host) if host is not None else None
        if refusal is None and origin is not None:
            refusal = self.check_origin(origin, host, scope.get("scheme", "http"))
        if refusal is None:
            return await self.app(scope, receive, send)
        status, code, message = refusal
        if scope["path"].startswith(OPENAI_PREFIXES):
            response = openai_error(status, message, code=code)
        else:
            response = JSONResponse({"error": message}, status_code=status)
        await response(scope, receive, send)

    def check_host(self, host: str) -> tuple[int, str, str] | None:
        parts = split_host(host)
        if parts is not None and self.host_allowed(parts[0]):
            return None
        return (421, "host_not_allowed", f"this server does not answer to Host {host[:100]!r}: without an API key it "
                "serves only loopback names (localhost, 127.0.0.1, [::1]) and those given with --allowed-host, so "
                "that web pages of other sites cannot reach it through DNS rebinding; add --allowed-host NAME, or "
                "require a key (--api-key-file PATH)")

    def check_origin(self, origin: str, host: str | None, scheme: str) -> tuple[int, str, str] | None:
        if host is not None and same_origin(origin, f"{scheme}://{host}"):
            return None
        return (403, "origin_not_allowed", f"a request from the web page of {origin[:100]!r} is refused: without an "
                "API key this server answers only its own pages, so that other sites open in a browser cannot use "
                "it; call it from outside a browser, or require a key (--api-key-file PATH)")


def same_origin(a: str, b: str) -> bool:
    """Whether two origins (``scheme://host[:port]``) are the same, a default port written or not.

    Example:
        >>> same_origin("http://localhost", "http://LOCALHOST:80"), same_origin("http://a:1", "http://a:2")
        (True, False)
    """
    return normal_origin(a) is not None and normal_origin(a) == normal_origin(b)


def normal_origin(origin: str) -> tuple[str, str, int] | None:
    scheme, sep, rest = origin.strip().lower().partition("://")
    parts = split_host(rest) if sep and scheme in DEFAULT_PORTS else None
    if parts is None:
        return None  # "null" (a sandboxed frame, a file), or something no browser sends
    host, port = parts
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]
