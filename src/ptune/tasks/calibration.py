"""Calibration of label scores (``task.calibrate``), all in one place:

    content_free   divide each label's probability by its mean probability on inputs that carry no evidence
                   (every data field "N/A", or empty; Zhao et al., 2021)
    prior          add per-label offsets fitted so that the model's mean prediction on unlabeled rows equals the
                   training label shares (``fit_prior_offsets``, at the end of training; saved with the model)
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import torch

from ..errors import PtuneError

if TYPE_CHECKING:  # (classification imports this module)
    from ..data.render import Renderer
    from .classification import ClassificationTask


def content_free_rows(renderer: Renderer) -> list[dict]:
    """Inputs that carry no evidence: every data field "N/A", or empty."""
    columns = [renderer.field_map.get(f, f) for f in renderer.template.fields]
    return [{c: "N/A" for c in columns}, {c: "" for c in columns}]


def content_free_calibrated(scores: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """p(label | x) / mean p(label | content-free), in logs; each row's scores normalised over the labels first.
    ``scores`` (rows, labels) and ``free`` (content-free rows, labels): raw label scores. Returns (rows, labels)."""
    free = torch.log_softmax(free, dim=-1)
    prior = torch.logsumexp(free, dim=0) - math.log(len(free))  # (labels,)
    return torch.log_softmax(scores, dim=-1) - prior


def prior_calibrated(scores: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Label log-probabilities (``scores`` (rows, labels) normalised over the labels) plus ``offsets`` (labels,)."""
    if offsets is None:
        raise PtuneError("task.calibrate is 'prior' but this model has no fitted label offsets (they are "
                         "fitted at the end of training, on data.unlabeled)")
    return torch.log_softmax(scores, dim=-1) + offsets


def calibrated(task: ClassificationTask, model, scores: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """``scores`` (rows, labels) calibrated as ``task.cfg.calibrate`` says (``none``: unchanged). Content-free
    calibration scores the content-free rows with ``task.scores``; prior calibration reads ``model.label_offsets``."""
    if task.cfg.calibrate == "content_free":
        free = task.scores(model, content_free_rows(task.renderer), batch_size, device)
        return content_free_calibrated(scores, free)
    if task.cfg.calibrate == "prior":
        return prior_calibrated(scores, getattr(model, "label_offsets", None))
    return scores


def prior_offsets(logp: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Per-label offsets b such that the mean over rows of softmax(logp + b) equals ``shares``: the minimum of the
    convex mean_i logsumexp(logp_i + b) - shares . b (its gradient is the mean prediction minus the shares).
    ``logp``: (rows, labels) log-probabilities; ``shares``: (labels,) positive, summing to 1. Centred to mean 0."""
    logp = logp.double()
    target = shares.double()
    b = torch.zeros(logp.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        value = torch.logsumexp(logp + b, dim=-1).mean() - (target * b).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(objective)
    b = b.detach()
    return (b - b.mean()).float()


def fit_prior_offsets(task: ClassificationTask, model, train_rows: list[dict], unlabeled_rows: list[dict] | None,
                      seed: int, batch_size: int, device) -> torch.Tensor:
    """``task.calibrate: prior``: per-label offsets that make the model's mean label distribution on a seeded sample
    of the unlabeled rows equal the training rows' label shares. A model that ranks rows well but puts its
    threshold in the wrong place (all rows to the majority label, say) is moved back; the offsets are fitted on
    rows whose labels nobody knows, so no held-out label is used.

    Args:
        task (`ClassificationTask`): the task whose labels are scored (``task.cfg.prior_rows``: the sample size).
        model (`PTuningModel`): the trained model.
        train_rows (`list[dict]`): the labelled training rows (their label shares, each count + 0.5).
        unlabeled_rows (`list[dict]` or None): the pool the sample is drawn from (``data.unlabeled``).
        seed (`int`): seeds the sample.
        batch_size (`int`), device: for scoring.

    Returns:
        `torch.Tensor`: (labels,) the offsets, centred to mean 0, for ``model.label_offsets``.

    Example:
        >>> model.label_offsets = fit_prior_offsets(task, model, train.rows, unlabeled.rows, 0, 32, "cpu")
    """
    if not unlabeled_rows:
        raise PtuneError("task.calibrate is 'prior' but no unlabeled rows were read (data.unlabeled)")
    pool = list(unlabeled_rows)
    random.Random(seed).shuffle(pool)
    pool = pool[:task.cfg.prior_rows]
    labels = task.labels
    counts = torch.tensor([0.5] * len(labels.labels), dtype=torch.float64)  # +0.5: no label's share is zero
    for row in train_rows:
        counts[labels.index(row[task.cfg.label_column])] += 1
    logp = task.raw_scores(model, pool, batch_size, device)  # (rows, labels)
    return prior_offsets(logp, counts / counts.sum()).to(logp.device)
