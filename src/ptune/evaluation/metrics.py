"""Metrics: accuracy, macro-F1 and precision@1. Plain Python so that a hand-made case checks them exactly."""

from __future__ import annotations


def accuracy(gold: list, pred: list) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: list, pred: list, labels: list | None = None) -> float:
    """Mean F1 over the labels (the given ones, else those seen in gold or pred); a label never predicted nor
    present scores 0 only if it was asked for."""
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred))
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(len(scores), 1)


def classification_metrics(gold: list, pred: list, labels: list | None = None) -> dict:
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels), "n": len(gold)}


def precision_at_1(gold: list, pred: list) -> float:
    """Share of rows whose top-ranked token is the gold one (LAMA's P@1)."""
    return accuracy(gold, pred)
