"""OpenAI-compatible endpoints beside the native ones, so that OpenAI clients can call the served tasks.

    GET  /v1/models                   {"object": "list", "data": [{"id": NAME, "object": "model", ...}]}
    GET  /v1/models/NAME              one of them
    POST /v1/completions              {"model": NAME, "prompt": P, ...}
    POST /v1/chat/completions         {"model": NAME, "messages": [...], ...}

``model`` is a task name. How a request becomes a row of the task:

- a task whose template has one field takes the prompt (completions) or the last message's text (chat) as that
  field; a task with several fields needs that text to be a JSON object of the fields, e.g.
  ``{"premise": "...", "hypothesis": "..."}``.
- completions: ``prompt`` is a string, or a list of strings (one choice per string, up to ``Limits.max_rows``);
  token-id prompts are refused.
- chat: the last user message is the input; its content is a string or a list of text parts (joined by newlines).
  Every user message must be an input the task could take (checked as the last one is), so that the OpenAPI
  document can say which conversations are accepted; the other messages (system, assistant, ...) and the earlier
  user messages are accepted but not read: the task's template is its prompt and it has no conversation memory.

What comes back:

- a generation task: the generated text (greedy; ``max_tokens`` / ``max_completion_tokens`` is the budget, at most
  ``Limits.max_new_tokens``; default the checkpoint's ``task.max_new_tokens``). ``finish_reason`` is ``length``
  when the budget ran out, else ``stop`` (streamed: from the tokens generated; whole: from the returned text's
  token count).
- a classification (or probing) task: the predicted label as the text, and every label's score as a log-probability
  entry whatever ``logprobs`` asks: completions in ``choices[].logprobs`` (``tokens`` = [label],
  ``token_logprobs`` = [its score], ``top_logprobs`` = [{label: score} for all labels]); chat in
  ``choices[].logprobs.content[0]`` (``token`` = label, ``logprob`` = its score, ``top_logprobs`` = [{``token``,
  ``logprob``, ``bytes``} per label, best first]). The scores are the ones ``/v1/classify`` returns (the label's
  log-likelihood, or calibrated), not renormalised. ``max_tokens`` is accepted and does not change the answer.
- ``usage`` counts the tokens of the text the client sent and of the text returned (the template's own tokens and
  the virtual tokens are not counted).
- ``stream: true``: server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; a generation task
  streams text as it is generated, a classification task sends one chunk with the label. One prompt per streamed
  request. ``stream_options.include_usage`` adds a last chunk with ``usage``.

Parameters this server cannot honour are refused with a 400, never ignored: sampling (``temperature`` other than 0
or null, ``top_p`` other than 1), ``n``/``best_of`` above 1, ``stop``, penalties, ``logit_bias``, ``echo``,
``suffix``, tools and functions, a ``response_format`` other than text, log-probabilities for a generation task, and
any key the OpenAPI document does not list. ``seed`` and ``user`` are accepted (greedy decoding needs no seed).
Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

from .protocol import (NOT_BLANK, Limits, RequestError, check_max_new_tokens, check_row, is_integer, row_schema,
                       some_names)
from .tasks import ServedTask

OBJECT_OF = {"completion": "text_completion", "chat": "chat.completion"}

# key -> (the values accepted besides null, why others are not); the same table writes the OpenAPI schema
NEUTRAL = {
    "temperature": ([0], "only greedy decoding is served: temperature must be 0 or null"),
    "top_p": ([1], "only greedy decoding is served: top_p must be 1 or null"),
    "n": ([1], "one choice per prompt: n must be 1"),
    "best_of": ([1], "best_of must be 1"),
    "stop": ([[], ""], "stop sequences are not supported"),
    "presence_penalty": ([0], "penalties are not supported"),
    "frequency_penalty": ([0], "penalties are not supported"),
    "logit_bias": ([{}], "logit_bias is not supported"),
    "echo": ([False], "echo is not supported"),
    "suffix": ([""], "suffix is not supported"),
    "tools": ([[]], "tools are not supported"),
    "tool_choice": (["none"], "tools are not supported"),
    "parallel_tool_calls": ([False], "tools are not supported"),
    "functions": ([[]], "functions are not supported"),
    "function_call": (["none"], "functions are not supported"),
    "response_format": ([{"type": "text"}], "only text responses are supported"),
    "modalities": ([["text"]], "only text responses are supported"),
    "audio": ([], "audio is not supported"),
    "prediction": ([], "predicted outputs are not supported"),
    "store": ([False], "completions are not stored"),
    "metadata": ([], "completions are not stored, so metadata is not supported"),
    "reasoning_effort": ([], "reasoning_effort is not supported"),
    "service_tier": (["auto", "default"], "service tiers are not supported"),
    "web_search_options": ([], "web search is not supported"),
    "verbosity": ([], "verbosity is not supported"),
}
COMMON_KEYS = {"model", "stream", "stream_options", "seed", "user", "max_tokens", "logprobs"}
COMPLETION_KEYS = COMMON_KEYS | {"prompt"} | {"temperature", "top_p", "n", "best_of", "stop", "presence_penalty",
                                               "frequency_penalty", "logit_bias", "echo", "suffix"}
CHAT_KEYS = COMMON_KEYS | {"messages", "max_completion_tokens", "top_logprobs"} | (set(NEUTRAL) - {"best_of", "echo",
                                                                                                   "suffix"})


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status (int): the HTTP status.
        message (str): what is wrong.
        param (str | None): the request key at fault.
        code (str | None): a short reason, e.g. ``model_not_found``.
        headers (dict[str, str] | None): headers the answer carries, e.g. ``Retry-After``.

    Returns:
        JSONResponse: the response.

    Example:
        >>> openai_error(404, "unknown model 'x'", "model", "model_not_found").status_code
        404
    """
    kind = ("authentication_error" if status == 401 else "server_error" if status >= 500 else
            "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


@dataclass
class OpenAIRequest:
    """A checked completions or chat request."""

    kind: str
    """``completion`` or ``chat``."""
    task: ServedTask
    rows: list[dict]
    """One row per prompt (chat: one)."""
    max_new_tokens: int
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))


