"""Tasks added and removed while the server runs (``--tasks-dir DIR``).

    POST   /v1/tasks        {"name": NAME, "path": PATH}   -> 201 {"task": {...}}   PATH inside DIR (relative to it,
                                                                                 or absolute); symlinks resolved
    DELETE /v1/tasks/NAME                                 -> {"deleted": NAME}

A new checkpoint is loaded over the server's base model (a checkpoint for another base model is refused with the
reason): its files are read and verified on a worker thread, and only the device work (its prompt table, shared with
tasks of the same prompts file) runs on the model thread, between batches. A path outside DIR answers 403 before
anything on disk is read; one that does not exist, leads outside through a symlink, or holds no checkpoint, 404; a
checkpoint that cannot be served (a file it names leads outside DIR, a file the server cannot read, a damaged or
crafted manifest), 422, its files named relative to DIR; no answer holds an absolute path of the server
(``paths.public_message``). At most ``Limits.max_tasks`` tasks are served (409 beyond). Requests already queued or
running keep the task they named, so they finish after the task is removed. With API keys set, both need the key
like every other endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..checkpoint import MANIFEST
from ..errors import PtuneError
from .paths import checkpoint_dir, public_message
from .protocol import NAME_RE, NAME_RULE, RequestError, unknown_task, valid_name
from .state import ServingState
from .tasks import ServedTask

logger = logging.getLogger("ptune.serve")

MANIFEST_ERRORS = (ValueError, TypeError, LookupError, AttributeError)
"""What a crafted manifest's values can raise on their way into a task (a label that is not text, ...)."""


def check_add_request(body, state: ServingState) -> tuple[str, Path]:
    """(name, resolved checkpoint directory) from a ``POST /v1/tasks`` body, or a RequestError."""
    if state.tasks_dir is None:
        raise RequestError(403, "adding tasks is off: start the server with --tasks-dir DIR")
    if not isinstance(body, dict) or set(body) != {"name", "path"}:
        raise RequestError(422, "the body must be {\"name\": NAME, \"path\": PATH}")
    name = body["name"]
    if not valid_name(name):
        raise RequestError(422, f"'name' must be {NAME_RULE}")
    check_room(state, name)
    try:
        return name, checkpoint_dir(state.tasks_dir, body["path"])
    except RequestError as err:  # an absolute path the client sent is said by its last part, like any other
        raise RequestError(err.status, public_message(err.message, state.tasks_dir)) from None


def check_room(state: ServingState, name: str) -> None:
    """A RequestError 409 if ``name`` is served, or if the server serves its limit of tasks."""
    if name in state.tasks:
        raise RequestError(409, f"task {name!r} exists; delete it first to replace it")
    limit = state.limits.max_tasks
    if len(state.tasks) >= limit:
        raise RequestError(409, f"the server serves {len(state.tasks)} tasks, its limit (--max-tasks {limit}); delete "
                                "a task first, or restart the server with a larger --max-tasks")


def add_error(err: Exception, state: ServingState, name: str, folder: Path) -> RequestError:
    """The answer to a live add that failed with ``err``: what the client can act on, as JSON, without the server's
    paths; anything unforeseen is logged and answered as a 500 that names its kind."""
    root = state.tasks_dir
    if isinstance(err, PtuneError):  # another base model, a damaged manifest, a file outside the directory, ...
        return RequestError(422, public_message(str(err), root))
    if isinstance(err, OSError):  # a file the server may not read
        where = err.filename if err.filename is not None else folder
        return RequestError(422, public_message(f"cannot read {where}: {err.strerror or err}", root))
    if isinstance(err, MANIFEST_ERRORS):
        return RequestError(422, public_message(f"{folder / MANIFEST}: the manifest holds an invalid value "
                                                f"({type(err).__name__}: {str(err)[:200]})", root))
    logger.error("adding task %r from %s failed", name, folder, exc_info=err)
    return RequestError(500, f"adding task {name!r} failed ({type(err).__name__}); the server is still running and "
                             "serves its other tasks")


async def add_task(state: ServingState, body) -> ServedTask:
    """Load the checkpoint a ``POST /v1/tasks`` body names and serve it: files read on a worker thread, the task
    built on the model thread."""
    name, folder = check_add_request(body, state)
    async with state.changing:  # one load at a time: two adds of one name cannot both pass the check above
        check_room(state, name)
        try:
            saved = await asyncio.to_thread(state.store.read, folder, state.tasks_dir)
            task = await state.batcher.run_alone(state.store.serve, name, saved)
        except Exception as err:  # noqa: BLE001 (every failure is answered as JSON: add_error)
            raise add_error(err, state, name, folder) from None
        state.add(name, task)
        state.base = state.base or task.session.base
    return task


def remove_task(state: ServingState, name: str) -> None:
    """Stop serving ``name``; requests that already hold it finish."""
    if state.tasks_dir is None:
        raise RequestError(403, "removing tasks is off: start the server with --tasks-dir DIR")
    if name not in state.tasks:
        raise unknown_task(name, state.tasks)
    state.remove(name)


def add_request_schema() -> dict:
    """The JSON schema of a ``POST /v1/tasks`` body."""
    return {"type": "object", "required": ["name", "path"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": NAME_RE.pattern, "description": "the new task's name"},
        "path": {"type": "string", "minLength": 1,
                 "description": "a checkpoint directory inside the tasks directory (relative to it, or absolute)"}}}
