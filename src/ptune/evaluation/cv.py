"""Stratified k-fold cross-validation over the training rows, with ensembles and prediction-time variants."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from ..config import Config
from ..data.tables import Table
from ..errors import PtuneError
from ..evaluator import evaluate, predict
from ..modeling.ptuning import PTuningModel
from ..session import Session
from ..tasks import Task
from ..tasks.ensemble import ensemble_predictions
from ..training.prepare import fold_dev, prepare
from ..training.trainer import fit, fit_label_offsets
from .folds import seeded_folds
from .summary import summarise


def cross_validate(cfg: Config, *, folds: int | None = None, seeds: list[int] | None = None,
                   session: Session | None = None, train_table: Table | None = None, dev_table: Table | None = None,
                   show_progress: bool = True, variants: list[dict] | None = None, ensemble: int = 1,
                   trained: bool = True, loss: bool = True) -> dict:
    """k-fold cross-validation over the training rows: held-out metrics per fold, with mean and spread.

    Early stopping inside each fold: with a dev file (``dev_table``) or ``data.dev_fraction``, each fold model keeps
    its best epoch on dev rows that are not in its held-out fold, and stops early after ``train.patience`` bad
    evaluations (``fold_dev``); otherwise it trains for all its epochs.

    Args:
        cfg (`Config`): the recipe to cross-validate.
        folds (`int`, *optional*): folds per seed; ``train.cv_folds`` if None.
        seeds (`list[int]`, *optional*): one split (and training seed) per seed; ``[train.seed]`` if None.
        session (`Session`, *optional*): an open session for ``cfg``; with it, pass ``train_table`` (and
            ``dev_table`` if any). Without it, ``cfg``'s data are read and its model loaded.
        train_table (`Table`, *optional*): the rows to fold.
        dev_table (`Table`, *optional*): a dev file every fold model stops early on.
        show_progress (`bool`): print each fold's figures and show training progress.
        variants (`list[dict]`, *optional*): prediction-time settings (``task`` fields such as ``calibrate``) to
            score as well, each on the same fold models, so that they cost no extra training.
        ensemble (`int`): models per fold (training seeds ``seed``, ``seed + 100``, ...), scored by the mean of their
            label probabilities (classification only).
        trained (`bool`): False scores each fold's model as built, nothing trained (a zero-shot manual prompt on
            the same folds; ``task.calibrate: prior`` offsets are still fitted on the training fold).
        loss (`bool`): each fold's held-out mean loss too (a second pass over its rows); False leaves ``loss`` out
            of the runs (a search ranks by accuracy and macro-F1 alone).

    Returns:
        `dict`: ``folds``, ``seeds``, ``seconds``, ``ensemble``, ``runs`` (one metrics dict per fold and seed) and
        each metric's ``{"mean", "std"}``. With several ``variants``, ``variants`` holds one such summary per
        variant (with its ``settings``); the first variant's figures are also the summary's own. With
        ``ensemble > 1``, each summary's ``members`` holds every member's own figures on the same folds.

    Example:
        >>> summary = cross_validate(cfg, folds=5, seeds=[1, 2], show_progress=False)  # doctest: +SKIP
        >>> summary["macro_f1"]["mean"], summary["macro_f1"]["std"]  # doctest: +SKIP
    """
    if ensemble < 1:
        raise PtuneError(f"ensemble must be at least 1, got {ensemble}")
    if session is None:
        session, train_table, dev_table = prepare(cfg, hold_out_dev=False)
    if ensemble > 1 and cfg.task.type != "classification":
        raise PtuneError(f"ensemble averages label probabilities, so it needs a classification task, "
                         f"not {cfg.task.type!r}")
    k = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    scorer = FoldScorer.build(cfg, session, dev_table, variants or [{}], k, show_progress, trained, loss)
    keys = [r[cfg.task.label_column] if cfg.task.type == "classification" else "" for r in train_table.rows]
    results: list[list[dict]] = [[] for _ in scorer.variants]
    members: list[list[dict]] = [[] for _ in scorer.variants]  # each ensemble member alone
    t0 = time.perf_counter()
    for seed, fold, train, held in seeded_folds(train_table, keys, k, seeds):
        if ensemble == 1:
            scored, fold_members = scorer.single(train, held, seed, fold), []
        else:
            scored, fold_members = scorer.ensemble(train, held, seed, fold, ensemble)
        for v, metrics in enumerate(scored):
            results[v].append(metrics)
        for v, runs in enumerate(fold_members):
            members[v] += runs
    return cv_summary(scorer.variants, results, members if ensemble > 1 else None,
                      {"folds": k, "seeds": seeds, "seconds": time.perf_counter() - t0, "ensemble": ensemble})


def variant_task(task: Task, settings: dict) -> Task:
    """A copy of ``task`` whose config has ``settings`` (``task`` fields) changed; ``task`` itself is untouched."""
    return dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, **settings))


@dataclass
class FoldScorer:
    """Trains one fold's model (or ensemble members) and scores it under every prediction-time variant."""
    cfg: Config
    session: Session
    dev_table: Table | None
    variants: list[dict]
    tasks: list[Task]  # one per variant: ``session.task`` with that variant's settings
    folds: int
    show_progress: bool
    needs_offsets: bool  # a variant asks for prior calibration, so every fold model gets label offsets
    trained: bool = True  # False: each fold's model is scored as built (a zero-shot prompt)
    loss: bool = True  # the held-out mean loss beside the metrics (False: a pass over the rows saved)

    @classmethod
    def build(cls, cfg: Config, session: Session, dev_table: Table | None, variants: list[dict], folds: int,
              show_progress: bool, trained: bool = True, loss: bool = True) -> FoldScorer:
        """A scorer with one task per variant; checks that a ``calibrate: prior`` variant has unlabeled rows."""
        needs_offsets = any(v.get("calibrate") == "prior" for v in variants)
        if needs_offsets and session.unlabeled is None:
            raise PtuneError("the variant task.calibrate: prior needs unlabeled rows (data.unlabeled)")
        tasks = [variant_task(session.task, settings) for settings in variants]
        return cls(cfg, session, dev_table, variants, tasks, folds, show_progress, needs_offsets, trained, loss)

    def train(self, train: Table, seed: int, held: Table | None = None) -> PTuningModel:
        """A fold model: trained on ``train`` (with the fold's dev rule), or as built when nothing is trained, with
        label offsets where a variant needs them; unlabeled rows equal to ``held`` rows (the fold's held-out ones)
        get no teacher's label."""
        if self.trained:
            model, _ = fit(self.session, *fold_dev(self.cfg, train, self.dev_table, seed), None,
                           show_progress=self.show_progress, seed=seed, held_out=held)
        else:
            model = self.session.new_model(seed).eval()
        if self.needs_offsets and model.label_offsets is None:
            fit_label_offsets(self.session, model, train, seed)
        return model

    def show(self, seed: int, fold: int, settings: dict, metrics: dict, what: str = "") -> None:
        """Print one fold's figures (when showing progress)."""
        if self.show_progress:
            shown = {name: round(value, 4) for name, value in metrics.items() if isinstance(value, float)}
            label = f" {settings}" if settings else ""
            print(f"seed {seed} fold {fold}/{self.folds}{label}{what}: {shown}")

    def single(self, train: Table, held: Table, seed: int, fold: int) -> list[dict]:
        """One model per fold: each variant's held-out metrics (with the loss, where asked)."""
        model = self.train(train, seed, held)
        out = []
        for settings, task in zip(self.variants, self.tasks):
            metrics = evaluate(model, self.session, held, task=task, loss=self.loss) | {"fold": fold, "seed": seed}
            self.show(seed, fold, settings, metrics)
            out.append(metrics)
        return out

    def ensemble(self, train: Table, held: Table, seed: int, fold: int,
                 size: int) -> tuple[list[dict], list[list[dict]]]:
        """``size`` models per fold: (each variant's ensemble metrics, each variant's members' own metrics)."""
        member_preds: list[list[list[dict]]] = [[] for _ in self.variants]
        member_metrics: list[list[dict]] = [[] for _ in self.variants]
        for m in range(size):
            model = self.train(train, seed + 100 * m, held)
            for v, (settings, task) in enumerate(zip(self.variants, self.tasks)):
                preds = predict(model, self.session, held.rows, task)
                metrics = task.metrics(held.rows, preds) | {"fold": fold, "seed": seed, "member": m + 1}
                self.show(seed, fold, settings, metrics, f" member {m + 1}")
                member_preds[v].append(preds)
                member_metrics[v].append(metrics)
        out = []
        for settings, task, preds in zip(self.variants, self.tasks, member_preds):
            averaged = ensemble_predictions(preds, task.labels.labels)
            metrics = task.metrics(held.rows, averaged) | {"fold": fold, "seed": seed}
            self.show(seed, fold, settings, metrics, f" ensemble of {size}")
            out.append(metrics)
        return out, member_metrics


def cv_summary(variants: list[dict], results: list[list[dict]], members: list[list[dict]] | None,
               head: dict) -> dict:
    """The summary ``cross_validate`` returns: ``head`` (folds, seeds, seconds, ensemble), the first variant's mean
    and spread, and with several variants one summary per variant under ``variants``."""
    summaries = [summarise(runs) | {"settings": settings} for runs, settings in zip(results, variants)]
    for summary, runs in zip(summaries, members or []):
        summary["members"] = summarise(runs)
    out = head | {name: value for name, value in summaries[0].items() if name != "settings"}
    if len(variants) > 1:
        out["variants"] = summaries
    return out
