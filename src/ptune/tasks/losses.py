"""Training losses. Each is a callable ``loss(model, batch) -> (summed loss, its weight)``: the mean is their ratio,
kept apart so that data-parallel processes can sum both before dividing.

    lm_loss          every target token's negative log-likelihood, each token weighing 1
    WeightedLMLoss   the same, each row's tokens weighted by its label's weight (``train.class_weights``)
    ClassifyLoss     cross-entropy over the labels' first tokens at the first target position
    LinearHeadLoss   cross-entropy of ``task.head: linear``'s classifier

The two label-level losses share ``label_nll``, and every weighted loss takes its rows' weights from ``row_weights``.
A batch holding soft-labelled rows (``training.distillation``) carries ``row_weight`` (B,): each row counts that
much in every loss, so a soft row given once per label with weight ``w * p(label)`` adds ``w`` times the
cross-entropy against the distribution ``p`` (``-sum_l p(l) * log q(l)``, over the label scores the loss uses).
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


def label_nll(logp: torch.Tensor, gold: torch.Tensor, weights: torch.Tensor | None,
              row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted negative log-likelihood of the gold labels. ``logp`` (B, labels) log-probabilities, ``gold`` (B,)
    label indices, ``weights`` (labels,) or None, ``row_weight`` (B,) or None. Returns the weighted sum and the sum
    of the weights."""
    nll = -logp.gather(1, gold.unsqueeze(1)).squeeze(1)  # (B,)
    w = row_weights(weights, gold, nll, row_weight)
    return (nll * w).sum(), w.sum()


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
    """``lm_loss`` with each row's target tokens weighted by its label's weight.

    Args:
        weights (`torch.Tensor`): (labels,) one weight per label.
    """
    weights: torch.Tensor

    def __call__(self, model, batch):
        logp, mask = model.token_logprobs(batch)  # (B, K)
        w = row_weights(self.weights, batch["label_index"], logp[:, 0], batch.get("row_weight")).unsqueeze(1) * mask
        return -(logp * w).sum(), w.sum()


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
        return label_nll(logp, batch["label_index"], self.weights, batch.get("row_weight"))


@dataclass
class LinearHeadLoss:
    """Cross-entropy of ``task.head: linear``'s classifier over the pooled states.

    Args:
        weights (`torch.Tensor`, *optional*): (labels,) per-label weights.
    """
    weights: torch.Tensor | None = None

    def __call__(self, model, batch):
        logp = F.log_softmax(model.class_logits(batch), dim=-1)  # (B, labels)
        return label_nll(logp, batch["label_index"], self.weights, batch.get("row_weight"))
