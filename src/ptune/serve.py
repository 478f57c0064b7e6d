"""The HTTP server: many P-tuned tasks over one frozen base model, with dynamic batching.

    GET  /health                      {"status": "ok", "tasks": n, "stats": {...}}
    GET  /v1/tasks                    {"tasks": [{"name", "type", "template", "fields", "labels"}]}
    POST /v1/classify                 {"task": NAME, "rows": [{FIELD: VALUE}, ...]}
                                      -> {"predictions": [{"label": L, "scores": {L: S}}]}   (row order)
    POST /v1/generate                 {"task": NAME, "rows": [...], "max_new_tokens": N}
                                      -> {"predictions": [{"text": T}]}

The base model is loaded once; every checkpoint is a ``Predictor`` over it (a prompt table of a few kilobytes).
Requests are parsed and checked in the event loop (a bad request is a 4xx naming what is wrong, and never reaches
the model), then queued; a batcher collects what arrives within ``batch_wait_ms``, groups rows by task (and
``max_new_tokens``), and runs each group as one prediction call on a single worker thread, so the model is never
used by two threads at once and concurrent requests share batches. Classification rows of different tasks collected together share model
calls too (``Limits.mix_tasks``): each row splices its own task's prompt table. Nothing a client sends names a file.
"""

import asyncio
import dataclasses
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, and Request is imported lazily)
import click

from .errors import PtuneError
from .inference import Predictor
from .tasks.mixed import classify_mixed

logger = logging.getLogger("ptune.serve")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass
class Limits:
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


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServedTask:
    name: str
    folder: str
    predictor: object  # Predictor

    @property
    def type(self) -> str:
        return self.predictor.session.cfg.task.type

    @property
    def columns(self) -> list[str]:
        """Row keys the template needs (template fields mapped through data.columns)."""
        cfg = self.predictor.session.cfg
        return [cfg.data.columns.get(f, f) for f in self.predictor.session.template.fields]

    def describe(self) -> dict:
        labels = self.predictor.session.task.labels
        return {"name": self.name, "type": self.type, "template": self.predictor.meta["template"],
                "fields": self.columns, "labels": labels.labels if labels else None,
                "max_new_tokens": self.predictor.session.cfg.task.max_new_tokens if self.type == "generation" else None}


def load_tasks(checkpoints: dict[str, str | Path], device: str | None = None) -> dict[str, ServedTask]:
    """One Predictor per checkpoint, all over the base model the first one loads (others must match it)."""

    if not checkpoints:
        raise PtuneError("serve: give at least one checkpoint directory")
    tasks: dict[str, ServedTask] = {}
    base = None
    for name, folder in checkpoints.items():
        if not NAME_RE.match(name):
            raise PtuneError(f"serve: task name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        predictor = Predictor.load(folder, base=base, device=device)
        base = base or predictor.session.base
        tasks[name] = ServedTask(name, str(folder), predictor)
    return tasks


def parse_checkpoint_args(args: list[str]) -> dict[str, str]:
    """``DIR`` (named after the folder) or ``NAME=DIR``; names must be unique."""
    out: dict[str, str] = {}
    for arg in args:
        if "=" in arg and not Path(arg).exists():
            name, folder = arg.split("=", 1)
        else:
            name, folder = Path(arg).resolve().name, arg
        if name in out:
            raise PtuneError(f"serve: two checkpoints are named {name!r}; name them with NAME=DIR")
        out[name] = folder
    return out


# ---------------------------------------------------------------------------------------------------------------
# request checking (pure functions: no model involved)


def _as_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")


def check_request(body, tasks: dict[str, ServedTask], op: str, limits: Limits) -> tuple[ServedTask, list[dict], int]:
    """(task, rows holding only the needed fields, max_new_tokens) or a RequestError."""
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
        raise RequestError(404, f"unknown task {name[:64]!r}; known tasks: {', '.join(sorted(tasks))}")
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
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{i}] must be an object of field: value")
        out = {}
        for column in task.columns:
            if column not in row:
                raise RequestError(422, f"rows[{i}] lacks field {column!r} (task {name!r} needs "
                                        f"{', '.join(map(repr, task.columns))})")
            value = _as_text(row[column], f"rows[{i}].{column}")
            if not value.strip():
                raise RequestError(422, f"rows[{i}].{column} is empty")
            if len(value) > limits.max_field_chars:
                raise RequestError(413, f"rows[{i}].{column} has {len(value)} characters; the limit is "
                                        f"{limits.max_field_chars}")
            out[column] = value
        clean.append(out)
    max_new = task.predictor.session.cfg.task.max_new_tokens
    if op == "generate" and "max_new_tokens" in body:
        max_new = body["max_new_tokens"]
        if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= limits.max_new_tokens:
            raise RequestError(422, f"'max_new_tokens' must be an integer from 1 to {limits.max_new_tokens}")
    return task, clean, min(max_new, limits.max_new_tokens)