def find_task(body: dict, tasks: dict[str, ServedTask]) -> ServedTask:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise RequestError(400, "'model' is missing: give a task name (GET /v1/models lists them)", param="model")
    if name not in tasks:
        raise RequestError(404, f"unknown model {name[:64]!r}; the models are the tasks: "
                           f"{some_names(tasks, 'GET /v1/models')}", param="model", code="model_not_found")
    return tasks[name]


def same(value, accepted) -> bool:
    """JSON equality: 0 and 0.0 are the same number, but true is not 1 (Python's == says it is)."""
    if isinstance(value, bool) or isinstance(accepted, bool):
        return type(value) is type(accepted) and value == accepted
    return value == accepted


def check_keys(body, allowed: set[str]) -> None:
    """Refuse keys OpenAI's API does not define for the endpoint, and parameters this server cannot honour."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    for key in sorted(body):
        if key not in allowed:
            raise RequestError(400, f"unrecognized request argument: {key[:64]!r}", param=key[:64])
        value = body[key]
        if key in NEUTRAL and value is not None and not any(same(value, v) for v in NEUTRAL[key][0]):
            raise RequestError(400, f"{key}={json.dumps(value)[:64]}: {NEUTRAL[key][1]}", param=key,
                               code="unsupported_parameter")


def row_from_text(text, task: ServedTask, limits: Limits, param: str) -> dict:
    """The task's row for a prompt: the text itself for a one-field task, else a JSON object of the fields."""
    if not isinstance(text, str):
        raise RequestError(400, f"{param} must be a string (token-id prompts are not supported)", param=param)
    if len(task.columns) == 1:
        return check_row({task.columns[0]: text}, task.columns, task.name, limits, param, task.optional_columns)
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        row = None
    if not isinstance(row, dict):
        raise RequestError(400, f"{param}: task {task.name!r} has several fields; send a JSON object of "
                                f"{', '.join(map(repr, task.columns))}", param=param)
    return check_row(row, task.columns, task.name, limits, param, task.optional_columns)


def prompt_rows(prompt, task: ServedTask, limits: Limits) -> list[dict]:
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts:
        raise RequestError(400, "'prompt' is empty", param="prompt")
    if len(prompts) > limits.max_rows:
        raise RequestError(413, f"too many prompts: {len(prompts)}; the limit is {limits.max_rows}", param="prompt")
    return [row_from_text(p, task, limits, f"prompt[{i}]" if isinstance(prompt, list) else "prompt")
            for i, p in enumerate(prompts)]


