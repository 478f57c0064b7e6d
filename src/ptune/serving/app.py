"""The FastAPI app: routes that decode a request, hand it to the batcher, and encode the answer.

Requests are parsed and checked in the event loop (a bad request is a 4xx naming what is wrong, and never reaches
the model), then queued for the batcher (``batcher.py``). Nothing a client sends names a file.
"""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations)
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import PtuneError
from .auth import KEY_VALID, OPEN_PATHS, PAGES, RequireKey, check_key
from .guard import BrowserGuard, parse_allowed_hosts
from .live import add_task, remove_task
from .batcher import Batcher
from .openai_routes import add_openai_routes
from .openapi import DOCS_ASSETS, ServingAPI, add_offline_docs
from .playground import add_playground
from .protocol import ClassifyAnswer, GenerateAnswer, Limits, RequestError, check_request
from .state import ServingState, predict, read_json
from .tasks import ServedTask, load_tasks

def create_app(checkpoints: dict[str, str | Path] | None = None, *, tasks: dict[str, ServedTask] | None = None,
               limits: Limits | None = None, device: str | None = None, api_keys: list[str] | None = None,
               tasks_dir: str | Path | None = None, allowed_hosts: list[str] | tuple[str, ...] = ()) -> FastAPI:
    """A FastAPI app serving ``checkpoints`` (name -> directory), or already loaded ``tasks``; with ``tasks_dir``,
    none at all to begin with (the base model then loads with the first task added).

    Args:
        checkpoints (dict[str, str | Path] | None): task name -> checkpoint directory; loaded over one base model.
        tasks (dict[str, ServedTask] | None): already loaded tasks (instead of ``checkpoints``).
        limits (Limits | None): request and batching limits (default ``Limits()``).
        device (str | None): overrides the checkpoints' ``model.device``.
        api_keys (list[str] | None): if given, every endpoint but ``/health`` and the pages (the playground, the
            ``/docs`` shell and its files) needs ``Authorization: Bearer KEY`` with one of them.
        tasks_dir (str | Path | None): if given, ``POST /v1/tasks`` adds checkpoints from inside it and
            ``DELETE /v1/tasks/NAME`` removes tasks, while serving.
        allowed_hosts (list[str] | tuple[str, ...]): without keys, the ``Host`` names served besides loopback ones
            (names or addresses; ``0.0.0.0`` or ``::``: any address; ``*``: any host; see ``guard.py``).

    Returns:
        FastAPI: the app; ``app.state.tasks`` holds the tasks, ``app.state.batcher`` the batcher.

    Example:
        >>> app = create_app({"topics": "runs/topics"})  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    limits = limits or Limits()
    for i, key in enumerate(api_keys or []):  # said before a model loads
        check_key(key, f"api_keys[{i}]")
    hosts = parse_allowed_hosts(allowed_hosts)
    root = Path(tasks_dir).resolve() if tasks_dir is not None else None
    if root is not None and not root.is_dir():  # said before a model loads
        raise PtuneError(f"serve: the tasks directory {tasks_dir} is not a directory")
    if tasks is None:
        tasks = load_tasks(dict(checkpoints or {}), device=device, root=root) if checkpoints or root is None else {}
    base = next(iter(tasks.values())).predictor.session.base if tasks else None
    state = ServingState(tasks, Batcher(limits), limits, tasks_dir=root, device=device, base=base)

    @asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        yield
        await state.batcher.stop()

    app = ServingAPI(state, bool(api_keys), title="ptune", description="P-tuned tasks over one frozen base model.",
                     lifespan=lifespan, redoc_url=None, docs_url=None, openapi_url="/openapi.json")
    app.state.tasks = tasks
    app.state.batcher = state.batcher
    app.state.serving = state
    add_error_handlers(app)
    add_offline_docs(app, keyed=bool(api_keys))
    add_playground(app)
    add_native_routes(app, state)
    add_openai_routes(app, state)
    add_task_routes(app, state)
    add_guards(app, api_keys, hosts)
    return app


def add_guards(app: FastAPI, api_keys: list[str] | None, allowed_hosts: frozenset[str]) -> None:
    """With keys, the key check (``auth.py``); without, the checks that keep other sites' pages out (``guard.py``):
    a page of another site never holds the key, so a keyed server needs no more."""
    if api_keys:
        app.add_middleware(RequireKey, keys=list(api_keys), open_paths=OPEN_PATHS | PAGES,
                           open_prefixes=(f"{DOCS_ASSETS}/",))
    else:
        app.add_middleware(BrowserGuard, allowed_hosts=allowed_hosts)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Errors raised outside our checks (an unknown path, FastAPI's own validation) answer in the same shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        if exc.status_code == 405:  # Allow lists every method of the path (starlette names one route's only)
            allowed = allowed_methods(app, request.scope)
            return JSONResponse({"error": f"method {request.method} is not allowed here; use {allowed}"},
                                status_code=405, headers={"Allow": allowed})
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error_response(422, "invalid request")


def allowed_methods(app: FastAPI, scope) -> str:
    """The methods some route takes at this request's path, e.g. ``GET, HEAD, POST``."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def answer_native(state: ServingState, request: Request, op: str):
    """decode -> predict -> encode for ``/v1/classify`` and ``/v1/generate``."""
    try:
        body = await read_json(request, state.limits)
        task, rows, max_new = check_request(body, state.tasks, op, state.limits)
        preds = await predict(state, task, op, rows, max_new)
    except RequestError as err:
        return error_response(err.status, err.message, err.headers)
    if op == "classify":
        return {"predictions": [{"label": p["prediction"], "scores": p.get("scores", {})} for p in preds]}
    return {"predictions": [{"text": p["prediction"]} for p in preds]}


