"""Training losses. Each is a callable ``loss(model, batch) -> (summed loss, its weight)``: the mean is their ratio,
kept apart so that data-parallel processes can sum both before dividing.

    lm_loss          every target token's negative log-likelihood, each token weighing 1
    WeightedLMLoss   the same, each row's tokens weighted by its label's weight (``train.class_weights``)
    ClassifyLoss     cross-entropy over the labels' first tokens at the first target position
    LinearHeadLoss   cross-entropy of ``task.head: linear``'s classifier

The two label-level losses share ``label_nll``, and every weighted loss takes its rows' weights from ``row_weights``.
A batch holding soft-labelled rows (``training.distillation``) carries ``row_weight`` (B,): each row counts that
much in every loss. A soft row comes in one of two forms (``ClassificationTask.soft_examples``):

    once per label   weight ``w * p(label)``, that label's word the target: summed, ``w`` times the cross-entropy
                     against the distribution ``p`` (``-sum_l p(l) * log q(l)``, over the label scores the loss uses)
    once for all     weight ``w``, its distribution in ``soft_probs`` (B, labels): the same cross-entropy from one
                     pass, every label's score read at its first target position (``label_targets``)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def balanced_weights(label_indices: list[int], n_labels: int) -> torch.Tensor:
    """(labels,): inverse label frequency, scaled so that the mean weight over the rows is 1 (a label absent from
    the rows counts as seen once)."""
    counts = torch.bincount(torch.tensor(label_indices), minlength=n_labels)
    return len(label_indices) / (n_labels * counts.clamp(min=1).float())


def row_weights(weights: torch.Tensor | None, gold: torch.Tensor, like: torch.Tensor,
                row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B,): each row's weight, its gold label's in ``weights`` (labels,), or 1 for every row without weights,
    times ``row_weight`` (B,) where the batch has one (soft-labelled rows). ``like`` (B,) gives the dtype and device
    of the ones."""
    w = weights.to(like.device)[gold] if weights is not None else torch.ones_like(like)
    return w if row_weight is None else w * row_weight.to(w)


def label_targets(batch: dict[str, torch.Tensor], n_labels: int) -> torch.Tensor:
    """(B, labels): each row's target distribution over the labels: its gold label's one-hot, or, for a soft row
    given once for all its labels, its ``soft_probs``."""
    gold = F.one_hot(batch["label_index"], n_labels).float()
    soft = batch.get("soft_probs")
    if soft is None:
        return gold
    soft = soft.to(gold.device)
    return torch.where(soft.sum(-1, keepdim=True) > 0, soft, gold)


def label_nll(logp: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
              row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of ``logp`` (B, labels) log-probabilities against ``targets`` (B, labels) (one-hot
    for a labelled row, ``label_targets``), each label weighted by ``weights`` (labels,) or 1, each row by
    ``row_weight`` (B,) or 1. Returns the weighted sum and the sum of the weights: for a one-hot row, its gold
    label's weight times its row weight."""
    t = targets.to(logp) if weights is None else targets.to(logp) * weights.to(logp)  # (B, labels)
    rw = torch.ones_like(logp[:, 0]) if row_weight is None else row_weight.to(logp)
    nll = -torch.where(t > 0, t * logp, 0).sum(-1)  # (B,); labels of weight 0 left out, -inf scores included
    return (nll * rw).sum(), (t.sum(-1) * rw).sum()


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of every target token, and the number of target tokens (each token weighted
    by its row's ``row_weight`` where the batch has one)."""
    logp, mask = model.token_logprobs(batch)  # (B, K), (B, K)
    if "row_weight" in batch:
        w = batch["row_weight"].to(logp).unsqueeze(1) * mask  # (B, K)
        return -(logp * w).sum(), w.sum()
    return -logp.sum(), mask.sum()


@dataclass
class WeightedLMLoss:
    """``lm_loss`` with each row's target tokens weighted by its label's weight (1 each where ``weights`` is None),
    and soft rows given once for all their labels (``soft_probs``) read from their first target position: there
    each label's one token is scored (``candidates``), the row weighing as one target token per label.

    Args:
        weights (`torch.Tensor`, *optional*): (labels,) one weight per label.
        candidates (`torch.Tensor`, *optional*): (labels,) each label's word, where each is one token (needed for
            batches with ``soft_probs``).
    """
    weights: torch.Tensor | None
    candidates: torch.Tensor | None = None

    def __call__(self, model, batch):
        soft = batch.get("soft_probs")
        if soft is None:
            logp, mask = model.token_logprobs(batch)  # (B, K)
        else:
            logits, labels = model.target_logits(batch)
            mask = labels != -100
            logp_all = F.log_softmax(logits.float(), dim=-1)  # (B, K, V)
            logp = logp_all.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask  # (B, K)
            is_soft = soft.to(logp.device).sum(-1) > 0  # (B,)
            mask = mask & ~is_soft.unsqueeze(1)  # a soft row's loss is its labels', below
        gold = batch["label_index"]
        w = row_weights(self.weights, gold, logp[:, 0], batch.get("row_weight")).unsqueeze(1) * mask  # (B, K)
        total, weight = -(logp * w).sum(), w.sum()
        if soft is None:
            return total, weight
        first = labels.ne(-100).int().argmax(dim=1)  # (B,) each row's first target column
        choice = logp_all[torch.arange(len(first), device=first.device), first][:, self.candidates.to(first.device)]
        keep = is_soft.unsqueeze(1)
        soft_total, soft_weight = label_nll(choice, label_targets(batch, choice.shape[1]) * keep, self.weights,
                                            batch.get("row_weight"))
        return total + soft_total, weight + soft_weight


@dataclass
class ClassifyLoss:
    """The discriminative objective (``train.objective: classify``): cross-entropy over the labels' first tokens
    only, at the first target position.

    Args:
        candidates (`torch.Tensor`): (labels,) each label's first token id.
        weights (`torch.Tensor`, *optional*): (labels,) per-label weights.
    """
    candidates: torch.Tensor
    weights: torch.Tensor | None = None

    def __call__(self, model, batch):
        logp = model.label_choice_logprobs(batch, self.candidates.to(batch["labels"].device))  # (B, labels)
        return label_nll(logp, label_targets(batch, logp.shape[1]), self.weights, batch.get("row_weight"))


@dataclass
class LinearHeadLoss:
    """Cross-entropy of ``task.head: linear``'s classifier over the pooled states.

    Args:
        weights (`torch.Tensor`, *optional*): (labels,) per-label weights.
    """
    weights: torch.Tensor | None = None

    def __call__(self, model, batch):
        logp = F.log_softmax(model.class_logits(batch), dim=-1)  # (B, labels)
        return label_nll(logp, label_targets(batch, logp.shape[1]), self.weights, batch.get("row_weight"))