ROLES = ("system", "developer", "user", "assistant", "tool")


def content_text(content, where: str) -> str | None:
    """A message's content as text: a string, or text parts joined by newlines (None stays None)."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise RequestError(400, f"{where}: only text content parts are supported", param="messages")
        return "\n".join(p["text"] for p in content)
    if content is not None and not isinstance(content, str):
        raise RequestError(400, f"{where}: content must be text", param="messages")
    return content


def user_texts(messages) -> list[tuple[str, str]]:
    """(``messages[i]``, text) of every user message, in order. Every message must be well formed and every user
    message must hold text; there must be one at least."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    users = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}] must be an object with a role in {list(ROLES)}",
                               param="messages")
        text = content_text(message.get("content"), f"messages[{i}]")
        if message["role"] == "user":
            if text is None:
                raise RequestError(400, f"messages[{i}]: a user message needs text content", param="messages")
            users.append((f"messages[{i}]", text))
    if not users:
        raise RequestError(400, "no user message (role 'user'): the last one's text is the task's input",
                           param="messages")
    return users


def check_scalars(body: dict, kind: str) -> None:
    """Keys whose value only needs the right type (or null)."""
    rules = {"seed": (is_integer, "an integer"), "user": (lambda v: isinstance(v, str), "a string"),
             "stream": (lambda v: isinstance(v, bool), "true or false")}
    if kind == "completion":
        rules["logprobs"] = (lambda v: is_integer(v) and 0 <= v <= 5, "an integer from 0 to 5")
    else:
        rules["logprobs"] = (lambda v: isinstance(v, bool), "true or false")
        rules["top_logprobs"] = (lambda v: is_integer(v) and 0 <= v <= 20, "an integer from 0 to 20")
    for key, (ok, what) in rules.items():
        if body.get(key) is not None and not ok(body[key]):
            raise RequestError(400, f"'{key}' must be {what}", param=key)


def check_common(body: dict, task: ServedTask, limits: Limits,
                 budget_keys: tuple[str, ...]) -> tuple[int, bool, bool]:
    """(max_new_tokens, stream, include_usage); the first of ``budget_keys`` given is the budget, and every one given
    must be valid."""
    max_new = min(task.default_max_new_tokens, limits.max_new_tokens)
    for key in reversed(budget_keys):
        if body.get(key) is not None:
            max_new = check_max_new_tokens(body[key], limits, key)
    stream = bool(body.get("stream"))  # a bool or null, checked by check_scalars
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}
                                or not isinstance(options.get("include_usage", False), bool)):
        raise RequestError(400, "stream_options must be {\"include_usage\": bool}, and only with stream: true",
                           param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    for key in ("logprobs", "top_logprobs"):
        if task.type == "generation" and body.get(key) not in (None, False, 0):
            raise RequestError(400, f"log-probabilities are not served for generation task {task.name!r}",
                               param=key, code="unsupported_parameter")
    return max_new, stream, include_usage


def parse_completion(body, tasks: dict[str, ServedTask], limits: Limits) -> OpenAIRequest:
    """Check a ``/v1/completions`` body (see the module docstring); RequestError otherwise."""
    check_keys(body, COMPLETION_KEYS)
    check_scalars(body, "completion")
    task = find_task(body, tasks)
    rows = prompt_rows(body.get("prompt"), task, limits)
    max_new, stream, include_usage = check_common(body, task, limits, ("max_tokens",))
    if stream and len(rows) > 1:
        raise RequestError(400, "stream one prompt per request", param="prompt")
    return OpenAIRequest("completion", task, rows, max_new, stream, include_usage)


def parse_chat(body, tasks: dict[str, ServedTask], limits: Limits) -> OpenAIRequest:
    """Check a ``/v1/chat/completions`` body (see the module docstring); RequestError otherwise."""
    check_keys(body, CHAT_KEYS)
    check_scalars(body, "chat")
    task = find_task(body, tasks)
    row = [row_from_text(text, task, limits, where) for where, text in user_texts(body.get("messages"))][-1]
    max_new, stream, include_usage = check_common(body, task, limits, ("max_completion_tokens", "max_tokens"))
    return OpenAIRequest("chat", task, [row], max_new, stream, include_usage)


# ---------------------------------------------------------------------------------------------------------------
# answers


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def label_logprobs(kind: str, pred: dict) -> dict | None:
    """Every label's score as OpenAI log-probabilities for the predicted label (None without scores)."""
    scores = pred.get("scores")
    if not scores:
        return None
    label = pred["prediction"]
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if kind == "completion":
        return {"tokens": [label], "token_logprobs": [scores.get(label)], "top_logprobs": [dict(ranked)],
                "text_offset": [0]}
    top = [{"token": name, "logprob": score, "bytes": list(name.encode())} for name, score in ranked]
    return {"content": [{"token": label, "logprob": scores.get(label), "bytes": list(label.encode()),
                         "top_logprobs": top}], "refusal": None}


def choice(kind: str, index: int, text: str, finish_reason: str | None, logprobs: dict | None,
           delta: dict | None = None) -> dict:
    """One entry of ``choices``: a whole answer, or (``delta`` given) a chat chunk's piece."""
    if kind == "completion":
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    if delta is not None:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs, "finish_reason": finish_reason}