ERRORS = {400: "invalid JSON or wrong endpoint for the task", 403: "adding or removing tasks is off, or the path is "
          "outside the tasks directory", 404: "unknown task or path",
          409: "the task exists, or --max-tasks tasks are served",
          413: "too many rows or too large", 422: "missing, empty or invalid field",
          408: "the body did not arrive in time", 503: "the queue is full; retry after Retry-After seconds"}


def native_error_docs(*extra: int) -> dict:
    """The error answers of a native endpoint, for the OpenAPI document."""
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
        for code in sorted({400, 404, 413, 422, *extra})}


def add_native_routes(app: FastAPI, state: ServingState) -> None:
    """``/health``, ``/v1/tasks``, ``/v1/classify``, ``/v1/generate``."""

    @app.get("/health")
    async def health(request: Request):
        if not getattr(request.state, KEY_VALID, True):  # keys are set and none was sent: no traffic figures
            return {"status": "ok"}
        return {"status": "ok", "tasks": len(state.tasks), "stats": state.batcher.stats.as_dict()}

    @app.get("/v1/tasks")
    async def list_tasks():
        return {"tasks": [t.describe() for t in state.tasks.values()]}

    # the bodies are declared in the document by ServingAPI.openapi (they are checked by hand, not bound)
    @app.post("/v1/classify", response_model=ClassifyAnswer, responses=native_error_docs(408, 503))
    async def classify(request: Request):
        return await answer_native(state, request, "classify")

    @app.post("/v1/generate", response_model=GenerateAnswer, responses=native_error_docs(408, 503))
    async def generate(request: Request):
        return await answer_native(state, request, "generate")


def add_task_routes(app: FastAPI, state: ServingState) -> None:
    """``POST /v1/tasks`` and ``DELETE /v1/tasks/{name}`` (see ``live.py``)."""

    @app.post("/v1/tasks", status_code=201, responses=native_error_docs(403, 408, 409))
    async def add(request: Request):
        try:
            task = await add_task(state, await read_json(request, state.limits))
        except RequestError as err:
            return error_response(err.status, err.message, err.headers)
        return {"task": task.describe()}

    @app.delete("/v1/tasks/{name}", responses=native_error_docs(403))
    async def remove(name: str):
        try:
            remove_task(state, name)
        except RequestError as err:
            return error_response(err.status, err.message, err.headers)
        return {"deleted": name}
