"""Dynamic batching: requests are queued; the batcher collects what arrives within ``Limits.batch_wait_ms``, groups
rows by task (and ``max_new_tokens``), and runs each group as one prediction call on a single worker thread, so the
model is never used by two threads at once and concurrent requests share batches. Classification rows of different
tasks collected together share model calls too (``Limits.mix_tasks``): each row splices its own task's prompt
table. Streamed generations are decoded on the same thread a few tokens per turn (``stream_jobs``: the open streams
take turns, or with ``Limits.stream_batch`` advance together, one model call per token), with the batches collected
meanwhile run between turns (and no wait for more rows while a stream is open)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..tasks.mixed import MixedGroup
from .protocol import Limits
from .stream_jobs import StreamDecoder, StreamJob, StreamSlots
from .streaming import StreamResult
from .tasks import ServedTask


class QueueFull(Exception):
    """``Batcher.submit`` refused rows: the queue holds ``Limits.max_queue`` rows already (``queued`` of them)."""

    def __init__(self, queued: int):
        super().__init__(f"{queued} rows are waiting for the model")
        self.queued = queued


@dataclass
class Job:
    """One request's rows, waiting for a batch; ``future`` gets their predictions in row order."""

    task: ServedTask
    op: str
    rows: list[dict]
    max_new_tokens: int
    future: asyncio.Future


