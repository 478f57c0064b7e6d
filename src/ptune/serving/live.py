"""Tasks added and removed while the server runs (``--tasks-dir DIR``).

    POST   /v1/tasks        {"name": NAME, "path": PATH}   -> 201 {"task": {...}}   PATH inside DIR (relative to it,
                                                                                 or absolute); symlinks resolved
    DELETE /v1/tasks/NAME                                 -> {"deleted": NAME}

A new checkpoint is loaded over the server's base model (a checkpoint for another base model is refused with the
reason), on the model thread, between batches. A path that does not exist or holds no checkpoint answers 404; a
checkpoint that cannot be served, 422, its files named relative to DIR. Requests already queued or running keep the
task they named, so they finish after the task is removed. With API keys set, both need the key like every other
endpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ..checkpoint import MANIFEST
from ..errors import PtuneError
from .protocol import NAME_RE, RequestError, unknown_task
from .state import ServingState
from .tasks import ServedTask


def resolve_under(root: Path, path) -> Path:
    """``path`` (relative to ``root``, or absolute) with every symlink resolved; it must exist inside ``root``.

    Args:
        root (Path): the tasks directory, already resolved.
        path: what the client sent.

    Returns:
        Path: the resolved checkpoint directory.

    Example:
        >>> resolve_under(Path("/srv/tasks"), "../etc")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        ptune.serving.protocol.RequestError: '../etc' is outside the tasks directory
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RequestError(422, "'path' must be a non-empty string: a checkpoint directory inside the tasks directory")
    try:
        resolved = (root / path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        resolved = None
    if resolved is not None and not resolved.is_relative_to(root):
        raise RequestError(403, f"{path[:200]!r} is outside the tasks directory")
    if resolved is None or not resolved.is_dir():
        raise RequestError(404, f"no checkpoint directory at {path[:200]!r} in the tasks directory")
    if not (resolved / MANIFEST).is_file():
        raise RequestError(404, f"no checkpoint at {path[:200]!r} in the tasks directory: the folder holds no "
                                f"{MANIFEST}")
    return resolved


def relative_paths(message: str, root: Path, folder: Path) -> str:
    """``message`` without the server's absolute paths (a client is not told where the server keeps its files): the
    checkpoint directory and the tasks directory named relative to the tasks directory, as a client names them, and
    any other quoted absolute path (a base model's folder) by its last part.

    Args:
        message (str): an error message that may name ``folder``, files in it, ``root`` or a base model's folder.
        root (Path): the tasks directory, resolved.
        folder (Path): the checkpoint directory, resolved, inside ``root``.

    Returns:
        str: the message as a client may read it.

    Example:
        >>> relative_paths("/srv/tasks/a/ptune.json: corrupted manifest", Path("/srv/tasks"), Path("/srv/tasks/a"))
        'a/ptune.json: corrupted manifest'
        >>> relative_paths("checkpoint /srv/tasks/a was trained on 'bert', not on '/srv/models/llama'",
        ...                Path("/srv/tasks"), Path("/srv/tasks/a"))
        "checkpoint a was trained on 'bert', not on 'llama'"
    """
    inside = folder.relative_to(root).as_posix()
    message = message.replace(str(folder), inside).replace(f"{root}{os.sep}", "").replace(str(root), ".")
    return re.sub(r"'(/[^']*)'", lambda m: repr(PurePosixPath(m[1]).name), message)


def check_add_request(body, state: ServingState) -> tuple[str, Path]:
    """(name, resolved checkpoint directory) from a ``POST /v1/tasks`` body, or a RequestError."""
    if state.tasks_dir is None:
        raise RequestError(403, "adding tasks is off: start the server with --tasks-dir DIR")
    if not isinstance(body, dict) or set(body) != {"name", "path"}:
        raise RequestError(422, "the body must be {\"name\": NAME, \"path\": PATH}")
    name = body["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RequestError(422, "'name' must be 1-64 letters, digits, '.', '_' or '-'")
    if name in state.tasks:
        raise RequestError(409, f"task {name!r} exists; delete it first to replace it")
    return name, resolve_under(state.tasks_dir, body["path"])


async def add_task(state: ServingState, body) -> ServedTask:
    """Load the checkpoint a ``POST /v1/tasks`` body names and serve it."""
    name, folder = check_add_request(body, state)
    async with state.changing:  # one load at a time: two adds of one name cannot both pass the check above
        if name in state.tasks:
            raise RequestError(409, f"task {name!r} exists; delete it first to replace it")
        try:
            task = await state.batcher.run_alone(state.store.load, name, folder)
        except PtuneError as err:  # another base model, a damaged manifest, ...
            raise RequestError(422, relative_paths(str(err), state.tasks_dir, folder)) from None
        state.tasks[name] = task
        state.base = state.base or task.session.base
    return task


def remove_task(state: ServingState, name: str) -> None:
    """Stop serving ``name``; requests that already hold it finish."""
    if state.tasks_dir is None:
        raise RequestError(403, "removing tasks is off: start the server with --tasks-dir DIR")
    if name not in state.tasks:
        raise unknown_task(name, state.tasks)
    del state.tasks[name]


def add_request_schema() -> dict:
    """The JSON schema of a ``POST /v1/tasks`` body."""
    return {"type": "object", "required": ["name", "path"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": NAME_RE.pattern, "description": "the new task's name"},
        "path": {"type": "string", "minLength": 1,
                 "description": "a checkpoint directory inside the tasks directory (relative to it, or absolute)"}}}
