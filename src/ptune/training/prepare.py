"""Read and check every input of a run before a model is loaded or a file written, and hold out dev rows."""

from __future__ import annotations

from ..config import Config
from ..data.labels import LabelSpace
from ..data.splits import split_dev
from ..data.tables import Table, check_table
from ..session import (EMPTY_HINT, Session, check_inputs, load_training_tables, needs_virtual_tokens, open_session,
                       read_split)
from ..template import parse_template
from .distributed import process_device


def prepare(cfg: Config, hold_out_dev: bool = True) -> tuple[Session, Table, Table | None]:
    """Read and check all data first (a bad row stops the run before a model is loaded or a file written).

    ``hold_out_dev``: without a dev file, split ``data.dev_fraction`` of the training rows off as dev. Cross-validation
    passes False: it takes each fold's dev from that fold's training rows (``fold_dev``), so every row is scored."""
    train, dev = load_training_tables(cfg)
    template = parse_template(cfg.task.template)
    check_inputs(cfg, template, train, labelled=True)
    if dev is not None:
        check_inputs(cfg, template, dev, labelled=True)
    labels = None
    if cfg.task.type == "classification":  # labels too are checked before the model is loaded
        labels = LabelSpace.build(cfg.task.verbalizer, train.column(cfg.task.label_column))
        for table in (train, dev) if dev is not None else (train,):
            for i, row in enumerate(table.rows, 1):
                labels.index(row[cfg.task.label_column], where=f"{table.source}: row {i}: ")
    unlabeled = read_split(cfg, "unlabeled")
    if unlabeled is not None:
        check_inputs(cfg, template, unlabeled, labelled=False)
    for i, text in enumerate(cfg.train.distill_templates):  # the teachers read these rows too
        teacher = parse_template(text)
        for table in (train, unlabeled):
            teacher.validate(kind=None, needs_virtual=needs_virtual_tokens(cfg), columns=table.columns,
                             field_map=cfg.data.columns,
                             where=f"train.distill_templates[{i}] (checked against {table.source})")
            check_table(table, [cfg.data.columns.get(f, f) for f in teacher.fields],
                        optional=cfg.data.optional_columns(teacher.fields), empty_hint=EMPTY_HINT)
    session = open_session(cfg, labels=labels, device=process_device(cfg), unlabeled=unlabeled)
    session.task.check(train)
    if dev is not None:
        session.task.check(dev)
    if hold_out_dev:
        train, dev = fold_dev(cfg, train, dev, cfg.train.seed)
    return session, train, dev


def fold_dev(cfg: Config, train: Table, dev: Table | None, seed: int) -> tuple[Table, Table | None]:
    """(the rows a model trains on, the dev rows that pick its best epoch and, with ``train.patience``, stop it
    early): the dev file's rows where there is one, else ``data.dev_fraction`` of ``train`` (stratified, seeded; in
    cross-validation, of the fold's own training rows, never its held-out ones); neither: no dev, the last epoch is
    kept. ``prepare`` applies the same rule to a plain training run."""
    if dev is None and cfg.data.dev_fraction:
        keys = train.column(cfg.task.label_column) if cfg.task.type == "classification" else [""] * len(train)
        return split_dev(train, keys, cfg.data.dev_fraction, seed)
    return train, dev
