"""The OpenAI-compatible routes (request and answer shapes in ``openai.py``): decode -> predict through the batcher
(or stream: the batcher decodes a slice per turn, ``stream_jobs.py``) -> encode. At most ``Limits.max_streams``
streamed generations are open at once; one more is answered 429 with ``Retry-After``."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations)
import asyncio
import logging
import threading
import weakref

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .openai import (ERROR_SCHEMA, OpenAIRequest, answer_body, chunk_body, label_logprobs, model_entry, models_body,
                     openai_error, parse_chat, parse_completion, sse, usage_chunk)
from .protocol import RequestError
from .state import ServingState, predict, read_json
from .stream_jobs import StreamJob

logger = logging.getLogger("ptune.serve")
OPENAI_ERRORS = {code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                 for code, text in ((400, "invalid or unsupported parameter"), (404, "unknown model (task)"),
                                    (413, "too many prompts or too long"), (422, "invalid field value"),
                                    (408, "the body did not arrive in time"),
                                    (429, "as many streamed generations as the server allows are open; retry after "
                                          "Retry-After seconds"),
                                    (503, "the queue is full; retry after Retry-After seconds"))}
"""The error answers of the OpenAI routes, for the OpenAPI document (408 and 503: only the routes that read a
body and queue rows)."""
MODEL_ERRORS = {code: OPENAI_ERRORS[code] for code in (400, 404, 413, 422)}


def op_of(req: OpenAIRequest) -> str:
    return "generate" if req.task.type == "generation" else "classify"


async def answer(state: ServingState, req: OpenAIRequest) -> dict:
    """A whole answer: the rows go through the batcher with everyone else's."""
    preds = await predict(state, req.task, op_of(req), req.rows, req.max_new_tokens)
    texts = [p["prediction"] for p in preds]
    sent = [value for row in req.rows for value in row.values()]
    counts = await state.batcher.run_alone(req.task.count_tokens, sent + texts)
    width = len(req.task.columns)
    prompt = [sum(counts[i * width:(i + 1) * width]) for i in range(len(req.rows))]
    return answer_body(req, preds, prompt, counts[len(sent):])


async def stream_label(state: ServingState, req: OpenAIRequest):
    """A classification task's stream: one chunk with the label and its scores."""
    pred = (await predict(state, req.task, "classify", req.rows, req.max_new_tokens))[0]
    yield sse(chunk_body(req, pred["prediction"], "stop", label_logprobs(req.kind, pred), first=True))
    if req.include_usage:
        counts = await state.batcher.run_alone(req.task.count_tokens, [*req.rows[0].values(), pred["prediction"]])
        yield sse(usage_chunk(req, sum(counts[:-1]), counts[-1]))


async def stream_text(state: ServingState, req: OpenAIRequest):
    """A generation task's stream: pieces of text as the batcher decodes them, a slice per turn; the client leaving
    stops generation before the next token."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    state.batcher.stats.requests += 1

    def emit(piece: str) -> None:  # on the model thread
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    job = asyncio.ensure_future(state.batcher.stream(StreamJob(req.task, req.rows[0], req.max_new_tokens, emit,
                                                               stop)))
    # queued after every piece (both come from the model thread, in order)
    job.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        if req.kind == "chat":
            yield sse(chunk_body(req, "", first=True))
        while (piece := await pieces.get()) is not None:
            yield sse(chunk_body(req, piece))
        result = job.result()
        yield sse(chunk_body(req, "", result.finish_reason))
        if req.include_usage:  # counted as a whole answer counts them, so both ways agree
            counts = await state.batcher.run_alone(req.task.count_tokens, [*req.rows[0].values(), result.text])
            yield sse(usage_chunk(req, sum(counts[:-1]), counts[-1]))
    finally:
        stop.set()


async def stream_events(state: ServingState, req: OpenAIRequest, release_slot=None):
    """Server-sent events ending with ``[DONE]``; a failure after the first event is an error event.
    ``release_slot`` (a stream slot's release) is called when the events end, however they end."""
    events = stream_text(state, req) if req.task.type == "generation" else stream_label(state, req)
    try:
        async for event in events:
            yield event
    except RequestError as err:
        yield sse({"error": {"message": err.message, "type": "server_error" if err.status >= 500 else
                             "invalid_request_error", "param": err.param, "code": err.code}})
        return
    except Exception as err:  # noqa: BLE001 - the stream ends with a message, the server goes on
        logger.exception("streaming for task %r failed", req.task.name)
        yield sse({"error": {"message": f"generation failed ({type(err).__name__})", "type": "server_error",
                             "param": None, "code": None}})
        return
    finally:
        if release_slot is not None:
            release_slot()
    yield sse("[DONE]")


def open_stream(state: ServingState, req: OpenAIRequest) -> StreamingResponse:
    """The streamed answer; a generation takes one of ``Limits.max_streams`` slots (RequestError 429 when none is
    free), given back when its events end, or when they are dropped without ever being sent."""
    release = None
    if req.task.type == "generation":
        release = state.batcher.stream_slots.take()
        if release is None:
            raise RequestError(429, f"{state.limits.max_streams} streamed generations are open, as many as this "
                                    "server allows; retry shortly, or ask without stream", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"})
    events = stream_events(state, req, release)
    if release is not None:
        weakref.finalize(events, release)  # an answer never started still gives its slot back
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def respond(state: ServingState, request: Request, parse):
    try:
        req = parse(await read_json(request, state.limits), state.tasks, state.limits)
        if req.stream:
            return open_stream(state, req)
        return await answer(state, req)
    except RequestError as err:
        return openai_error(err.status, err.message, err.param, err.code, err.headers)


def add_openai_routes(app: FastAPI, state: ServingState) -> None:
    """``/v1/models``, ``/v1/models/{name}``, ``/v1/completions``, ``/v1/chat/completions``."""

    @app.get("/v1/models")
    async def list_models():
        return models_body(state.tasks)

    @app.get("/v1/models/{name}", responses=MODEL_ERRORS)
    async def get_model(name: str):
        if name not in state.tasks:
            return openai_error(404, f"unknown model {name[:64]!r}", "model", "model_not_found")
        return model_entry(state.tasks[name])

    @app.post("/v1/completions", responses=OPENAI_ERRORS)
    async def completions(request: Request):
        return await respond(state, request, parse_completion)

    @app.post("/v1/chat/completions", responses=OPENAI_ERRORS)
    async def chat_completions(request: Request):
        return await respond(state, request, parse_chat)
