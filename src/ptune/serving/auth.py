"""API keys: with keys set, every endpoint that answers with data needs ``Authorization: Bearer KEY`` (``/health``
and the pages that hold no data, ``PAGES``, do not; ``/health`` then shows its counters only to a key); without keys
the server listens on loopback only, unless told ``--insecure``. Keys come from ``--api-key``, ``--api-key-file`` and
``PTUNE_API_KEY``; one that no request could carry is refused at start."""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path

from ..errors import PtuneError

OPEN_PATHS = frozenset({"/health"})
"""Answered without a key (a load balancer's health check carries none)."""
PAGES = frozenset({"/", "/playground", "/docs"})
"""Pages that load without a key: the playground and the Swagger UI shell hold no data, and send the key typed into
them with every call they make."""


MIN_KEY_CHARS = 8
"""Shorter keys are refused: a server answers as many guesses as it is sent."""


def check_key(key: str, where: str) -> str:
    """``key`` if a request can carry it in ``Authorization: Bearer KEY``: at least ``MIN_KEY_CHARS`` printable
    ASCII characters, no whitespace; else a PtuneError naming ``where`` (never the key).

    Args:
        key (str): the key.
        where (str): where it came from, e.g. ``line 3 of keys.txt``.

    Returns:
        str: the key.

    Example:
        >>> check_key("s3cret-key", "--api-key")
        's3cret-key'
    """
    if any(ord(c) > 0x7E for c in key):
        why = "holds a non-ASCII character (HTTP headers carry ASCII)"
    elif any(c.isspace() for c in key):
        why = "holds whitespace"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        why = "holds a control character"
    elif len(key) < MIN_KEY_CHARS:
        why = f"is shorter than {MIN_KEY_CHARS} characters"
    else:
        return key
    raise PtuneError(f"serve: the API key from {where} {why}, so no request could use it; give keys of printable "
                     f"ASCII characters without spaces, at least {MIN_KEY_CHARS} long")


def read_key_file(path: str | Path) -> list[tuple[str, str]]:
    """The keys in ``path``, one per line (surrounding whitespace dropped; blank lines and lines starting with ``#``
    skipped), each with where it came from.

    Args:
        path (str | Path): the key file.

    Returns:
        list[tuple[str, str]]: (key, ``line N of PATH``) pairs.

    Example:
        >>> read_key_file("keys.txt")  # doctest: +SKIP
        [('first-key-1234', 'line 2 of keys.txt')]
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise PtuneError(f"serve: cannot read the --api-key-file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PtuneError(f"serve: the --api-key-file {path} is not UTF-8 text") from None
    found = [(line.strip(), f"line {n} of {path}") for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith("#")]
    if not found:
        raise PtuneError(f"serve: the --api-key-file {path} holds no key (one key per line; # starts a comment)")
    return found


def api_keys_from(options: list[str] | tuple[str, ...], env: str | None,
                  key_file: str | Path | None = None) -> list[str]:
    """The keys from ``--api-key`` options, the ``--api-key-file`` and the ``PTUNE_API_KEY`` value
    (comma-separated), in that order, each checked with ``check_key``.

    Args:
        options (list[str]): the ``--api-key`` values.
        env (str | None): the environment variable's value.
        key_file (str | Path | None): the key file, if any (see ``read_key_file``).

    Returns:
        list[str]: the keys, without blanks and repeats.

    Example:
        >>> api_keys_from(["first-key"], "second-key, third-key,,first-key")
        ['first-key', 'second-key', 'third-key']
    """
    given = [(key.strip(), "--api-key") for key in options]
    given += read_key_file(key_file) if key_file is not None else []
    given += [(key.strip(), "PTUNE_API_KEY") for key in (env or "").split(",")]
    keys: list[str] = []
    for key, where in given:
        if key and key not in keys:
            keys.append(check_key(key, where))
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
    raise PtuneError(f"serve: refusing to listen on {host} without an API key: give --api-key-file PATH (or set "
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


KEY_VALID = "key_valid"
"""Set by ``RequireKey`` on every request's state (``request.state.key_valid``): whether it carried a valid key."""


class RequireKey:
    """ASGI middleware: HTTP requests outside ``open_paths`` and ``open_prefixes`` without a valid bearer key get a
    401 in OpenAI's error shape; every request's ``request.state.key_valid`` says whether it carried one.

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
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        valid = key_matches(headers.get(b"authorization", b"").decode("latin-1"), self.keys)
        scope.setdefault("state", {})[KEY_VALID] = valid
        if valid or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"message": "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
