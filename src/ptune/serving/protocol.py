"""What a client may send to the native endpoints, checked before anything reaches the model: the limits, the
request error (an HTTP status and a message naming what is wrong), ``check_request`` and the OpenAPI schemas of the
request bodies and answers. Pure functions: no model, no server."""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

NAME_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9_.\-]{1,64}$")
"""Task names: safe in a URL path and a log line, and never ``.`` or ``..`` (dots only). Match it with
``valid_name``: ``NAME_RE.match`` alone would take a name ending in a newline (``$`` matches before one)."""
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not dots only"
"""``NAME_RE`` in words, for error messages."""

WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""The characters ``str.strip`` removes, as a regex character class body (``\\s`` differs between dialects)."""
NOT_BLANK = f"[^{WHITESPACE}]"
"""A pattern found in exactly the texts that hold more than whitespace (the request checks' "empty")."""


@dataclass
class Limits:
    """What one request may ask for, and how the batcher collects requests.

    Example:
        >>> Limits(max_rows=8).max_field_chars
        4000
    """

    max_rows: int = 64
    """Rows per request."""
    max_field_chars: int = 4000
    """Characters per field value (longer inputs are refused, not truncated silently)."""
    max_body_bytes: int = 1 << 20
    max_new_tokens: int = 128
    batch_wait_ms: float = 5.0
    """How long the batcher waits for more requests after the first one arrives."""
    max_batch_rows: int = 256
    """Stop collecting once this many rows are queued."""
    mix_tasks: bool = True
    """Score classification rows of different tasks in the same model calls (each row splices its own task's
    prompt table); off: one call per task, each with its task's cached prefix."""
    max_tasks: int = 1000
    """Tasks served at once: ``POST /v1/tasks`` is refused (409) when this many are served (tasks loaded at start
    count, and are never refused)."""
    max_queue: int = 1024
    """Rows waiting for the model, beyond which a request is refused at once (503 with ``Retry-After``) rather than
    queued: 16 requests of 64 rows; a request arriving at an empty queue is always taken."""
    body_timeout: float = 30.0
    """Seconds a request's body has to arrive, from when the route starts reading it; then 408."""
    max_streams: int = 8
    """Streamed generations open at once; one more is refused (429 with ``Retry-After``)."""
    stream_slice_tokens: int = 4
    """Tokens a streamed generation decodes per turn before queued batches get the model."""
    stream_batch: bool = False
    """Decode the open streams together, one model call per token for all of them (faster with several streams);
    off, they take turns, and each stream's text is exactly the whole answer's, which a batch's rounding can change
    where the top two tokens nearly tie (bfloat16)."""


def valid_name(name) -> bool:
    """Whether ``name`` is a task name: a string that ``NAME_RE`` matches in full.

    Args:
        name: what a client or the command line gave.

    Returns:
        bool: True for a usable name.

    Example:
        >>> [valid_name(n) for n in ("topics", "v1.2", ".", "..", "a\\n", "a b")]
        [True, True, False, False, False, False]
    """
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


NAMES_SHOWN = 10
"""How many task names an error about an unknown task lists (a server may hold a thousand)."""


def some_names(names, listing: str) -> str:
    """The first ``NAMES_SHOWN`` of ``names`` in name order, and how many more there are, pointing at ``listing``
    (the endpoint that lists them all).

    Args:
        names (Iterable[str]): the task names.
        listing (str): e.g. ``"GET /v1/tasks"``.

    Returns:
        str: a phrase for an error message.

    Example:
        >>> some_names([f"t{i:02d}" for i in range(12)], "GET /v1/tasks")
        't00, t01, t02, t03, t04, t05, t06, t07, t08, t09 and 2 more (GET /v1/tasks lists them all)'
        >>> some_names(["b", "a"], "GET /v1/tasks")
        'a, b'
    """
    names = list(names)
    shown = ", ".join(heapq.nsmallest(NAMES_SHOWN, names))
    if len(names) <= NAMES_SHOWN:
        return shown or "none"
    return f"{shown} and {len(names) - NAMES_SHOWN} more ({listing} lists them all)"


def unknown_task(name: str, names) -> RequestError:
    """The 404 for a native request naming a task that is not served."""
    return RequestError(404, f"unknown task {name[:64]!r}; known tasks: {some_names(names, 'GET /v1/tasks')}")


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status (4xx, or 5xx when the server cannot take it
    now), ``message`` says what to change.

    Args:
        status (int): the HTTP status.
        message (str): one line naming the key, row or field at fault.
        param (str | None): the request key at fault, where one is (OpenAI-shaped errors carry it).
        code (str | None): a short machine-readable reason, e.g. ``model_not_found``.
        headers (dict[str, str] | None): headers the answer carries, e.g. ``Retry-After``.

    Example:
        >>> RequestError(422, "'rows' is empty").status
        422
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def as_text(value, where: str) -> str:
    """A field value as text: strings as they are, numbers written out; anything else is refused.

    Args:
        value: the JSON value a client sent.
        where (str): how the message names it, e.g. ``rows[0].text``.

    Returns:
        str: the text.

    Example:
        >>> as_text(3, "rows[0].n")
        '3'
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")


def check_row(row, columns: list[str], task_name: str, limits: Limits, where: str,
              optional: set[str] = frozenset()) -> dict:
    """One row holding only the task's fields, each non-empty text within ``limits.max_field_chars``; an
    ``optional`` field may be left out, null or empty (it reads as an empty string).

    Args:
        row: what the client sent for the row.
        columns (list[str]): the fields the task's template needs.
        task_name (str): named in the message when a field is missing.
        limits (Limits): the field length limit.
        where (str): how messages name the row, e.g. ``rows[2]``.
        optional (set[str], *optional*): the fields that may be empty (the task's ``data.optional_fields``).

    Returns:
        dict: {field: text} for exactly ``columns``.

    Example:
        >>> check_row({"text": "hi", "x": 1}, ["text", "url"], "t", Limits(), "rows[0]", optional={"url"})
        {'text': 'hi', 'url': ''}
    """
    if not isinstance(row, dict):
        raise RequestError(422, f"{where} must be an object of field: value")
    out = {}
    for column in columns:
        if column in optional and row.get(column) is None:
            out[column] = ""
            continue
        if column not in row:
            required = [c for c in columns if c not in optional]
            raise RequestError(422, f"{where} lacks field {column!r} (task {task_name!r} needs "
                                    f"{', '.join(map(repr, required))})")
        value = as_text(row[column], f"{where}.{column}")
        if not value.strip() and column not in optional:
            raise RequestError(422, f"{where}.{column} is empty")
        if len(value) > limits.max_field_chars:
            raise RequestError(413, f"{where}.{column} has {len(value)} characters; the limit is "
                                    f"{limits.max_field_chars}")
        out[column] = value
    return out


def check_max_new_tokens(value, limits: Limits, key: str = "max_new_tokens") -> int:
    """A token budget a client sent: an integer from 1 to ``limits.max_new_tokens``.

    Args:
        value: what the client sent.
        limits (Limits): the server's cap.
        key (str): the request key, named in the message.

    Returns:
        int: the number of tokens to generate at most.

    Example:
        >>> check_max_new_tokens(5, Limits())
        5
    """
    if not is_integer(value) or not 1 <= value <= limits.max_new_tokens:
        raise RequestError(422, f"'{key}' must be an integer from 1 to {limits.max_new_tokens}", param=key)
    return int(value)


def is_integer(value) -> bool:
    """An integer as JSON Schema counts them: ``5`` and ``5.0``, not ``true``.

    Example:
        >>> is_integer(5.0), is_integer(5.5), is_integer(True)
        (True, False, False)
    """
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(body, tasks: dict, op: str, limits: Limits) -> tuple[object, list[dict], int]:
    """Check a ``/v1/classify`` (``op="classify"``) or ``/v1/generate`` (``op="generate"``) body.

    Args:
        body: the parsed JSON body.
        tasks (dict[str, ServedTask]): the tasks being served, by name.
        op (str): ``classify`` or ``generate``.
        limits (Limits): rows, field lengths, tokens.

    Returns:
        tuple: (the ServedTask, rows holding only the needed fields, max_new_tokens); or raises RequestError.

    Example:
        >>> try:
        ...     check_request({"task": "t", "rows": []}, {}, "classify", Limits())
        ... except RequestError as err:
        ...     print(err.status)
        404
    """
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    allowed = {"task", "rows"} | ({"max_new_tokens"} if op == "generate" else set())
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(422, f"unknown key(s) {', '.join(map(repr, unknown))}; expected {sorted(allowed)}")
    name = body.get("task")
    if not isinstance(name, str) or not name:
        raise RequestError(422, "'task' is missing or not a string")
    if name not in tasks:
        raise unknown_task(name, tasks)
    task = tasks[name]
    if op == "classify" and task.type == "generation":
        raise RequestError(400, f"task {name!r} is a generation task; use /v1/generate")
    if op == "generate" and task.type != "generation":
        raise RequestError(400, f"task {name!r} is a {task.type} task; use /v1/classify")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise RequestError(422, "'rows' is missing or not a list of objects")
    if not rows:
        raise RequestError(422, "'rows' is empty; send at least one row")
    if len(rows) > limits.max_rows:
        raise RequestError(413, f"too many rows: {len(rows)}; the limit is {limits.max_rows} per request")
    clean = [check_row(row, task.columns, name, limits, f"rows[{i}]", task.optional_columns)
             for i, row in enumerate(rows)]
    max_new = min(task.default_max_new_tokens, limits.max_new_tokens)
    if op == "generate" and "max_new_tokens" in body:
        max_new = check_max_new_tokens(body["max_new_tokens"], limits)
    return task, clean, max_new


# ---------------------------------------------------------------------------------------------------------------
# OpenAPI schemas


def field_value_schema(limits: Limits, optional: bool = False) -> dict:
    """The JSON schema of one field's value in a row: text holding more than whitespace, within
    ``limits.max_field_chars``, or a number (written out); an ``optional`` field's text may be empty, or null.

    Example:
        >>> field_value_schema(Limits(max_field_chars=9))["oneOf"][0]["maxLength"]
        9
    """
    if optional:
        return {"oneOf": [{"type": "string", "maxLength": limits.max_field_chars}, {"type": "number"},
                          {"type": "null"}]}
    return {"oneOf": [{"type": "string", "minLength": 1, "maxLength": limits.max_field_chars, "pattern": NOT_BLANK},
                      {"type": "number"}]}


def row_schema(task, limits: Limits) -> dict:
    """The JSON schema of one row of ``task`` (a ``ServedTask``): its fields, those not optional required.

    Example:
        >>> row_schema(task, Limits())["required"]  # doctest: +SKIP
        ['text']
    """
    optional = task.optional_columns
    return {"type": "object", "required": [c for c in task.columns if c not in optional],
            "properties": {c: field_value_schema(limits, c in optional) for c in task.columns}}


def native_request_schema(tasks: dict, limits: Limits, op: str) -> dict:
    """The JSON schema of a ``/v1/classify`` (``op="classify"``) or ``/v1/generate`` (``"generate"``) body for the
    tasks served now: their names as an enum, each task's required fields (one ``oneOf`` entry per task), the
    limits on rows, field lengths and tokens.

    Args:
        tasks (dict[str, ServedTask]): the tasks served now.
        limits (Limits): the limits.
        op (str): ``classify`` or ``generate``.

    Returns:
        dict: the schema.

    Example:
        >>> native_request_schema({}, Limits(), "classify")["required"]
        ['task', 'rows']
    """
    served = [t for t in tasks.values() if (t.type == "generation") == (op == "generate")]
    rows = {"type": "array", "minItems": 1, "maxItems": limits.max_rows,
            "description": "rows of FIELD: VALUE (the task's template fields; other keys are ignored)",
            "items": {"type": "object", "additionalProperties": True}}
    names = {"type": "string", "enum": [t.name for t in served]} if served else {
        "type": "string", "description": f"no task for /v1/{op} is served now"}
    props = {"task": names, "rows": rows}
    if op == "generate":
        props["max_new_tokens"] = {"type": "integer", "minimum": 1, "maximum": limits.max_new_tokens,
                                   "description": "default: the task's task.max_new_tokens"}
    schema = {"type": "object", "required": ["task", "rows"], "additionalProperties": False, "properties": props}
    if served:
        schema["oneOf"] = [{"title": t.name, "properties": {"task": {"const": t.name}, "rows": {"items": {
            key: row_schema(t, limits)[key] for key in ("required", "properties")}}}} for t in served]
    return schema


class Label(BaseModel):
    label: str
    scores: dict[str, float] = Field(description="each label's score (log-likelihood, or calibrated)")


class ClassifyAnswer(BaseModel):
    """The ``/v1/classify`` answer: one prediction per row, in row order."""

    predictions: list[Label]


class Text(BaseModel):
    text: str


class GenerateAnswer(BaseModel):
    """The ``/v1/generate`` answer: one generated text per row, in row order."""

    predictions: list[Text]