def envelope(req: OpenAIRequest, choices: list[dict], chunk: bool = False, usage_: dict | None = None) -> dict:
    """The object around the choices: id, object, created, model (and usage)."""
    prefix = "cmpl-" if req.kind == "completion" else "chatcmpl-"
    obj = OBJECT_OF[req.kind] + (".chunk" if chunk and req.kind == "chat" else "")
    out = {"id": prefix + req.id, "object": obj, "created": req.created, "model": req.task.name,
           "system_fingerprint": None, "choices": choices}
    if not chunk or usage_ is not None:
        out["usage"] = usage_
    return out


def answer_body(req: OpenAIRequest, preds: list[dict], prompt_tokens: list[int], completion_tokens: list[int]) -> dict:
    """A whole (not streamed) answer, one choice per prompt."""
    choices = []
    for i, (pred, n) in enumerate(zip(preds, completion_tokens)):
        generated = req.task.type == "generation"
        reason = "length" if generated and n >= req.max_new_tokens else "stop"
        choices.append(choice(req.kind, i, pred["prediction"], reason,
                              None if generated else label_logprobs(req.kind, pred)))
    return envelope(req, choices, usage_=usage(sum(prompt_tokens), sum(completion_tokens)))


def chunk_body(req: OpenAIRequest, text: str, finish_reason: str | None = None, logprobs: dict | None = None,
               first: bool = False) -> dict:
    """One streamed chunk holding ``text`` (chat: as ``delta.content``, with the role in the first chunk)."""
    delta = None
    if req.kind == "chat":
        delta = ({"role": "assistant", "content": text} if first else {"content": text}) if text or first else {}
    return envelope(req, [choice(req.kind, 0, text, finish_reason, logprobs, delta)], chunk=True)


def usage_chunk(req: OpenAIRequest, prompt_tokens: int, completion_tokens: int) -> dict:
    return envelope(req, [], chunk=True, usage_=usage(prompt_tokens, completion_tokens))


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def models_body(tasks: dict[str, ServedTask]) -> dict:
    return {"object": "list", "data": [model_entry(t) for t in tasks.values()]}


def model_entry(task: ServedTask) -> dict:
    return {"id": task.name, "object": "model", "created": task.created, "owned_by": "ptune"}


# ---------------------------------------------------------------------------------------------------------------
# OpenAPI


def input_text_schema(task: ServedTask, limits: Limits) -> dict:
    """The JSON schema of a text the task reads (a prompt, a user message): its one field's value, or a JSON object
    of its fields (said with ``contentSchema``, which validators and generators may not read)."""
    if len(task.columns) == 1:
        return {"type": "string", "minLength": 1, "maxLength": limits.max_field_chars, "pattern": NOT_BLANK}
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": row_schema(task, limits)}


TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"},
                                                                             "text": {"type": "string"}}}


def message_schema(user_text: dict, user_part_text: dict) -> dict:
    """A chat message: any role's content is text, text parts or null; a user message's is the task's input (text
    parts are joined by newlines: one part at least holds more than whitespace)."""
    part = {**TEXT_PART, "properties": {**TEXT_PART["properties"], "text": user_part_text}}
    parts = {"type": "array", "minItems": 1, "items": part, "contains": {"properties": {"text": {
        "pattern": NOT_BLANK}}}}
    return {"type": "object", "required": ["role"], "properties": {
        "role": {"enum": list(ROLES)},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}, {"type": "null"}]}},
        "if": {"required": ["role"], "properties": {"role": {"const": "user"}}},
        "then": {"required": ["content"], "properties": {"content": {"oneOf": [user_text, parts]}}}}


