"""What every task type shares: length-sorted batching, padded batches (with the prefix every row shares taken
out once), and the interface a task type implements (training examples, loss, predictions, metrics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TaskConfig
from ..data.labels import LabelSpace
from ..data.packing import pack as pack_rows
from ..data.render import Encoded, Renderer, collate, split_shared_prefix
from ..data.tables import Table
from ..modeling.components import Head, build_head
from ..modeling.ptuning import PTuningModel
from .losses import lm_loss
from .pooled_cache import PooledStateCache


def sorted_batches(items: list, size: int, key=len):
    """Length-sorted batches (less padding); yields (original indices, items)."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        yield idx, [items[i] for i in idx]


def shared_input(encoded: list[tuple[int, list[int], Encoded]]) -> Encoded | None:
    """The target-free input shared by every candidate of a row, or None where truncation made them differ."""
    first = None
    for _, ids, enc in encoded:
        n = len(ids)
        if n == 0 or enc.input_ids[len(enc) - n:] != ids:
            return None
        cut = (enc.input_ids[:len(enc) - n], enc.virtual_index[:len(enc) - n])
        if first is None:
            first = cut
        elif cut != first:
            return None
    if first is None or not first[0]:
        return None
    return Encoded(first[0], first[1], [-100] * len(first[0]), any(e.truncated for _, _, e in encoded))


@dataclass
class Task:
    """What a task type implements: training examples and their loss, padded batches, predictions and metrics.

    Args:
        cfg (`TaskConfig`): the ``task`` section of the config.
        renderer (`Renderer`): renders a row (and a target) to token ids.
        labels (`LabelSpace`, *optional*): classification's labels and their words.
        vocab_ids (`list[int]`, *optional*): probing's candidate tokens (None: the whole vocabulary).
        objective (`str`): ``train.objective`` (``lm`` or ``classify``).
        class_weights (`str`): ``train.class_weights`` (``none`` or ``balanced``).
        head (`Head`, *optional*): what is scored and trained (default: ``cfg.head``'s).
        pooled_cache (`PooledStateCache`, *optional*): where a linear probe's pooled states are kept for reuse (a
            search sets one for all its candidates and folds); None computes them every time.

    Example:
        >>> task = build_task(cfg.task, renderer, labels)  # the subclass for cfg.task.type
        >>> examples, skipped = task.train_examples(table)
        >>> total, weight = task.make_loss(examples)(model, task.batch(examples[:8], "cpu"))
        >>> loss = total / weight
    """
    cfg: TaskConfig
    renderer: Renderer
    labels: LabelSpace | None = None
    vocab_ids: list[int] | None = None
    objective: str = "lm"
    class_weights: str = "none"
    head: Head | None = None
    pooled_cache: PooledStateCache | None = None  # a linear probe's pooled states, kept across a search's folds

    def __post_init__(self):
        if self.head is None:
            self.head = build_head(self.cfg.head)

    @property
    def label_column(self) -> str:
        return self.cfg.label_column

    @property
    def pad_side(self) -> str:
        return "left" if self.renderer.kind == "causal" else "right"

    def batch(self, examples: list[Encoded], device, share_prefix: bool = False, pack: int = 0
              ) -> dict[str, torch.Tensor]:
        """Padded tensors. ``share_prefix`` (causal LMs): the tokens every row starts with (virtual tokens and anchor
        text before the first data field) are taken out and given once, as ``prefix_ids``/``prefix_virtual``
        (1, P), for the model to run once for the whole batch; every row keeps at least one token. ``pack`` (causal
        LMs, training): instead of padding, the rows are packed into bins of that many places
        (``data.packing.pack``; the shared prefix then starts every bin)."""
        pad = self.renderer.tokenizer.pad_token_id
        causal = self.renderer.kind == "causal"
        length = self.renderer.shared_prefix_length() if share_prefix and causal and len(examples) > 1 else 0
        prefix, rest = split_shared_prefix(examples, length)
        if pack and causal:
            return pack_rows(rest, prefix, pack, device)
        if prefix is None:
            return collate(examples, pad, self.pad_side, device)
        out = collate(rest, pad, "left", device)
        out["prefix_ids"] = torch.tensor([prefix.input_ids], device=out["input_ids"].device)
        out["prefix_virtual"] = torch.tensor([prefix.virtual_index], device=out["input_ids"].device)
        return out

    def check(self, table: Table, *, labelled: bool = True) -> None:
        """Raise a DataError naming file, row and field for anything this task cannot use."""

    def train_examples(self, table: Table) -> tuple[list[Encoded], int]:
        """Examples for training/loss, and how many rows were skipped (probing: object not one token)."""
        raise NotImplementedError

    def make_loss(self, examples: list[Encoded]):
        """The training loss for these rows, as ``fn(model, batch) -> (summed loss, its weight)``; the mean is their
        ratio (kept apart so that data-parallel processes can sum both before dividing). Here: ``lm_loss``."""
        return lm_loss

    def predict(self, model: PTuningModel, rows: list[dict], batch_size: int, device, progress=None) -> list[dict]:
        """One prediction dict per row (``prediction``, and for classification ``scores``); ``progress(n)``, if
        given, is called as rows are finished."""
        raise NotImplementedError

    def metrics(self, rows: list[dict], predictions: list[dict]) -> dict:
        """The task's figures for ``predictions`` against the rows' gold values."""
        raise NotImplementedError
