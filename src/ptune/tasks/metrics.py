"""Metrics: accuracy, macro-F1 and precision@1. Plain Python so that a hand-made case checks them exactly."""

from __future__ import annotations


def accuracy(gold: list, pred: list) -> float:
    """Share of rows whose prediction equals the gold answer.

    Args:
        gold (`list`): gold answers, one per row.
        pred (`list`): predictions, in the same order.

    Returns:
        `float`: in [0, 1]; 0.0 for no rows.

    Example:
        >>> accuracy(["a", "b", "b"], ["a", "b", "a"])
        0.6666666666666666
    """
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: list, pred: list, labels: list | None = None) -> float:
    """Mean F1 over the labels (the given ones, else those seen in gold or pred); a label never predicted nor
    present scores 0 only if it was asked for.

    Args:
        gold (`list`): gold labels, one per row.
        pred (`list`): predicted labels, in the same order.
        labels (`list`, *optional*): the labels to average over; those in ``gold`` or ``pred`` if None.

    Returns:
        `float`: the unweighted mean of the per-label F1 scores, in [0, 1].

    Example:
        >>> macro_f1(["a", "a", "b"], ["a", "b", "b"])
        0.6666666666666666
    """
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred))
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(len(scores), 1)


def classification_metrics(gold: list, pred: list, labels: list | None = None) -> dict:
    """Accuracy, macro-F1 and the row count of one set of predictions.

    Args:
        gold (`list`): gold labels, one per row.
        pred (`list`): predicted labels, in the same order.
        labels (`list`, *optional*): the labels macro-F1 averages over (see ``macro_f1``).

    Returns:
        `dict`: ``{"accuracy": float, "macro_f1": float, "n": int}``.

    Example:
        >>> classification_metrics(["a", "b"], ["a", "a"], ["a", "b"])["n"]
        2
    """
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels), "n": len(gold)}


def precision_at_1(gold: list, pred: list) -> float:
    """Share of rows whose top-ranked token is the gold one (LAMA's P@1).

    Args:
        gold (`list`): gold tokens (or words), one per row.
        pred (`list`): each row's top-ranked prediction.

    Returns:
        `float`: in [0, 1]; 0.0 for no rows.

    Example:
        >>> precision_at_1(["Paris", "Rome"], ["Paris", "Milan"])
        0.5
    """
    return accuracy(gold, pred)
