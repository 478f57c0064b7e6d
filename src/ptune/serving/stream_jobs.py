"""Streamed generations decoded a slice at a time, between the batcher's ordinary batches.

A ``StreamJob`` is one ``stream: true`` generation. Its first turn runs the prompt (the task's prompt table spliced
into its embeddings) once into a KV cache; every turn decodes at most ``Limits.stream_slice_tokens`` tokens from that
cache and hands the new text to the client. The batcher gives the model to queued batches between turns, so a
request behind a long stream waits about one slice, not the whole stream.

    turn 1     prompt (1, T) -> cache, first token       turns 2..  last token (1, 1) + cache -> next token
    stop       end of sequence, the budget spent, or the client gone (checked before every token)

The loop is ``generate``'s greedy search written out (the same forward calls: the prompt once with positions counted
from the attention mask, then one token at a time on the cache, ``logits_to_keep=1``), so the text is the one
``generate`` gives. Where ``generate`` would do more than that, the whole generation is one turn through
``generate`` itself (``streaming.stream_generation``), as before: a seq2seq or cache-less base, or a generation
config that changes greedy search (beams, penalties, forced or suppressed tokens, a static cache).

``StreamSlots`` counts the streams open at once against ``Limits.max_streams``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import torch

from ..modeling.ptuning import PTuningModel
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
    if model.kind != "causal" or getattr(model, "cache_arg", None) is None:
        return False
    config = getattr(model.base, "generation_config", None)
    return config is None or all(getattr(config, key, None) in plain for key, plain in GREEDY_AS_IS.items())


class StreamJob:
    """One streamed generation: its KV cache between turns, the tokens so far, and where its text goes.

    Args:
        task (ServedTask): a generation task.
        row (dict): a checked row (the task's fields).
        max_new_tokens (int): the budget.
        emit (Callable[[str], None]): called on the model thread with each new piece of text.
        stop (threading.Event): set when the client has gone; the job ends before its next token.

    Example:
        >>> job = StreamJob(task, {"text": "hello"}, 16, print, threading.Event())  # doctest: +SKIP
        >>> while not job.advance(4):  # on the model thread, between other work  # doctest: +SKIP
        ...     pass
        >>> job.result.finish_reason  # doctest: +SKIP
        'stop'
    """

    def __init__(self, task: ServedTask, row: dict, max_new_tokens: int, emit: Callable[[str], None],
                 stop: threading.Event):
        self.task = task
        self.row = row
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.pieces = TextPieces(task.session.task.renderer.tokenizer, emit)
        self.result: StreamResult | None = None
        """Set once the generation is over."""
        self.future: asyncio.Future | None = None
        """Given by the batcher: gets ``result`` (or the error) when the job ends."""
        self.model: PTuningModel | None = None
        self.cache = None
        self.mask: torch.Tensor | None = None  # (1, tokens so far): the attention mask over the cache and the input

    def advance(self, tokens: int) -> bool:
        """Decode at most ``tokens`` more tokens (the first turn runs the prompt first). Run it on the model thread.

        Args:
            tokens (int): the slice.

        Returns:
            bool: True once the generation is over (``result`` is then set).
        """
        if self.stop.is_set():  # the client has gone: no token more, not even the prompt's
            return self._finish()
        with torch.inference_mode():
            if self.model is None:
                self.model = self.task.model  # kept for the whole stream, even if the store lets it go
                if not decodes_in_slices(self.model):
                    self.result = stream_generation(self.task, self.row, self.max_new_tokens, self.pieces.emit,
                                                    self.stop)
                    return True
            eos = self.pieces.tokenizer.eos_token_id
            for i in range(tokens):
                if i and self.stop.is_set():
                    return self._finish()
                logits = self._prompt() if self.cache is None else self._next()  # (V,)
                token = int(logits.argmax())
                self.pieces.add([token])
                if token == eos or len(self.pieces.ids) >= self.max_new_tokens:
                    return self._finish()
        return False

    def _prompt(self) -> torch.Tensor:
        """Run the prompt into a new cache; the first token's logits."""
        from transformers import DynamicCache

        session, model = self.task.session, self.model
        objective = session.task
        batch = objective.batch([objective.renderer.encode(self.row)], session.device)
        embeds = model.embed(batch["input_ids"], batch["virtual_index"])  # (1, T, d)
        self.mask = batch["attention_mask"]
        positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 1)  # as generate counts them
        # as generate builds it: a sliding-window layer keeps its window only
        self.cache = DynamicCache(config=model.base.config.get_text_config(decoder=True))
        return self._forward(inputs_embeds=embeds, position_ids=positions)

    def _next(self) -> torch.Tensor:
        """Run the last token on the cache; the next token's logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(1, 1)], dim=1)
        ids = torch.tensor([self.pieces.ids[-1:]], device=self.mask.device)  # (1, 1)
        return self._forward(input_ids=ids, position_ids=self.mask.long().sum(-1, keepdim=True) - 1)

    def _forward(self, **inputs) -> torch.Tensor:
        model = self.model
        keep = {"logits_to_keep": 1} if model.keeps_logits else {}
        out = model.base(**inputs, attention_mask=self.mask, use_cache=True, **{model.cache_arg: self.cache}, **keep)
        return out.logits[0, -1].float()

    def _finish(self) -> bool:
        self.pieces.end()
        self.result = stream_result(self.pieces, self.pieces.tokenizer.eos_token_id, self.max_new_tokens)
        self.cache = self.mask = None  # the cache's memory goes now, not when the client's answer is sent
        return True


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