# ---------------------------------------------------------------------------------------------------------------
# dynamic batching


@dataclass
class _Job:
    task: ServedTask
    op: str
    rows: list[dict]
    max_new_tokens: int
    future: asyncio.Future


@dataclass
class Stats:
    requests: int = 0
    rows: int = 0
    batches: int = 0
    model_seconds: float = 0.0
    largest_batch: int = 0
    mixed_batches: int = 0
    """Model calls that held rows of more than one task."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "rows": self.rows, "batches": self.batches,
                "mean_rows_per_batch": round(self.rows / self.batches, 2) if self.batches else 0.0,
                "largest_batch": self.largest_batch, "mixed_batches": self.mixed_batches, "model_seconds": round(self.model_seconds, 3)}


class Batcher:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptune-model")
        self.stats = Stats()
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._runner:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, task: ServedTask, op: str, rows: list[dict], max_new_tokens: int) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(task, op, rows, max_new_tokens, future))
        return await future

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        deadline = loop.time() + self.limits.batch_wait_ms / 1000
        while sum(len(j.rows) for j in jobs) < self.limits.max_batch_rows:
            try:
                jobs.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # a client that went away is not computed for
                    groups.setdefault((job.task.name, job.op, job.max_new_tokens), []).append(job)
            calls = list(groups.values())
            mixable = [g for g in calls if g[0].task.type == "classification"
                       and g[0].task.predictor.model.can_score_continuations]
            if self.limits.mix_tasks and len(mixable) > 1:  # the mixable groups: one call
                calls = [g for g in calls if not any(g is m for m in mixable)] + [mixable]
            for call in calls:
                mixed = isinstance(call[0], list)
                jobs_in = [j for g in call for j in g] if mixed else call
                try:
                    if mixed:
                        preds = await loop.run_in_executor(self.executor, self._predict_mixed, call)
                    else:
                        preds = await loop.run_in_executor(self.executor, self._predict, call[0],
                                                           [r for j in call for r in j.rows])
                except Exception as err:  # the batch fails, the server does not
                    for j in jobs_in:
                        if not j.future.done():
                            j.future.set_exception(err)
                    continue
                start = 0
                for j in jobs_in:
                    if not j.future.done():
                        j.future.set_result(preds[start:start + len(j.rows)])
                    start += len(j.rows)

    def _predict_mixed(self, groups: list[list[_Job]]) -> list[dict]:
        """Classification rows of several tasks, one set of model calls; predictions in job order."""
        import torch


        t0 = time.perf_counter()
        parts = [(g[0].task.predictor.session.task, g[0].task.predictor.model, [r for j in g for r in j.rows])
                 for g in groups]
        session = groups[0][0].task.predictor.session
        with torch.inference_mode():
            out = classify_mixed(parts, session.cfg.train.eval_batch_size, session.device)
        self._count(sum(len(rows) for _, _, rows in parts), t0)
        with self.stats.lock:
            self.stats.mixed_batches += 1
        return [p for preds in out for p in preds]

    def _count(self, rows: int, t0: float) -> None:
        with self.stats.lock:
            self.stats.batches += 1
            self.stats.rows += rows
            self.stats.largest_batch = max(self.stats.largest_batch, rows)
            self.stats.model_seconds += time.perf_counter() - t0

    def _predict(self, job: _Job, rows: list[dict]) -> list[dict]:
        t0 = time.perf_counter()
        predictor = job.task.predictor
        session = predictor.session
        if job.op == "generate" and job.max_new_tokens != session.task.cfg.max_new_tokens:
            old = session.task.cfg  # only this thread ever runs the model, so a swap here is safe
            session.task.cfg = dataclasses.replace(old, max_new_tokens=job.max_new_tokens)
            try:
                preds = session.predict(predictor.model, rows)
            finally:
                session.task.cfg = old
        else:
            preds = session.predict(predictor.model, rows)
        self._count(len(rows), t0)
        return preds


# ---------------------------------------------------------------------------------------------------------------
# the app


def create_app(checkpoints: dict[str, str | Path] | None = None, *, tasks: dict[str, ServedTask] | None = None,
               limits: Limits | None = None, device: str | None = None):
    """A FastAPI app serving ``checkpoints`` (name -> directory), or already loaded ``tasks``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .errors import DataError

    limits = limits or Limits()
    if tasks is None:
        tasks = load_tasks(dict(checkpoints or {}), device=device)
    batcher = Batcher(limits)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    # the schema is served (/openapi.json; /docs needs the Swagger UI's scripts from a CDN); request bodies are
    # parsed and checked by check_request (its messages name the row and field), so they are declared, not bound
    app = FastAPI(title="ptune", lifespan=lifespan, redoc_url=None, openapi_url="/openapi.json", docs_url="/docs",
                  description="P-tuned tasks over one frozen base model.")
    app.state.tasks = tasks
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(422, "invalid request")

    async def read_json(request: Request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            raise RequestError(413, f"the body is larger than {limits.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise RequestError(413, f"the body is larger than {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise RequestError(400, f"the body is not valid JSON: {str(err)[:120]}") from None

    async def handle(request: Request, op: str):
        try:
            body = await read_json(request)
            task, rows, max_new = check_request(body, tasks, op, limits)
            batcher.stats.requests += 1
            try:
                preds = await batcher.submit(task, op, rows, max_new)
            except DataError as err:  # e.g. a template plus target longer than max_length
                raise RequestError(422, str(err)) from None
            except Exception as err:  # a bug, not the client's fault: logged here, a short 500 there
                logger.exception("prediction for task %r failed", task.name)
                return error(500, f"prediction failed ({type(err).__name__}); the server is still running")
        except RequestError as err:
            return error(err.status, err.message)
        if op == "classify":
            return {"predictions": [{"label": p["prediction"], "scores": p.get("scores", {})} for p in preds]}
        return {"predictions": [{"text": p["prediction"]} for p in preds]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "tasks": len(tasks), "stats": batcher.stats.as_dict()}

    @app.get("/v1/tasks")
    async def list_tasks():
        return {"tasks": [t.describe() for t in tasks.values()]}

    classify_body, generate_body, classify_answer, generate_answer = _schemas()

    def body(schema) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    errors = {code: {"description": text, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}
        for code, text in ((400, "invalid JSON or wrong endpoint for the task"), (404, "unknown task"),
                           (413, "too many rows or too large"), (422, "missing, empty or invalid field"))}

    @app.post("/v1/classify", openapi_extra=body(classify_body), response_model=classify_answer, responses=errors)
    async def classify(request: Request):
        return await handle(request, "classify")

    @app.post("/v1/generate", openapi_extra=body(generate_body), response_model=generate_answer, responses=errors)
    async def generate(request: Request):
        return await handle(request, "generate")

    return app


def _schemas():
    """The request bodies (as JSON schemas) and the answers (as pydantic models) the OpenAPI document declares."""
    from pydantic import BaseModel, Field

    rows = {"type": "array", "minItems": 1, "description": "rows of FIELD: VALUE (the task's template fields)",
            "items": {"type": "object", "additionalProperties": {"type": "string"}}}
    classify = {"type": "object", "required": ["task", "rows"], "additionalProperties": False,
                "properties": {"task": {"type": "string"}, "rows": rows}}
    generate = {**classify, "properties": {**classify["properties"],
                                           "max_new_tokens": {"type": "integer", "minimum": 1}}}

    class Label(BaseModel):
        label: str
        scores: dict[str, float] = Field(description="each label's score (log-likelihood, or calibrated)")

    class ClassifyAnswer(BaseModel):
        predictions: list[Label]

    class Text(BaseModel):
        text: str

    class GenerateAnswer(BaseModel):
        predictions: list[Text]

    return classify, generate, ClassifyAnswer, GenerateAnswer


class ServerThread:
    """Run the app with uvicorn on a background thread (tests, the load script): ``with ServerThread(app) as url``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
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


def register(main: click.Group) -> None:
    @main.command("serve")
    @click.argument("checkpoints", nargs=-1, required=True)
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
    @click.option("--device", default=None, help="Override the checkpoints' model.device.")
    @click.option("--max-rows", default=Limits.max_rows, show_default=True, type=click.IntRange(1, 100000))
    @click.option("--batch-wait-ms", default=Limits.batch_wait_ms, show_default=True, type=click.FloatRange(0, 1000))
    def serve_cmd(checkpoints, host, port, device, max_rows, batch_wait_ms):
        """Serve checkpoints (DIR or NAME=DIR, one frozen base model shared) over HTTP."""
        import uvicorn

        app = create_app(parse_checkpoint_args(list(checkpoints)), device=device,
                         limits=Limits(max_rows=max_rows, batch_wait_ms=batch_wait_ms))
        click.echo(f"serving {', '.join(app.state.tasks)} on http://{host}:{port}", err=True)
        uvicorn.run(app, host=host, port=port, log_level="info")
