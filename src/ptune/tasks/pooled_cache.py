"""Pooled states kept for reuse where nothing trained changes them: under a linear head over a template without
virtual tokens (the linear probe), a row's pooled state is the frozen model's alone, fixed by the row's tokens, the
block read and the pooling. A search's probe candidates fit a classifier on every fold, and score each fold's
held-out rows, over the same rows; with one cache for the whole search each row's state is computed once per block
and pooling, not once per fold and per fit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.render import Encoded


class PooledStateCache:
    """Each row's pooled state (d,), by (block, pooling, the row's token ids), for the one frozen model it serves.

    Example:
        >>> cache = PooledStateCache()
        >>> states = cache.states(model, chunk, lambda rows: model.pooled_states(task.batch(rows, "cpu")))
        >>> cache.states(model, chunk, compute).equal(states)  # the second time, nothing runs
        True
    """

    def __init__(self):
        self._states: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    @staticmethod
    def applies(model) -> bool:
        """Whether ``model``'s pooled states are the frozen model's alone: a linear head, no virtual token and no
        deep prompt (trained keys and values at every layer)."""
        return model.classifier is not None and model.encoder.n_virtual == 0 and model.deep is None

    def states(self, model, rows: list[Encoded], compute: Callable[[list[Encoded]], torch.Tensor]) -> torch.Tensor:
        """(B, d): the pooled states of ``rows`` under ``model`` (which ``applies``); those not kept yet come from
        ``compute(rows not kept)``, one batch, and are kept.

        Args:
            model: a ``PTuningModel`` with a linear head (``classifier.layer``, ``classifier.pooling``) and no
                virtual tokens.
            rows (`list[Encoded]`): the rendered rows, without their targets.
            compute (`Callable[[list[Encoded]], torch.Tensor]`): (rows) -> (len(rows), d) pooled states.

        Returns:
            `torch.Tensor`: (B, d), in ``rows``' order.
        """
        keys = [(model.classifier.layer, model.classifier.pooling, tuple(e.input_ids)) for e in rows]
        missing = list({key: i for i, key in enumerate(keys) if key not in self._states}.values())
        if missing:
            for i, state in zip(missing, compute([rows[i] for i in missing])):
                self._states[keys[i]] = state
        return torch.stack([self._states[key] for key in keys])
