"""Distillation from an ensemble on unlabeled rows (PET-style): teachers trained on the labelled rows, one per seed
and template, label a seeded sample of ``data.unlabeled`` with their averaged label probabilities, and the final
model trains on the labelled rows plus these soft-labelled rows (``train.distill_*``); in rounds, each round's
students teach the next. The models are trained by the caller's ``train_model`` (``trainer.fit``), so this module
only chooses the rows, builds the teachers' sessions and averages their labels.

Rows that must not teach (held-out rows in ``cv`` and ``search``, dev and test rows) are kept out of the unlabeled
sample by their text fields (``unlabeled_pool``), so a pool that holds them (``data.unlabeled`` pointing at the
training file) lends them no label.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from ..data.labels import LabelSpace
from ..data.tables import Table
from ..errors import PtuneError
from ..modeling.ptuning import PTuningModel
from ..session import Session, open_session
from ..tasks.ensemble import mean_label_probabilities
from ..template import parse_template


@dataclass
class SoftRows:
    """Unlabeled rows with the teachers' label distributions.

    Args:
        rows (`list[dict]`): the unlabeled rows.
        probs (`torch.Tensor`): (rows, labels) each row's averaged label probabilities, in the task's label order.
        weight (`float`): a soft row's weight in the loss (``train.distill_weight``).
    """
    rows: list[dict]
    probs: torch.Tensor
    weight: float


TrainModel = Callable[[Session, Table, SoftRows | None, int], PTuningModel]
"""``train_model(session, labelled rows, soft rows or None, seed) -> model``: one teacher trained, nothing written."""


def text_columns(session: Session) -> list[str]:
    """The data columns the task's template and the teachers' templates read: what makes two rows the same input."""
    cfg = session.cfg
    fields = list(session.template.fields)
    for template in cfg.train.distill_templates:
        fields += [f for f in parse_template(template).fields if f not in fields]
    return [cfg.data.columns.get(f, f) for f in fields]


def unlabeled_pool(session: Session, size: int, seed: int, exclude: list[Table] = ()) -> list[dict]:
    """A seeded sample of ``size`` rows of ``session.unlabeled``, without any row whose text fields equal those of
    a row in ``exclude`` (held-out, dev or test rows: they must lend no label to training).

    Args:
        session (Session): the run's session; ``session.unlabeled`` holds the rows.
        size (int): how many rows to sample (all, where fewer are left).
        seed (int): seeds the sample.
        exclude (list[Table]): tables whose rows' inputs are kept out of the pool.

    Returns:
        list[dict]: the sampled rows (the same rows for the same inputs and seed).

    Example:
        >>> pool = unlabeled_pool(session, 400, seed=1, exclude=[held_out])
        >>> len(pool) <= 400
        True
    """
    columns = text_columns(session)

    def key(row: dict) -> tuple:
        return tuple(str(row.get(c, "")) for c in columns)

    banned = {key(row) for table in exclude if table is not None for row in table.rows}
    pool = [row for row in session.unlabeled.rows if key(row) not in banned]
    random.Random(seed).shuffle(pool)
    return pool[:size]


def teacher_sessions(session: Session) -> list[Session]:
    """One session per teacher template over the same frozen base and labels (``train.distill_templates``), each
    read by its own words where ``train.distill_verbalizers`` gives them; where none is listed, ``[session]`` (or its
    copy that scores every label). Teachers score every label (no ``task.top_labels``): a soft label needs each
    one's probability."""
    if not session.cfg.train.distill_templates and session.cfg.task.top_labels is None:
        return [session]
    templates = session.cfg.train.distill_templates or [session.cfg.task.template]
    words = session.cfg.train.distill_verbalizers or [{}] * len(templates)
    return [open_session(session.cfg.replace({"task.template": t, "task.top_labels": None}),
                         labels=teacher_labels(session.task.labels, w, i), base=session.base,
                         unlabeled=session.unlabeled)
            for i, (t, w) in enumerate(zip(templates, words))]


def teacher_labels(labels: LabelSpace, verbalizer: dict, i: int) -> LabelSpace:
    """The task's ``labels`` spoken by teacher ``i``'s ``verbalizer`` (empty: as the task speaks them), in the task's
    label order, so that every teacher's probabilities line up.

    Example:
        >>> teacher_labels(LabelSpace(["LOC", "HUM"], [["place"], ["person"]]), {"HUM": "human", "LOC": "location"},
        ...                0).to_dict()
        {'LOC': ['location'], 'HUM': ['human']}
    """
    if not verbalizer:
        return labels
    own = LabelSpace.build(verbalizer)
    if sorted(own.labels) != sorted(labels.labels):
        raise PtuneError(f"train.distill_verbalizers[{i}] speaks the labels {own.labels} but the task's are "
                         f"{labels.labels}: a teacher's words must name the same labels")
    return LabelSpace(list(labels.labels), [own.words[own.labels.index(label)] for label in labels.labels])


def soft_labels(teachers: list[tuple[Session, PTuningModel]], pool: list[dict]) -> torch.Tensor:
    """(rows, labels): the teachers' label probabilities on ``pool``, averaged (``tasks.ensemble``).

    Args:
        teachers (list[tuple[Session, PTuningModel]]): each trained teacher with the session of its template.
        pool (list[dict]): the unlabeled rows to label.

    Returns:
        torch.Tensor: (rows, labels) the mean over teachers of each one's scores softmaxed over the labels.

    Example:
        >>> soft_labels([(session, teacher)], pool).sum(-1)  # rows of 1
    """
    labels = teachers[0][0].task.labels.labels
    return mean_label_probabilities([s.predict(model, pool) for s, model in teachers], labels)


def distil(session: Session, train: Table, seed: int, train_model: TrainModel,
           exclude: list[Table] = ()) -> SoftRows:
    """The soft-labelled rows the final model trains on beside ``train``: ``train.distill_rounds`` rounds, each
    training every teacher (``distill_teachers`` seeds from ``seed``, on every template) on ``train`` plus the
    previous round's soft rows, then labelling the same seeded sample of ``distill_rows`` unlabeled rows.

    Args:
        session (Session): the run's session; ``session.unlabeled`` holds the unlabeled rows.
        train (Table): the labelled rows the teachers train on (in ``cv``, the fold's training rows only).
        seed (int): the first teacher's seed and the sample's seed.
        train_model (TrainModel): trains one teacher (no dev, nothing written).
        exclude (list[Table]): rows kept out of the sample by their text fields (held-out, dev, test).

    Returns:
        SoftRows: the last round's rows and averaged label probabilities.

    Example:
        >>> soft = distil(session, train, 42, train_model, exclude=[held_out])
        >>> soft.probs.shape  # (rows, labels)
    """
    tc = session.cfg.train
    if session.unlabeled is None:
        raise PtuneError("train.distill_teachers is set but no unlabeled rows were read (data.unlabeled)")
    pool = unlabeled_pool(session, tc.distill_rows, seed, exclude)
    if not pool:
        raise PtuneError(f"train.distill_teachers: none of the {len(session.unlabeled)} rows of "
                         f"{session.unlabeled.source} (data.unlabeled) is left once rows equal to held-out, dev or "
                         "test rows are taken out")
    sessions = teacher_sessions(session)
    soft = None
    for _ in range(tc.distill_rounds):
        teachers = [(s, train_model(s, train, soft, seed + i)) for s in sessions for i in range(tc.distill_teachers)]
        soft = SoftRows(pool, soft_labels(teachers, pool), tc.distill_weight)
    return soft
