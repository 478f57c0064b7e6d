"""Streamed generations decoded a few tokens per turn, between the batcher's ordinary batches.

A ``StreamJob`` is one ``stream: true`` generation. Its first turn runs the prompt (the task's prompt table spliced
into its embeddings) once into a KV cache and picks the first token; it then decodes in a ``StreamGroup``, at most
``Limits.stream_slice_tokens`` tokens per turn, and hands out its new text. The batcher gives the model to queued
batches between turns, so a request behind long streams waits about one turn, not the streams' whole length.

    a stream's first turn     prompt (1, T) -> its own cache, first token
    a group's turn            last tokens (B, 1) + the group's cache (B, ..., L) -> next tokens
    a stream ends             end of sequence, its budget spent, or its client gone (checked before every token)

By default every stream is a group of its own and the groups take turns: each stream's forward calls are the ones
it makes alone. With ``Limits.stream_batch`` the streams over one base share a group, their caches held as one
left-padded batch, so a token for all of them costs one model call; a batch's rounding can then turn a near tie
(bfloat16 does), so a stream's text may differ from the one it has alone.

The loop is ``generate``'s greedy search written out (the same forward calls: the prompt alone, positions counted
from the attention mask, then one token at a time on the cache with ``logits_to_keep=1``), so a stream's text is
the one ``generate`` gives. Where ``generate`` would do more than that, the whole generation is one turn through
``generate`` itself (``streaming.stream_generation``), as before: a seq2seq or cache-less base, or a generation
config that changes greedy search (beams, penalties, forced or suppressed tokens, a static cache). A base whose cache
is not one plain tensor per layer (sliding-window layers keep their window only) never shares a group.

``StreamDecoder`` holds the streams and plans the turns; ``StreamSlots`` counts the streams open at once against
``Limits.max_streams``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..modeling.ptuning import PTuningModel
from ..modeling.scoring import new_cache
from .streaming import StreamResult, TextPieces, stream_generation, stream_result
from .tasks import ServedTask

GREEDY_AS_IS = {
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,), "dola_layers": (None,),
    "repetition_penalty": (None, 1, 1.0), "encoder_repetition_penalty": (None, 1, 1.0),
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "sequence_bias": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False), "guidance_scale": (None, 1),
    "remove_invalid_values": (None, False), "watermarking_config": (None,), "cache_implementation": (None, "dynamic"),
    "prefill_chunk_size": (None,), "prompt_lookup_num_tokens": (None,),
}
"""Generation-config keys whose values leave ``generate``'s greedy search plain (no logits processor, beam, or other
cache): any other value sends the stream through ``generate`` whole."""


def decodes_in_slices(model: PTuningModel) -> bool:
    """Whether greedy decoding written out gives ``generate``'s tokens for ``model``: a causal base with a KV-cache
    argument, whose generation config asks for nothing but greedy search.

    Args:
        model (PTuningModel): a task's model.

    Returns:
        bool: True where a stream can be decoded in slices.

    Example:
        >>> decodes_in_slices(task.model)  # a Llama with a plain generation config  # doctest: +SKIP
        True
    """
    if model.kind != "causal" or getattr(model, "cache_arg", None) is None or model.deep is not None:
        return False  # a deep prompt's keys and values are not in a stream's cache: streamed whole (``streaming``)
    config = getattr(model.base, "generation_config", None)
    return config is None or all(getattr(config, key, None) in plain for key, plain in GREEDY_AS_IS.items())


class StreamJob:
    """One streamed generation: the tokens so far, where its text goes, and until it joins a group its own cache.

    Args:
        task (ServedTask): a generation task.
        row (dict): a checked row (the task's fields).
        max_new_tokens (int): the budget.
        emit (Callable[[str], None]): called on the model thread with each new piece of text.
        stop (threading.Event): set when the client has gone; the job ends before its next token.

    Example:
        >>> decoder = StreamDecoder()  # doctest: +SKIP
        >>> job = StreamJob(task, {"text": "hello"}, 16, print, threading.Event())  # doctest: +SKIP
        >>> done = decoder.turn([job], 4)  # on the model thread, between other work  # doctest: +SKIP
    """

    def __init__(self, task: ServedTask, row: dict, max_new_tokens: int, emit: Callable[[str], None],
                 stop: threading.Event):
        self.task = task
        self.row = row
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.pieces = TextPieces(task.session.task.renderer.tokenizer, emit)
        self.result: StreamResult | None = None
        """Set once the generation is over (``error`` instead when it failed)."""
        self.error: Exception | None = None
        self.future: asyncio.Future | None = None
        """Given by the batcher: gets ``result`` (or ``error``) when the job ends."""
        self.model: PTuningModel | None = None
        self.cache = None  # the prompt's cache until the job joins a group
        self.mask: torch.Tensor | None = None  # (1, T) its attention mask, with it

    @property
    def over(self) -> bool:
        return self.result is not None or self.error is not None

    def start(self) -> None:
        """The first turn: the prompt into a new cache and the first token, or, where greedy decoding written out
        could differ from ``generate``, the whole generation through ``generate``. Run it on the model thread."""
        if self.stop.is_set():  # the client has gone: not even the prompt runs
            self.finish()
            return
        self.model = self.task.model  # kept for the whole stream, even if the store lets it go
        if not decodes_in_slices(self.model):
            self.result = stream_generation(self.task, self.row, self.max_new_tokens, self.pieces.emit, self.stop)
            return
        from transformers import DynamicCache

        session, model = self.task.session, self.model
        objective = session.task
        batch = objective.batch([objective.renderer.encode(self.row)], session.device)
        embeds = model.embed(batch["input_ids"], batch["virtual_index"])  # (1, T, d)
        self.mask = batch["attention_mask"]
        positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 1)  # as generate counts them
        # as generate builds it: a sliding-window layer keeps its window only
        self.cache = DynamicCache(config=model.base.config.get_text_config(decoder=True))
        keep = {"logits_to_keep": 1} if model.keeps_logits else {}
        logits = model.base(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions, use_cache=True,
                            **{model.cache_arg: self.cache}, **keep).logits
        self.take(int(logits[0, -1].float().argmax()))

    def take(self, token: int) -> None:
        """The next token: its text goes out, and the job ends at the end-of-sequence token or its budget."""
        self.pieces.add([token])
        if token == self.pieces.tokenizer.eos_token_id or len(self.pieces.ids) >= self.max_new_tokens:
            self.finish()

    def finish(self) -> None:
        self.pieces.end()
        self.result = stream_result(self.pieces, self.pieces.tokenizer.eos_token_id, self.max_new_tokens)
        self.cache = self.mask = None  # the cache's memory goes now, not when the client's answer is sent


def batchable(job: StreamJob) -> bool:
    """Whether ``job``'s cache can join other streams' as rows of one batch: one keys and one values tensor per
    layer, every position kept (not a sliding-window layer's last ones only)."""
    from transformers.cache_utils import DynamicLayer

    return getattr(job.model, "window", None) is None and all(type(layer) is DynamicLayer
                                                              for layer in job.cache.layers)


def left_padded(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``x`` with zeros before it along ``dim`` up to ``length``."""
    pad = [0, 0] * (x.dim() - 1 - dim) + [length - x.shape[dim], 0]
    return F.pad(x, pad)


class StreamGroup:
    """Streams over one base model decoded together: their caches as one batch, left-padded to one length, and one
    model call per token for all of them.

    Args:
        model (PTuningModel): a model over the base (any task's: only its base and cache argument are used).
        shared (bool): whether other streams may join (``batchable``); else the group holds one stream, its cache
            as the prompt left it.

    Example:
        >>> group = StreamGroup(job.model, shared=True)  # doctest: +SKIP
        >>> group.join(job)  # a started job  # doctest: +SKIP
        >>> finished = group.decode(4)  # doctest: +SKIP
    """

    def __init__(self, model: PTuningModel, shared: bool):
        self.model = model
        self.shared = shared
        self.jobs: list[StreamJob] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # (B, L): 0 at each row's left pads

    def join(self, job: StreamJob) -> None:
        """Take a started job's cache in as one more row."""
        if not self.jobs:
            self.cache, self.mask = job.cache, job.mask
        else:
            length = max(self.mask.shape[1], job.mask.shape[1])
            self.cache = self._cache([[torch.cat([left_padded(ours, length, 2), left_padded(its, length, 2)])
                                       for ours, its in zip(layer, joining)]
                                      for layer, joining in zip(layer_tensors(self.cache), layer_tensors(job.cache))])
            self.mask = torch.cat([left_padded(self.mask, length, 1), left_padded(job.mask, length, 1)])
        self.jobs.append(job)
        job.cache = job.mask = None

    def decode(self, tokens: int) -> list[StreamJob]:
        """At most ``tokens`` tokens for every stream, one call each; the jobs that ended (they leave the group)."""
        ended: list[StreamJob] = []
        for _ in range(tokens):
            ended += self._drop([j for j in self.jobs if j.stop.is_set()], finish=True)
            if not self.jobs:
                break
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.jobs), 1)], dim=1)
            last = torch.tensor([[j.pieces.ids[-1]] for j in self.jobs], device=self.mask.device)  # (B, 1)
            model = self.model
            keep = {"logits_to_keep": 1} if model.keeps_logits else {}
            logits = model.base(input_ids=last, attention_mask=self.mask, position_ids=self.mask.long().sum(
                -1, keepdim=True) - 1, use_cache=True, **{model.cache_arg: self.cache}, **keep).logits
            for job, token in zip(self.jobs, logits[:, -1].float().argmax(-1).tolist()):
                job.take(token)
            ended += self._drop([j for j in self.jobs if j.over], finish=False)
        return ended

    def fail(self, err: Exception) -> list[StreamJob]:
        """Every job fails with ``err``; the group is empty after."""
        for job in self.jobs:
            job.error = err
        return self._drop(list(self.jobs), finish=False)

    def _drop(self, leaving: list[StreamJob], finish: bool) -> list[StreamJob]:
        """Take ``leaving`` out of the batch (and its pads that no row needs any more)."""
        if not leaving:
            return []
        for job in leaving:
            if finish:
                job.finish()
        rows = [i for i, j in enumerate(self.jobs) if j not in leaving]
        self.jobs = [self.jobs[i] for i in rows]
        if not rows:
            self.cache = self.mask = None
            return leaving
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).long().argmax())  # the first column some row still uses
        self.mask = mask[:, first:]
        self.cache = self._cache([[t.index_select(0, index)[:, :, first:] for t in layer]
                                  for layer in layer_tensors(self.cache)])
        return leaving

    @staticmethod
    def _cache(layers: list[list[torch.Tensor]]):
        cache = new_cache()
        for i, (keys, values) in enumerate(layers):
            cache.update(keys, values, i)
        return cache


def layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values (rows, heads, L, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class StreamDecoder:
    """The open streams and their turns. A turn starts one new stream (its prompt, or its whole generation through
    ``generate``), or else decodes one slice for one group; groups take turns in order. Use it on the model thread.

    Args:
        batch (bool): decode the streams over one base as one group (``Limits.stream_batch``): one model call per
            token for all of them, but a stream's text may then differ from the one it has alone wherever the
            batch's rounding turns a near tie (bfloat16 does); off, each stream is a group of its own and its text
            is exactly the whole answer's.

    Example:
        >>> decoder = StreamDecoder()  # doctest: +SKIP
        >>> ended = decoder.turn([job], 4)  # job's prompt runs  # doctest: +SKIP
        >>> ended = decoder.turn([], 4)  # its group decodes 4 tokens  # doctest: +SKIP
    """

    def __init__(self, batch: bool = False):
        self.batch = batch
        self.new: deque[StreamJob] = deque()
        self.groups: deque[StreamGroup] = deque()
        self.tokens = 0
        """Tokens decoded so far, all streams together."""

    def turn(self, arrived: list[StreamJob], tokens: int) -> list[StreamJob]:
        """One turn, after taking in the streams ``arrived`` since the last one.

        Args:
            arrived (list[StreamJob]): new jobs, in arrival order.
            tokens (int): the slice (``Limits.stream_slice_tokens``).

        Returns:
            list[StreamJob]: the jobs that ended in this turn (``result`` or ``error`` set).
        """
        self.new.extend(arrived)
        if self.new:
            job = self.new.popleft()
            with torch.inference_mode():
                ended = self._start(job)
            self.tokens += len(job.pieces.ids)
            return ended
        if not self.groups:
            return []
        group = self.groups[0]
        self.groups.rotate(-1)
        before = sum(len(job.pieces.ids) for job in group.jobs)
        try:
            with torch.inference_mode():
                ended = group.decode(tokens)
        except Exception as err:  # these streams fail, the others and the server go on
            ended = group.fail(err)
        self.tokens += sum(len(job.pieces.ids) for job in group.jobs + ended) - before
        if not group.jobs:
            self.groups.remove(group)
        return ended

    def _start(self, job: StreamJob) -> list[StreamJob]:
        try:
            job.start()
        except Exception as err:  # this stream fails, the others and the server go on
            job.error = err
        if job.over:
            return [job]
        shared = self.batch and batchable(job)
        group = next((g for g in self.groups if shared and g.shared and g.model.base is job.model.base), None)
        if group is None:
            group = StreamGroup(job.model, shared)
            self.groups.append(group)
        group.join(job)
        return []

    @property
    def idle(self) -> bool:
        return not self.new and not self.groups


class StreamSlots:
    """How many streamed generations are open, against a cap. Use it on the event loop's thread.

    Args:
        limit (int): the most open at once (``Limits.max_streams``).

    Example:
        >>> slots = StreamSlots(1)
        >>> release = slots.take()
        >>> slots.take() is None
        True
        >>> release(); release()  # once counts, twice does nothing
        >>> slots.open
        0
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0

    def take(self) -> Callable[[], None] | None:
        """A slot: the function that gives it back (calling it again does nothing), or None when all are taken."""
        if self.open >= self.limit:
            return None
        self.open += 1
        given_back = False

        def release() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.open -= 1
        return release
