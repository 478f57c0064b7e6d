"""Baselines that a P-tuned model must beat: the majority class, and a zero-shot manual prompt (the same label
ranking through a template with no virtual tokens, no training), both on the same folds as cross-validation."""

from __future__ import annotations

import statistics
from collections import Counter

from .config import Config
from .data import Table
from .evaluate import classification_metrics
from .session import open_session
from .train import prepare, stratified_folds


def _summary(runs: list[dict]) -> dict:
    out = {"runs": runs}
    for name in ("accuracy", "macro_f1"):
        values = [r[name] for r in runs]
        out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def folds_of(cfg: Config, table: Table, folds: int, seeds: list[int]):
    labels = [r[cfg.task.label_column] for r in table.rows]
    for seed in seeds:
        for held in stratified_folds(labels, folds, seed):
            held_set = set(held)
            yield [r for i, r in enumerate(table.rows) if i not in held_set], [table.rows[i] for i in held]


def majority_baseline(cfg: Config, table: Table, folds: int, seeds: list[int]) -> dict:
    """Always answer the training folds' most frequent label."""
    runs = []
    col = cfg.task.label_column
    for train_rows, test_rows in folds_of(cfg, table, folds, seeds):
        majority = Counter(r[col] for r in train_rows).most_common(1)[0][0]
        gold = [r[col] for r in test_rows]
        runs.append(classification_metrics(gold, [majority] * len(gold), sorted(set(r[col] for r in table.rows))))
    return _summary(runs)


def zero_shot(cfg: Config, template: str, table: Table, folds: int, seeds: list[int], base=None) -> dict:
    """Rank the label words after a manual prompt (``template`` has no virtual tokens); nothing is trained, so
    each fold's score is just the held-out rows' accuracy under the same label ranking."""
    zcfg = Config(**{**cfg.__dict__})
    zcfg.task = type(cfg.task)(**{**cfg.task.__dict__, "template": template})
    values = table.column(cfg.task.label_column)
    session = open_session(zcfg, label_values=values, base=base, allow_no_virtual=True)
    model = session.new_model()
    preds = {id(r): p for r, p in zip(table.rows, session.predict(model, table.rows))}
    runs = []
    col = cfg.task.label_column
    for _, test_rows in folds_of(cfg, table, folds, seeds):
        gold = [r[col] for r in test_rows]
        runs.append(classification_metrics(gold, [preds[id(r)]["prediction"] for r in test_rows],
                                           session.task.labels.labels))
    return _summary(runs)


def baselines(cfg: Config, manual_template: str, folds: int | None = None, seeds: list[int] | None = None) -> dict:
    session, table, _ = prepare(cfg)
    folds = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    return {"majority": majority_baseline(cfg, table, folds, seeds),
            "zero_shot": zero_shot(cfg, manual_template, table, folds, seeds, base=session.base)}
