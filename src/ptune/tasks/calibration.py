"""Calibration of label scores: per-label offsets that move a model's mean prediction to the training label
shares (``task.calibrate: prior``)."""

from __future__ import annotations

import torch


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
