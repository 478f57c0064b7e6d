"""Label-word scoring: each label's score for a row is the best, over the label's alternative words, of the word's
log-likelihood after the row's input (``task.score: mean``: divided by the word's length).

Two paths give the same numbers (up to floating-point noise):

    shared inputs   (causal LMs) a row whose rendering is the same whatever the word is run once, left-padded with
                    other rows: its last position scores every word's first token and the KV cache the rest, each
                    prefix that words share once per row (``PTuningModel.continuation_logprobs``); the prefix every
                    row shares may run once for all
    per candidate   one full input per (row, word), scored by ``token_logprobs``: other model kinds, and rows whose
                    truncation differs from word to word

``classify_mixed`` (several tasks in one pass) uses the same pieces.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..data.render import Encoded, collate, split_shared_prefix
from ..modeling.label_search import WordSearch
from .base import shared_input, sorted_batches

if TYPE_CHECKING:  # (classification imports this module)
    from .classification import ClassificationTask


def label_word_ids(task: ClassificationTask) -> list[tuple[int, list[int]]]:
    """(label index, the word's token ids) for every alternative word of every label, in label order."""
    return [(li, task.renderer.target_ids(w)) for li, ws in enumerate(task.labels.words) for w in ws]


class LabelScores:
    """(rows, labels) scores, each the best so far over the label's words (-inf before any), filled in word by word.

    Args:
        n_rows (`int`), n_labels (`int`): the table's shape.
        mean (`bool`): a word's score is its log-likelihood divided by its length (``task.score: mean``), else the
            sum.
    """

    def __init__(self, n_rows: int, n_labels: int, mean: bool):
        self.values = torch.full((n_rows, n_labels), -math.inf)  # (rows, labels)
        self.mean = mean

    def record(self, row: int, label: int, logp_sum: float, n_tokens: int) -> None:
        """One word's log-likelihood ``logp_sum`` over its ``n_tokens`` tokens, for ``row`` and ``label``."""
        score = logp_sum / n_tokens if self.mean else logp_sum
        self.values[row, label] = max(self.values[row, label].item(), score)


def split_shared_inputs(task: ClassificationTask, rows: list[dict], targets: list[tuple[int, list[int]]],
                        can_share: bool) -> tuple[list[tuple[int, Encoded]], list[tuple[int, int, Encoded]]]:
    """Each row's rendering(s): (row index, its one target-free input) where every word leaves the rest of the
    input alike and ``can_share``, else (row index, label index, the full input) once per word."""
    shared, candidates = [], []
    for ri, row in enumerate(rows):
        encoded = [(li, ids, task.renderer.encode(row, ids)) for li, ids in targets]
        prefix = shared_input(encoded) if can_share else None
        if prefix is not None:
            shared.append((ri, prefix))
        else:
            candidates += [(ri, li, enc) for li, _, enc in encoded]
    return shared, candidates


def scoring_batch(inputs: list[Encoded], pad_id: int, device, prefix_length: int = 0) -> tuple[dict, tuple | None]:
    """``inputs`` (target-free) as one left-padded batch, and the prefix of their first ``prefix_length`` tokens
    where every input has them alike (token ids, virtual indices), which then runs once for all (its keys and
    values cached by the model) and is cut from the batch; each input keeps at least one token of its own."""
    prefix, rest = split_shared_prefix(inputs, prefix_length)
    if prefix is None:
        return collate(inputs, pad_id, "left", device), None
    return collate(rest, pad_id, "left", device), (prefix.input_ids, prefix.virtual_index)


def continuation_scores(model, inputs: list[Encoded], words: list[list[int]], pad_id: int, device,
                        prefix_length: int = 0) -> list[torch.Tensor]:
    """Every word's token log-probabilities after each of ``inputs`` (``scoring_batch``). Returns, per word,
    (B, len(word))."""
    batch, prefix = scoring_batch(inputs, pad_id, device, prefix_length)
    return model.continuation_logprobs(batch, words, prefix=prefix)


def score_shared_inputs(task: ClassificationTask, model, shared: list[tuple[int, Encoded]], scores: LabelScores,
                        batch_size: int, device, progress=None, keep: int | None = None) -> None:
    """The shared-input path: record every word's score for these (row index, target-free input) pairs; with
    ``keep``, only those of the words the best-first search reaches (``PTuningModel.best_word_logprobs``)."""
    if not shared:  # (a model that cannot score continuations has no prefix cache either)
        return
    targets = label_word_ids(task)
    words = [ids for _, ids in targets]
    search = None if keep is None else WordSearch([li for li, _ in targets], keep, scores.mean)
    prefix_length = task.renderer.shared_prefix_length() if model.use_prefix_cache else 0
    pad = task.renderer.tokenizer.pad_token_id
    for _, chunk in sorted_batches(shared, batch_size, key=lambda it: len(it[1])):
        batch, prefix = scoring_batch([c[1] for c in chunk], pad, device, prefix_length)
        if search is None:
            sums = [logp.sum(-1) for logp in model.continuation_logprobs(batch, words, prefix=prefix)]
        else:
            sums = model.best_word_logprobs(batch, words, search, prefix=prefix).unbind(1)  # per word, (B,)
        for (li, ids), total in zip(targets, sums):
            for (ri, _), value in zip(chunk, total.tolist()):
                scores.record(ri, li, value, len(ids))
        if progress:
            progress(len(chunk))  # rows


def score_candidates(task: ClassificationTask, model, candidates: list[tuple[int, int, Encoded]],
                     scores: LabelScores, batch_size: int, device, progress=None) -> None:
    """The per-candidate path: record the score of each (row index, label index, full input with the word)."""
    left: dict[int, int] = {}  # each row's candidates not yet scored
    for ri, _, _ in candidates:
        left[ri] = left.get(ri, 0) + 1
    for _, chunk in sorted_batches(candidates, batch_size, key=lambda it: len(it[2])):
        logp, mask = model.token_logprobs(task.batch([c[2] for c in chunk], device))  # (B, K), (B, K)
        done = 0
        for (ri, li, _), total, n in zip(chunk, logp.sum(-1).tolist(), mask.sum(-1).tolist()):
            scores.record(ri, li, total, n)
            left[ri] -= 1
            done += left[ri] == 0
        if progress and done:
            progress(done)  # rows all of whose candidates are scored


def label_word_scores(task: ClassificationTask, model, rows: list[dict], batch_size: int, device,
                      progress=None, keep: int | None = None) -> torch.Tensor:
    """(rows, labels): each label's score for each row, by the shared-input path where the model and the row
    allow it and per candidate otherwise. ``progress(n)``, if given, is called as rows are finished. ``keep``:
    only each row's ``keep`` best labels are scored (the others are -inf), by the best-first search where the
    shared-input path runs."""
    targets = label_word_ids(task)
    shared, candidates = split_shared_inputs(task, rows, targets, model.can_score_continuations)
    scores = LabelScores(len(rows), len(task.labels.labels), task.cfg.score == "mean")
    score_shared_inputs(task, model, shared, scores, batch_size, device, progress, keep)
    score_candidates(task, model, candidates, scores, batch_size, device, progress)
    return scores.values if keep is None else best_only(scores.values, keep)


def best_only(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(rows, labels) ``scores`` with all but each row's ``keep`` best set to -inf.

    Example:
        >>> best_only(torch.tensor([[-1.0, -3.0, -2.0]]), 2).tolist()
        [[-1.0, -inf, -2.0]]
    """
    best = scores.topk(min(keep, scores.shape[1]), dim=1).indices
    return torch.full_like(scores, -math.inf).scatter(1, best, scores.gather(1, best))
