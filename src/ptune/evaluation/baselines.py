"""Baselines that a P-tuned model must beat: the majority class, a zero-shot manual prompt (the same label ranking
through a template with no virtual tokens, no training) and, for ``task.head: linear``, the linear probe (the same
classifier fitted on the manual prompt's states: no virtual tokens, nothing else trained); all on the same folds
as cross-validation."""

from __future__ import annotations

import statistics
from collections import Counter

from ..config import Config
from ..data.splits import stratified_folds
from ..data.tables import Table
from ..session import Session, open_session
from ..training.prepare import prepare
from .metrics import classification_metrics


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


def manual_session(cfg: Config, template: str, table: Table, base, head: str) -> Session:
    """``cfg`` with a manual prompt (``template``, no virtual tokens) read out by ``head``, over the same base."""
    mcfg = Config(**{**cfg.__dict__})
    mcfg.task = type(cfg.task)(**{**cfg.task.__dict__, "template": template, "head": head})
    return open_session(mcfg, label_values=table.column(cfg.task.label_column), base=base, allow_no_virtual=True)


def fit_probe(session: Session, train: Table, seed: int):
    """The linear probe's model: no prompt, the classifier fitted on the pooled states of ``train``'s rows."""
    model = session.new_model(seed)
    examples, _ = session.task.train_examples(train)
    session.task.fit_head(model, examples, session.cfg.train.eval_batch_size, session.device)
    return model


def linear_probe(cfg: Config, template: str, table: Table, folds: int, seeds: list[int], base=None) -> dict:
    """``task.head: linear`` without P-tuning: the classifier fitted on each training fold's pooled states under
    the manual prompt (``template``, no virtual tokens), scored on the held-out fold. What the trained prompt adds
    is the P-tuned model's lead over this."""
    session = manual_session(cfg, template, table, base, "linear")
    runs = []
    col = cfg.task.label_column
    for (train_rows, test_rows), seed in zip(folds_of(cfg, table, folds, seeds),
                                             [s for s in seeds for _ in range(folds)]):
        model = fit_probe(session, Table(table.source, table.columns, train_rows), seed)
        preds = session.predict(model, test_rows)
        runs.append(classification_metrics([r[col] for r in test_rows], [p["prediction"] for p in preds],
                                           session.task.labels.labels))
    return _summary(runs)


def zero_shot(cfg: Config, template: str, table: Table, folds: int, seeds: list[int], base=None) -> dict:
    """Rank the label words after a manual prompt (``template`` has no virtual tokens); nothing is trained, so
    each fold's score is just the held-out rows' accuracy under the same label ranking."""
    session = manual_session(cfg, template, table, base, "words")
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
    session, table, _ = prepare(cfg, hold_out_dev=False)  # the rows cross-validation folds over
    folds = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    out = {"majority": majority_baseline(cfg, table, folds, seeds),
           "zero_shot": zero_shot(cfg, manual_template, table, folds, seeds, base=session.base)}
    if cfg.task.head == "linear":
        out["linear_probe"] = linear_probe(cfg, manual_template, table, folds, seeds, base=session.base)
    return out
