"""Classification rows of several tasks over one causal base, scored in shared model calls (the server's mixed
batches): the tables of the tasks present are stacked into one and each row's virtual positions point into its own
task's part. A task's own model is asked for only where the shared pass cannot serve it: rows whose truncation
differs from label word to label word, calibration, a linear head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.render import Encoded
from ..modeling.encoders import EmbeddingEncoder
from ..modeling.ptuning import CausalPTuning, PTuningModel
from .base import sorted_batches
from .classification import ClassificationTask
from .label_scoring import LabelScores, continuation_scores, label_word_ids, score_candidates, split_shared_inputs

Group = tuple[ClassificationTask, PTuningModel, list[dict]]


@dataclass
class MixedGroup:
    """One task's rows in a mixed batch.

    Args:
        task (ClassificationTask): the task (renderer, labels, scoring and calibration settings).
        table (torch.Tensor): (n, d) its prompt table.
        rows (list[dict]): its rows.
        own_model (Callable[[], PTuningModel]): gives its own model (its table over the same base), called only
            where the shared pass cannot serve the task.
        mixes (bool, defaults to True): its prompt can share a pass (``Supports.mixing``: not a deep prompt, whose
            keys and values the stacked tables do not hold); else it is scored alone with ``own_model``.

    Example:
        >>> group = MixedGroup(task, model.prompt_table(), [{"text": "hi"}], lambda: model)
    """

    task: ClassificationTask
    table: torch.Tensor
    rows: list[dict]
    own_model: Callable[[], PTuningModel]
    mixes: bool = True


class StackedTablesModel(CausalPTuning):
    """The mixed-batch scorer's causal model, whose table changes with every batch. A cached prefix of text alone
    (no virtual position: the special tokens and anchor text every row opens with) does not depend on the table, so
    a new table keeps its keys and values; computing them again would read every weight of the base, as a small
    batch does.

    Args:
        base (torch.nn.Module): the frozen causal LM.
        encoder (PromptEncoder): a placeholder encoder (the tables come from ``set_prompt_table``).

    Example:
        >>> model = StackedTablesModel(base, EmbeddingEncoder(1, 576)).eval()
        >>> model.set_prompt_table(torch.cat([table_a, table_b]))  # (n_a + n_b, 576)
    """

    def clear_prompt_cache(self) -> None:
        kept = self.prefix_cache.entry  # ((token ids, virtual indices), keys and values), or None
        super().clear_prompt_cache()
        if kept is not None and all(v < 0 for v in kept[0][1]):
            self.prefix_cache.get(kept[0], lambda: kept[1])


def shifted(prefix: Encoded, offset: int) -> Encoded:
    """``prefix`` with its virtual positions pointing ``offset`` rows further into the stacked table."""
    virtual = [v + offset if v >= 0 else -1 for v in prefix.virtual_index]
    return Encoded(prefix.input_ids, virtual, prefix.labels, prefix.truncated)


def common_text_prefix(inputs: list[Encoded]) -> int:
    """How many leading tokens all ``inputs`` share with no virtual position among them (special tokens and anchor
    text before the first field, where every task's template starts alike): they can run once for all the rows,
    whatever their tasks, since no task's table reaches them.

    Args:
        inputs (list[Encoded]): rendered rows (unpadded).

    Returns:
        int: the length of that common prefix (0 when a row starts with a virtual token or a field).

    Example:
        >>> common_text_prefix([Encoded([5, 6, 7], [-1, -1, 0], []), Encoded([5, 6, 9], [-1, -1, -1], [])])
        2
    """
    first, n = inputs[0], 0
    limit = min(len(e) for e in inputs)
    while n < limit and first.virtual_index[n] < 0 and all(
            e.input_ids[n] == first.input_ids[n] and e.virtual_index[n] < 0 for e in inputs):
        n += 1
    return n


class MixedScorer:
    """Scores mixed batches over one causal base, with one model reused for every batch's stacked table (building a
    model walks the whole base, which would cost every batch as much as a short forward pass).

    Args:
        base (torch.nn.Module): the frozen causal LM every task runs on.

    Example:
        >>> scorer = MixedScorer(base)
        >>> a, b = scorer.classify([MixedGroup(task_a, table_a, rows_a, model_a),
        ...                         MixedGroup(task_b, table_b, rows_b, model_b)], 32, "cpu")
    """

    def __init__(self, base: nn.Module):
        self.base = base
        self.model: PTuningModel | None = None

    def over(self, table: torch.Tensor) -> PTuningModel:
        """The scorer's model serving ``table`` (rows, d), in evaluation mode. Its one-row encoder is a placeholder
        that never runs: ``set_prompt_table`` gives the rows the virtual positions read, however many there are."""
        if self.model is None:
            placeholder = EmbeddingEncoder(1, table.shape[1], init=table.new_zeros(1, table.shape[1]))
            self.model = StackedTablesModel(self.base, placeholder.to(table.device)).eval()
        # templates without virtual tokens stack to no rows: one row that no position reads keeps indexing valid
        self.model.set_prompt_table(table if len(table) else table.new_zeros(1, table.shape[1]))
        return self.model

    def classify(self, groups: list[MixedGroup], batch_size: int, device) -> list[list[dict]]:
        """Each group's predictions, the same as its task's own ``predict`` (up to floating-point noise).

        Args:
            groups (list[MixedGroup]): the tasks and their rows.
            batch_size (int), device: for scoring.

        Returns:
            list[list[dict]]: per group, one ``{"prediction", "scores"}`` per row.
        """
        # no label words to share, or a prompt the stacked tables cannot hold: those tasks score on their own
        alone = [not (g.task.head.mixing and g.mixes) for g in groups]
        if any(alone):
            mixed = iter(self.classify([g for g, a in zip(groups, alone) if not a], batch_size, device)
                         if not all(alone) else [])
            return [g.task.predict(g.own_model(), g.rows, batch_size, device) if a else next(mixed)
                    for g, a in zip(groups, alone)]
        words_of: dict[int, list[tuple[int, list[int]]]] = {}  # tasks of one serving config are one object
        for g in groups:
            if id(g.task) not in words_of:
                words_of[id(g.task)] = label_word_ids(g.task)
        targets = [words_of[id(g.task)] for g in groups]
        scores = [LabelScores(len(g.rows), len(g.task.labels.labels), g.task.cfg.score == "mean") for g in groups]
        items, offset = [], 0
        for gi, g in enumerate(groups):
            shared, candidates = split_shared_inputs(g.task, g.rows, targets[gi], can_share=True)
            items += [(gi, ri, shifted(prefix, offset)) for ri, prefix in shared]
            if candidates:  # rows whose truncation made the label inputs differ: their task's per-candidate path
                score_candidates(g.task, g.own_model(), candidates, scores[gi], batch_size, device)
            offset += len(g.table)
        self.score_shared(torch.cat([g.table for g in groups]), groups, items, targets, scores, batch_size, device)
        # calibration reads the task's own model (content-free rows, label offsets); "none" reads no model
        return [g.task.finish(g.own_model() if g.task.cfg.calibrate != "none" else None, sc.values, batch_size,
                              device) for g, sc in zip(groups, scores)]

    def score_shared(self, table: torch.Tensor, groups: list[MixedGroup], items: list[tuple[int, int, Encoded]],
                     targets: list[list[tuple[int, list[int]]]], scores: list[LabelScores], batch_size: int,
                     device) -> None:
        """Record every label word's score for the (group, row, target-free input) ``items``, whose virtual positions
        point into ``table`` (the stacked tables); every word of every task is scored once per row, from one pass,
        and the leading tokens every row shares without a virtual position run once for all."""
        words: dict[tuple, int] = {}
        for group_targets in targets:
            for _, ids in group_targets:
                words.setdefault(tuple(ids), len(words))
        word_list = [list(w) for w in words]
        model = self.over(table)
        pad = groups[0].task.renderer.tokenizer.pad_token_id
        # no further than the templates' own opening, which never depends on the row: rows that happen to open
        # alike would make another prefix, whose pass costs more than the tokens it saves, and drop the kept one
        renderers = {id(g.task.renderer): g.task.renderer for g in groups}.values()
        opening = min(r.shared_prefix_length() for r in renderers)
        for _, chunk in sorted_batches(items, batch_size, key=lambda it: len(it[2])):
            inputs = [c[2] for c in chunk]
            per_word = continuation_scores(model, inputs, word_list, pad, device,
                                           min(opening, common_text_prefix(inputs)))
            totals = [logp.sum(-1).tolist() for logp in per_word]  # per word, each row's log-likelihood
            for b, (gi, ri, _) in enumerate(chunk):
                for li, ids in targets[gi]:
                    scores[gi].record(ri, li, totals[words[tuple(ids)]][b], len(ids))


def classify_mixed(groups: list[Group], batch_size: int, device) -> list[list[dict]]:
    """Rows of several classification tasks over one causal base model, scored in shared model calls: the tasks'
    prompt tables are stacked into one, each row's virtual positions point into its own task's part, and every label
    word of every task is scored from the same pass (the server's mixed batches; it keeps a ``MixedScorer``).

    Args:
        groups (`list[tuple[ClassificationTask, PTuningModel, list[dict]]]`): each task, its model and its rows.
        batch_size (`int`), device: for scoring.

    Returns:
        `list[list[dict]]`: each group's predictions, the same as its own ``predict``.

    Example:
        >>> a_preds, b_preds = classify_mixed([(task_a, model_a, rows_a), (task_b, model_b, rows_b)], 32, "cpu")
    """
    base = groups[0][1].base
    if any(m.base is not base or not (m.can_score_continuations or not task.head.mixing) for task, m, _ in groups):
        raise ValueError("classify_mixed needs causal models over one shared base")
    return MixedScorer(base).classify([MixedGroup(task, model.prompt_table(), rows, lambda m=model: m,
                                                  mixes=model.deep is None)
                                       for task, model, rows in groups], batch_size, device)
