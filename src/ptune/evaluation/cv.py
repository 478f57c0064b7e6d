"""Stratified k-fold cross-validation over the training rows, with ensembles and prediction-time variants."""

from __future__ import annotations

import dataclasses
import time

import torch

from ..config import Config
from ..data.splits import stratified_folds
from ..data.tables import Table
from ..errors import PtuneError
from ..modeling.ptuning import PTuningModel
from ..session import Session
from ..training.prepare import fold_dev, prepare
from ..training.trainer import fit, fit_label_offsets
from .evaluator import evaluate, label_probabilities
from .summary import summarise


def cross_validate(cfg: Config, *, folds: int | None = None, seeds: list[int] | None = None,
                   session: Session | None = None, train_table: Table | None = None, dev_table: Table | None = None,
                   show_progress: bool = True, variants: list[dict] | None = None, ensemble: int = 1) -> dict:
    """k-fold cross-validation over the training rows: held-out metrics per fold, with mean and spread.

    Early stopping inside each fold: with a dev file (``dev_table``) or ``data.dev_fraction``, each fold model keeps
    its best epoch on dev rows that are not in its held-out fold, and stops early after ``train.patience`` bad
    evaluations (``fold_dev``); otherwise it trains for all its epochs.

    ``variants``: prediction-time settings (``task`` fields such as ``calibrate``) to score as well, each on the
    same fold models, so that they cost no extra training; the summary then holds one entry per variant under
    ``variants`` (the first variant's figures are also the summary's own).

    ``ensemble``: train that many models per fold (training seeds ``seed``, ``seed + 100``, ...) and score the
    mean of their label probabilities (classification only); each member's own figures go under ``members``, so
    the two can be compared on the same folds."""
    if ensemble < 1:
        raise PtuneError(f"ensemble must be at least 1, got {ensemble}")
    if session is None:
        session, train_table, dev_table = prepare(cfg, hold_out_dev=False)
    if ensemble > 1 and cfg.task.type != "classification":
        raise PtuneError(f"ensemble averages label probabilities, so it needs a classification task, "
                         f"not {cfg.task.type!r}")
    k = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    variants = variants or [{}]
    rows = train_table.rows
    key = [r[cfg.task.label_column] if cfg.task.type == "classification" else "" for r in rows]
    task_cfg = session.task.cfg
    needs_offsets = any(v.get("calibrate") == "prior" for v in variants)
    if needs_offsets and session.unlabeled is None:
        raise PtuneError("the variant task.calibrate: prior needs unlabeled rows (data.unlabeled)")
    results: list[list[dict]] = [[] for _ in variants]
    members: list[list[dict]] = [[] for _ in variants]  # each ensemble member alone
    t0 = time.perf_counter()

    def show(seed, f, settings, metrics, what=""):
        if show_progress:
            shown = {k_: round(v_, 4) for k_, v_ in metrics.items() if isinstance(v_, float)}
            label = f" {settings}" if settings else ""
            print(f"seed {seed} fold {f + 1}/{k}{label}{what}: {shown}")

    def fold_model(tr: Table, seed_: int) -> PTuningModel:
        model_, _ = fit(session, *fold_dev(cfg, tr, dev_table, seed_), None, show_progress=show_progress, seed=seed_)
        if needs_offsets and model_.label_offsets is None:  # a prediction-time variant asks for them
            fit_label_offsets(session, model_, tr, seed_)
        return model_

    try:
        for seed in seeds:
            for f, held in enumerate(stratified_folds(key, k, seed)):
                held_set = set(held)
                tr = Table(train_table.source, train_table.columns,
                           [r for i, r in enumerate(rows) if i not in held_set])
                te = Table(f"{train_table.source} fold {f + 1}", train_table.columns, [rows[i] for i in held])
                if ensemble == 1:
                    model = fold_model(tr, seed)
                    for v, settings in enumerate(variants):
                        session.task.cfg = dataclasses.replace(task_cfg, **settings)
                        metrics = evaluate(model, session, te) | {"fold": f + 1, "seed": seed}
                        results[v].append(metrics)
                        show(seed, f, settings, metrics)
                    continue
                probs: list[torch.Tensor | None] = [None] * len(variants)
                for m in range(ensemble):
                    model = fold_model(tr, seed + 100 * m)
                    for v, settings in enumerate(variants):
                        session.task.cfg = dataclasses.replace(task_cfg, **settings)
                        preds = session.predict(model, te.rows)
                        metrics = session.task.metrics(te.rows, preds) | {"fold": f + 1, "seed": seed,
                                                                          "member": m + 1}
                        members[v].append(metrics)
                        show(seed, f, settings, metrics, f" member {m + 1}")
                        p = label_probabilities(session, preds)
                        probs[v] = p if probs[v] is None else probs[v] + p
                for v, settings in enumerate(variants):
                    labels = session.task.labels.labels
                    preds = [{"prediction": labels[int(i)]} for i in probs[v].argmax(-1)]
                    metrics = session.task.metrics(te.rows, preds) | {"fold": f + 1, "seed": seed}
                    results[v].append(metrics)
                    show(seed, f, settings, metrics, f" ensemble of {ensemble}")
    finally:
        session.task.cfg = task_cfg
    seconds = time.perf_counter() - t0
    summaries = [summarise(runs) | {"settings": settings} for runs, settings in zip(results, variants)]
    if ensemble > 1:
        for s_, runs in zip(summaries, members):
            s_["members"] = summarise(runs)
    summary = {"folds": k, "seeds": seeds, "seconds": seconds, "ensemble": ensemble,
               **{name: v for name, v in summaries[0].items() if name != "settings"}}
    if len(variants) > 1:
        summary["variants"] = summaries
    return summary