@dataclass
class Stats:
    """Counters shown by ``/health``."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    model_seconds: float = 0.0
    largest_batch: int = 0
    mixed_batches: int = 0
    """Model calls that held rows of more than one task."""
    stream_tokens: int = 0
    """Tokens decoded for streamed generations (their model time is ``stream_seconds``, not ``model_seconds``)."""
    stream_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "rows": self.rows, "batches": self.batches,
                "mean_rows_per_batch": round(self.rows / self.batches, 2) if self.batches else 0.0,
                "largest_batch": self.largest_batch, "mixed_batches": self.mixed_batches,
                "model_seconds": round(self.model_seconds, 3), "stream_tokens": self.stream_tokens,
                "stream_seconds": round(self.stream_seconds, 3)}


def predict_rows(task: ServedTask, rows: list[dict], max_new_tokens: int) -> list[dict]:
    """The checkpoint's predictions for ``rows``; a generation task generates at most ``max_new_tokens``.

    Args:
        task (ServedTask): the task.
        rows (list[dict]): checked rows (only the task's fields).
        max_new_tokens (int): the generation budget (ignored by other task types).

    Returns:
        list[dict]: one ``{"prediction": ..., ("scores": {...})}`` per row, in order.

    Example:
        >>> predict_rows(task, [{"text": "hello"}], 5)  # doctest: +SKIP
        [{'prediction': 'hi there'}]
    """
    session, model = task.session, task.model
    objective = session.task
    if task.type == "generation" and max_new_tokens != objective.cfg.max_new_tokens:
        # a copy of the task with this request's budget: the served task itself is never changed
        objective = dataclasses.replace(objective, cfg=dataclasses.replace(objective.cfg,
                                                                           max_new_tokens=max_new_tokens))
    with torch.inference_mode():
        return objective.predict(model, rows, session.cfg.train.eval_batch_size, session.device)


def predict_mixed(groups: list[tuple[ServedTask, list[dict]]]) -> list[list[dict]]:
    """Classification rows of several tasks of one store, in shared model calls (``tasks.mixed.MixedScorer``): only
    the tables of the tasks present are stacked, and a task's own model is built only where the shared pass cannot
    serve it.

    Args:
        groups (list[tuple[ServedTask, list[dict]]]): each task (``mixable``) and its checked rows.

    Returns:
        list[list[dict]]: per group, one ``{"prediction", "scores"}`` per row, in order.

    Example:
        >>> predict_mixed([(topics, [{"text": "late parcel"}]), (sentiment, [{"text": "great"}])])  # doctest: +SKIP
    """
    first = groups[0][0]
    parts = [MixedGroup(task.session.task, task.table, rows, functools.partial(task.store.model, task))
             for task, rows in groups]
    with torch.inference_mode():
        return first.store.mixer.classify(parts, first.session.cfg.train.eval_batch_size, first.session.device)


class Batcher:
    """Collects queued jobs into model calls on one worker thread.

    Args:
        limits (Limits): ``batch_wait_ms``, ``max_batch_rows``, ``mix_tasks``, ``max_queue`` and the streams'
            ``max_streams``, ``stream_slice_tokens`` and ``stream_batch`` are read.

    Example:
        >>> batcher = Batcher(Limits())  # doctest: +SKIP
        >>> batcher.start()  # inside the event loop  # doctest: +SKIP
        >>> preds = await batcher.submit(task, "classify", [{"text": "hi"}], 16)  # doctest: +SKIP
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self.queue: asyncio.Queue = asyncio.Queue()
        self.queued_rows = 0
        """Rows submitted and not yet collected into a batch (bounded by ``limits.max_queue``)."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptune-model")
        self.stats = Stats()
        self._runner: asyncio.Task | None = None
        self.streams: set[StreamJob] = set()
        """Streamed generations open in the batcher (``decoder`` holds them on the model thread)."""
        self.decoder = StreamDecoder(limits.stream_batch)
        self._arrived: list[StreamJob] = []  # streams not yet handed to the decoder
        self.stream_slots = StreamSlots(limits.max_streams)
        """Streams open (taken by the routes, up to ``limits.max_streams``)."""
        self._stream_arrived = asyncio.Event()

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._runner:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
        for job in self.streams:
            job.stop.set()
            if job.future and not job.future.done():
                job.future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, task: ServedTask, op: str, rows: list[dict], max_new_tokens: int) -> list[dict]:
        """Queue rows for the next batch; returns their predictions in row order. Raises QueueFull at once when
        the rows would take the queue past ``limits.max_queue`` (a request at an empty queue is always taken)."""
        if self.queued_rows and self.queued_rows + len(rows) > self.limits.max_queue:
            raise QueueFull(self.queued_rows)
        future = asyncio.get_running_loop().create_future()
        self.queued_rows += len(rows)
        self.queue.put_nowait(Job(task, op, rows, max_new_tokens, future))
        return await future

    async def stream(self, job: StreamJob) -> StreamResult:
        """Decode ``job`` a slice per turn between batches, its text going out through its ``emit``; returns its
        result once it is over (its ``stop`` set ends it at the next turn)."""
        job.future = asyncio.get_running_loop().create_future()
        self.streams.add(job)
        self._arrived.append(job)
        self._stream_arrived.set()
        try:
            return await job.future
        finally:
            job.stop.set()  # the caller gone (cancelled): the job ends at its next turn

    async def run_alone(self, fn, *args):
        """Run ``fn(*args)`` on the model thread, between batches (counting tokens, loading a task)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _first_job(self) -> Job | None:
        """The next queued job: while streams are open, only one already queued (else None); otherwise the first to
        arrive, or None when a stream arrives first."""
        if self.streams:
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        self._stream_arrived.clear()
        get = asyncio.ensure_future(self.queue.get())
        arrived = asyncio.ensure_future(self._stream_arrived.wait())
        try:
            await asyncio.wait((get, arrived), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
            if not get.done():
                get.cancel()  # nothing taken: a cancelled get leaves the queue as it was
        return get.result() if get.done() and not get.cancelled() else None

    async def _collect(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        first = await self._first_job()
        if first is None:
            return []
        jobs = [first]
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

    def _plan(self, jobs: list[Job]) -> list[list[Job] | list[list[Job]]]:
        """Model calls for the collected jobs: one per (task, op, budget) group, and the mixable classification
        groups of several tasks of one store as one call (a list of groups) through the store's scorer."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if not job.future.done():  # a client that went away is not computed for
                groups.setdefault((job.task, job.op, job.max_new_tokens), []).append(job)
        calls = list(groups.values())
        if not self.limits.mix_tasks:
            return calls
        by_store: dict[int, list[list[Job]]] = {}
        for group in calls:
            if group[0].task.mixable:
                by_store.setdefault(id(group[0].task.store), []).append(group)
        # one row of a task whose model is not kept goes to the shared scorer too: building the model would cost
        # more than its prefix cache can save on one row
        mixed = [m for m in by_store.values() if len(m) > 1 or (sum(len(j.rows) for j in m[0]) == 1
                                                                and not m[0][0].task.store.keeps(m[0][0].task))]
        in_mixed = {id(g) for m in mixed for g in m}
        return [g for g in calls if id(g) not in in_mixed] + mixed

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self.queued_rows -= sum(len(j.rows) for j in jobs)
            for call in self._plan(jobs):
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
            if self.streams:
                await self._stream_turn()

    async def _stream_turn(self) -> None:
        """One turn of the streams (``StreamDecoder.turn``); the jobs that ended get their result or error."""
        arrived, self._arrived = self._arrived, []
        ended = await asyncio.get_running_loop().run_in_executor(self.executor, self._turn, arrived)
        for job in ended:
            self.streams.discard(job)
            if not job.future.done():
                if job.error is not None:
                    job.future.set_exception(job.error)
                else:
                    job.future.set_result(job.result)

    def _turn(self, arrived: list[StreamJob]) -> list[StreamJob]:
        t0, before = time.perf_counter(), self.decoder.tokens
        ended = self.decoder.turn(arrived, self.limits.stream_slice_tokens)
        with self.stats.lock:
            self.stats.stream_tokens += self.decoder.tokens - before
            self.stats.stream_seconds += time.perf_counter() - t0
        return ended

    def _predict_mixed(self, groups: list[list[Job]]) -> list[dict]:
        """Classification rows of (usually) several tasks, one set of model calls; predictions in job order."""
        t0 = time.perf_counter()
        parts = [(g[0].task, [r for j in g for r in j.rows]) for g in groups]
        out = predict_mixed(parts)
        self._count(sum(len(rows) for _, rows in parts), t0)
        with self.stats.lock:
            self.stats.mixed_batches += len(parts) > 1
        return [p for preds in out for p in preds]

    def _predict(self, job: Job, rows: list[dict]) -> list[dict]:
        t0 = time.perf_counter()
        preds = predict_rows(job.task, rows, job.max_new_tokens)
        self._count(len(rows), t0)
        return preds

    def _count(self, rows: int, t0: float) -> None:
        with self.stats.lock:
            self.stats.batches += 1
            self.stats.rows += rows
            self.stats.largest_batch = max(self.stats.largest_batch, rows)
            self.stats.model_seconds += time.perf_counter() - t0
