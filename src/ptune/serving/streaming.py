"""Generation for one row, token by token: each new piece of text is handed to a callback as soon as it is decoded
(for server-sent events). Greedy, as ``GenerationTask.predict``, and with the same text at the end: the pieces
joined equal the stripped decode of all new tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .tasks import ServedTask


class TextPieces(BaseStreamer):
    """A streamer for ``generate``: decodes all new tokens after each step and emits the text not yet emitted.

    Leading and trailing whitespace are held back (the answer is stripped, as ``GenerationTask.predict`` strips
    it), and so is a trailing replacement character (a multi-byte character still incomplete).

    Args:
        tokenizer: the base model's tokenizer.
        emit (Callable[[str], None]): called with each new piece of text, in order.

    Example:
        >>> pieces = TextPieces(tokenizer, print)  # doctest: +SKIP
        >>> model.generate(..., streamer=pieces)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.emit = emit
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_pending = True  # generate() first puts the prompt's ids (none, given embeddings): skipped

    def put(self, value: torch.Tensor) -> None:
        """``value``: (1, k) prompt ids once, then (1,) or (k,) new ids per step."""
        if self.prompt_pending:
            self.prompt_pending = False
            return
        self.add(value.reshape(-1).tolist())

    def add(self, ids: list[int]) -> None:
        """New token ids, in order: emits the text they complete."""
        self.ids.extend(ids)
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if not final:
            text = text.removesuffix("\ufffd")
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text


class StopWhenSet(StoppingCriteria):
    """Stops generation once ``event`` is set (the client went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class StreamResult:
    text: str
    """All the pieces joined."""
    new_tokens: int
    """Tokens generated, the end-of-sequence token included."""
    finish_reason: str
    """``stop`` (end of sequence, or stopped), or ``length`` (the budget ran out)."""


def stream_generation(task: ServedTask, row: dict, max_new_tokens: int, emit: Callable[[str], None],
                      stop: threading.Event | None = None) -> StreamResult:
    """Greedy generation for one row, emitting text pieces as they are decoded. Run it on the model thread.

    Args:
        task (ServedTask): a generation task.
        row (dict): a checked row (the task's fields).
        max_new_tokens (int): the budget.
        emit (Callable[[str], None]): called with each piece of text.
        stop (threading.Event | None): set it to end generation early.

    Returns:
        StreamResult: the whole text, the number of new tokens and why generation ended.

    Example:
        >>> stream_generation(task, {"text": "hello"}, 16, print).finish_reason  # doctest: +SKIP
        'stop'
    """
    predictor = task.predictor
    objective = predictor.session.task
    tok = objective.renderer.tokenizer
    model = predictor.model
    model.eval()
    pieces = TextPieces(tok, emit)
    with torch.inference_mode():
        batch = objective.batch([objective.renderer.encode(row)], predictor.session.device)
        if model.deep is not None:  # the deep prompt's own greedy loop: the text comes at once, not token by token
            pieces.add(model.generate(batch, max_new_tokens, tok.eos_token_id, tok.pad_token_id)[0].tolist())
            pieces.end()
            return stream_result(pieces, tok.eos_token_id, max_new_tokens)
        embeds = model.embed(batch["input_ids"], batch["virtual_index"])  # (1, T, d)
        # as PTuningModel.generate, with the streamer and a stop switch
        model.base.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, streamer=pieces,
                            stopping_criteria=StoppingCriteriaList([StopWhenSet(stop or threading.Event())]))
    return stream_result(pieces, tok.eos_token_id, max_new_tokens)


def stream_result(pieces: TextPieces, eos_token_id: int | None, max_new_tokens: int) -> StreamResult:
    """What a finished generation streamed: its text, its token count and why it ended (``length`` when the budget
    ran out before the end-of-sequence token, else ``stop``).

    Args:
        pieces (TextPieces): the streamer, after ``end()``.
        eos_token_id (int | None): the end-of-sequence token.
        max_new_tokens (int): the budget.

    Returns:
        StreamResult: the result.

    Example:
        >>> stream_result(pieces, tok.eos_token_id, 16).finish_reason  # doctest: +SKIP
        'length'
    """
    ended = bool(pieces.ids) and pieces.ids[-1] == eos_token_id
    reason = "length" if len(pieces.ids) >= max_new_tokens and not ended else "stop"
    return StreamResult(pieces.sent, len(pieces.ids), reason)
