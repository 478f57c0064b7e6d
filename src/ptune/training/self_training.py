"""Self-training: the unlabeled rows a first model (the teacher) is surest of join the training rows, each label
taking its share: distillation (``distillation``) from one teacher with hard labels. The teacher is trained by the
caller (``trainer.with_pseudo_labels``); this module only chooses, from the same seeded, fold-safe sample."""

from __future__ import annotations

from ..data.tables import Table
from ..evaluator import label_probabilities
from ..modeling.ptuning import PTuningModel
from ..session import Session
from .distillation import unlabeled_pool


def pseudo_labelled(session: Session, train: Table, teacher: PTuningModel, seed: int,
                    exclude: list[Table | None] = ()) -> Table:
    """``train`` plus the unlabeled rows ``teacher`` is surest of, labelled with its predictions.

    From a seeded sample of ``train.self_train_pool`` unlabeled rows, each label takes the
    ``train.self_train_rows * (its share of train)`` rows it is predicted for with the highest probability, so the
    majority class does not take them all. Deterministic for a given teacher and seed.

    Args:
        session (Session): the run's session; ``session.unlabeled`` holds the rows to choose from.
        train (Table): the labelled training rows.
        teacher (PTuningModel): a model trained on ``train``.
        seed (int): seeds the sample of unlabeled rows.
        exclude (list[Table | None]): rows (held-out, dev) whose inputs are kept out of the sample.

    Returns:
        Table: the rows of ``train`` followed by the chosen rows, label by label, surest first.

    Example:
        >>> grown = pseudo_labelled(session, train, teacher, seed=1)
        >>> grown.rows[:len(train)] == train.rows
        True
    """
    tc = session.cfg.train
    label_column = session.cfg.task.label_column
    pool = unlabeled_pool(session, tc.self_train_pool, seed, exclude)
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
