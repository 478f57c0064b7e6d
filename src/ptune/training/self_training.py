"""Self-training: the unlabeled rows a first model is surest of join the training rows, as each label's share."""

from __future__ import annotations

import random

from ..data.tables import Table
from ..evaluation.evaluator import label_probabilities
from ..session import Session


def pseudo_labelled(session: Session, train: Table, seed: int, show_progress: bool = False) -> Table:
    """Self-training: ``train`` plus the unlabeled rows a model trained on it is surest of, each label taking its
    share of the training rows (so the majority class does not take them all)."""
    from .trainer import fit  # the teacher is trained by the same loop (which calls back here only when asked)

    tc = session.cfg.train
    label_column = session.cfg.task.label_column
    teacher, _ = fit(session, train, None, None, show_progress=show_progress, seed=seed, self_train=False)
    pool = list(session.unlabeled.rows)
    random.Random(seed).shuffle(pool)
    pool = pool[:tc.self_train_pool]
    preds = session.predict(teacher, pool)
    labels = session.task.labels.labels
    probs = label_probabilities(session, preds)
    counts = [sum(r[label_column] == l for r in train.rows) for l in labels]
    added = []
    for li, label in enumerate(labels):
        want = round(tc.self_train_rows * counts[li] / len(train.rows))
        mine = [i for i in range(len(pool)) if int(probs[i].argmax()) == li]
        mine.sort(key=lambda i: -float(probs[i, li]))
        added += [{**pool[i], label_column: label} for i in mine[:want]]
    return Table(f"{train.source} + {len(added)} self-labelled rows of {session.unlabeled.source}",
                 train.columns + [c for c in [label_column] if c not in train.columns], train.rows + added)
