"""One ensemble rule: average the members' label probabilities (each member's label scores softmaxed over the
labels), so cross-validated ensembles and a loaded ``Ensemble`` predict alike."""

from __future__ import annotations

import math

import torch


def mean_label_probabilities(member_predictions: list[list[dict]], labels: list[str]) -> torch.Tensor:
    """The members' label probabilities, averaged row by row.

    Args:
        member_predictions (`list[list[dict]]`): one list of predictions per member, all over the same rows in the
            same order; each prediction holds ``"scores"``, a label -> log-probability mapping. A label missing
            from it (``task.top_labels``: only the best are scored) has probability 0 for that member.
        labels (`list[str]`): the label order of the returned columns.

    Returns:
        `torch.Tensor` of shape `(rows, labels)`: each member's scores softmaxed over ``labels``, then the mean over
        members (a single member gives its own probabilities).

    Example:
        >>> preds = [[{"scores": {"neg": -2.0, "pos": -0.1}}], [{"scores": {"neg": -0.5, "pos": -1.5}}]]
        >>> mean_label_probabilities(preds, ["neg", "pos"]).shape
        torch.Size([1, 2])
    """
    if not member_predictions:
        raise ValueError("mean_label_probabilities needs at least one member's predictions")
    total = None
    for predictions in member_predictions:  # summed in member order, so a fixed ensemble gives fixed figures
        scores = torch.tensor([[p["scores"].get(label, -math.inf) for label in labels]
                               for p in predictions])  # (rows, labels)
        probs = torch.softmax(scores, dim=-1)
        total = probs if total is None else total + probs
    return total / len(member_predictions)  # (rows, labels)


def ensemble_predictions(member_predictions: list[list[dict]], labels: list[str]) -> list[dict]:
    """The ensemble's predictions: per row, the label of highest mean probability and each label's log mean
    probability (rounded as a single model's scores are).

    Args:
        member_predictions (`list[list[dict]]`): one list of predictions per member, as for
            ``mean_label_probabilities``.
        labels (`list[str]`): the labels, in the members' shared order.

    Returns:
        `list[dict]`: one ``{"prediction": label, "scores": {label: log mean probability}}`` per row; a label
        no member scored is left out.

    Example:
        >>> preds = [[{"scores": {"neg": -2.0, "pos": -0.1}}], [{"scores": {"neg": -0.5, "pos": -1.5}}]]
        >>> ensemble_predictions(preds, ["neg", "pos"])[0]["prediction"]
        'pos'
    """
    probs = mean_label_probabilities(member_predictions, labels)  # (rows, labels)
    return [{"prediction": labels[int(row.argmax())],
             "scores": {label: round(float(s), 4) for label, s in zip(labels, row.log()) if s > -math.inf}}
            for row in probs]