def model_branch(kind: str, task: ServedTask, limits: Limits) -> dict:
    """What a request naming ``task`` as its ``model`` must hold besides the common keys."""
    text = input_text_schema(task, limits)
    props = {"model": {"const": task.name}}
    if kind == "completion":
        props["prompt"] = {"oneOf": [text, {"type": "array", "minItems": 1, "maxItems": limits.max_rows,
                                            "items": text}]}
    else:
        one_field = len(task.columns) == 1
        part_text = {"type": "string", **({"maxLength": limits.max_field_chars} if one_field else {})}
        props["messages"] = {"items": message_schema(text, part_text)}
    if task.type == "generation":  # log-probabilities are served for labels only
        props["logprobs"] = {"enum": [0, None] if kind == "completion" else [False, None]}
        if kind == "chat":
            props["top_logprobs"] = {"enum": [0, None]}
    return {"title": task.name, "properties": props}


def request_schema(kind: str, tasks: dict[str, ServedTask], limits: Limits) -> dict:
    """The JSON schema of a ``/v1/completions`` (``kind="completion"``) or ``/v1/chat/completions`` (``"chat"``)
    body: the keys this server takes, the values it honours, the tasks as ``model`` (one ``oneOf`` entry per task
    with what its input must be).

    Args:
        kind (str): ``completion`` or ``chat``.
        tasks (dict[str, ServedTask]): the tasks served now.
        limits (Limits): prompts per request, field lengths, tokens.

    Returns:
        dict: the schema.

    Example:
        >>> request_schema("chat", {}, Limits())["required"]
        ['model', 'messages']
    """
    budget = {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_new_tokens,
              "description": "generation tasks: at most this many tokens (default: the task's task.max_new_tokens)"}
    props = {"model": {"type": "string", "enum": list(tasks), "description": "a task name"} if tasks else
             {"type": "string", "description": "a task name (no task is served now)"},
             "stream": {"type": ["boolean", "null"], "default": False},
             "stream_options": {"type": ["object", "null"], "additionalProperties": False,
                                "properties": {"include_usage": {"type": "boolean"}},
                                "description": "only with stream: true"},
             "seed": {"type": ["integer", "null"]}, "user": {"type": ["string", "null"]}, "max_tokens": budget}
    streaming = {"required": ["stream"], "properties": {"stream": {"const": True}}}
    rules = [{"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
              "then": streaming}]
    if kind == "completion":
        text = {"type": "string", "minLength": 1}
        props["prompt"] = {"oneOf": [text, {"type": "array", "minItems": 1, "maxItems": limits.max_rows,
                                            "items": text}],
                           "description": "the task's field, or a JSON object of its fields"}
        props["logprobs"] = {"type": ["integer", "null"], "minimum": 0, "maximum": 5,
                             "description": "classification answers carry every label's score anyway"}
        rules.append({"if": streaming, "then": {"properties": {"prompt": {"maxItems": 1}}},
                      "description": "one prompt per streamed request"})
    else:
        props["messages"] = {"type": "array", "minItems": 1,
                             "items": message_schema({"type": "string"}, {"type": "string"}),
                             "contains": {"required": ["role"], "properties": {"role": {"const": "user"}}},
                             "description": "the last user message is the task's input"}
        props["max_completion_tokens"] = budget
        props["logprobs"] = {"type": ["boolean", "null"]}
        props["top_logprobs"] = {"type": ["integer", "null"], "minimum": 0, "maximum": 20}
    allowed = COMPLETION_KEYS if kind == "completion" else CHAT_KEYS
    for key in sorted(allowed & set(NEUTRAL)):
        values, why = NEUTRAL[key]
        props[key] = {"enum": [*values, None], "description": why}
    schema = {"type": "object", "required": ["model", "prompt" if kind == "completion" else "messages"],
              "additionalProperties": False, "properties": props, "allOf": rules}
    if tasks:
        schema["oneOf"] = [model_branch(kind, task, limits) for task in tasks.values()]
    return schema


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
"""OpenAI's error shape, as the OpenAPI document declares it."""
