"""What every route shares: the served tasks, the batcher and the limits, and the two steps all routes take (read
a bounded JSON body; predict through the batcher, turning failures into request errors)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..modeling.base import FrozenBase
from .batcher import Batcher, QueueFull
from .guard import require_json
from .paths import public_message
from .protocol import Limits, RequestError
from .tasks import ServedTask, TaskStore

logger = logging.getLogger("ptune.serve")


@dataclass
class ServingState:
    """The server's state, built once by ``create_app``.

    Args:
        tasks (dict[str, ServedTask]): the tasks by name (the routes see tasks added or removed later).
        batcher (Batcher): runs every model call.
        limits (Limits): request limits.
        tasks_dir (Path | None): where tasks may be added from while serving (None: the tasks are fixed).
        device (str | None): the device override added tasks load with.
        base (FrozenBase | None): the base model every task runs on (added tasks must match it).
        store (TaskStore | None): what the tasks share and where added tasks are loaded (default: the first task's,
            else a new one on ``device`` and ``base``).
    """

    tasks: dict[str, ServedTask]
    batcher: Batcher
    limits: Limits
    tasks_dir: Path | None = None
    device: str | None = None
    base: FrozenBase | None = None
    store: TaskStore | None = None
    changing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    """Held while a task is being added."""
    tasks_version: int = 0
    """Bumped whenever a task is added or removed (what the cached OpenAPI document was built for)."""

    def __post_init__(self):
        if self.store is None:
            first = next(iter(self.tasks.values()), None)
            self.store = first.store if first is not None else TaskStore(self.device, self.base)

    def add(self, name: str, task: ServedTask) -> None:
        """Serve ``task`` as ``name`` from now on."""
        self.tasks[name] = task
        self.tasks_version += 1

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (requests that already hold it finish)."""
        del self.tasks[name]
        self.tasks_version += 1


async def read_json(request, limits: Limits):
    """The body of a starlette ``Request`` as JSON, read no further than ``limits.max_body_bytes`` (with or without
    a content-length) and for no longer than ``limits.body_timeout`` seconds; RequestError 413, 408 (with
    ``Connection: close``: the rest of the body is not waited for) or 400 otherwise."""
    require_json(request.headers)  # 415 before a byte is read: what a page of another site could send is refused
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
        raise RequestError(413, f"the body is larger than {limits.max_body_bytes} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise RequestError(413, f"the body is larger than {limits.max_body_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {limits.body_timeout:g} s ({size} bytes came)",
                           headers={"Connection": "close"}) from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, an integer of over 4300 digits, deep nesting
        raise RequestError(400, f"the body is not valid JSON: {str(err)[:120]}") from None


async def predict(state: ServingState, task: ServedTask, op: str, rows: list[dict], max_new: int) -> list[dict]:
    """The batcher's predictions; a row the task cannot take (e.g. longer than ``max_length`` with its target) is
    the client's 422, anything else a logged 500 that leaves the server running."""
    state.batcher.stats.requests += 1
    try:
        return await state.batcher.submit(task, op, rows, max_new)
    except QueueFull as err:
        raise RequestError(503, f"the server is busy: {err.queued} rows are waiting for the model (the limit is "
                                f"{state.limits.max_queue}); retry later", code="server_busy",
                           headers={"Retry-After": str(retry_after(state.batcher, err.queued))}) from None
    except DataError as err:  # its message may name a file of the server: said by name only
        raise RequestError(422, public_message(str(err), state.tasks_dir)) from None
    except Exception as err:
        logger.exception("prediction for task %r failed", task.name)
        raise RequestError(500, f"prediction failed ({type(err).__name__}); the server is still running") from None


def retry_after(batcher: Batcher, queued: int) -> int:
    """Seconds a refused client should wait: the queued rows at the model's mean seconds per row so far, from 1 to
    60.

    Example:
        >>> retry_after(Batcher(Limits()), 1000)  # nothing measured yet
        1
    """
    stats = batcher.stats
    per_row = stats.model_seconds / stats.rows if stats.rows else 0.0
    return max(1, min(60, math.ceil(queued * per_row)))
