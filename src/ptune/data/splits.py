"""Stratified splits: every label keeps its share in each part. One seeded shuffle per label underlies both the
dev hold-out and the cross-validation folds, so a seed names a split exactly."""

from __future__ import annotations

import random

from .tables import Table


def _shuffled_groups(keys: list[str], rng: random.Random, *, sort: bool) -> list[list[int]]:
    """Row indices grouped by key (first-appearance order, or sorted by key), each group shuffled by ``rng``."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    ordered = [groups[k] for k in sorted(groups)] if sort else list(groups.values())
    for idx in ordered:
        rng.shuffle(idx)
    return ordered


def stratified_folds(labels: list[str], k: int, seed: int) -> list[list[int]]:
    """k folds of row indices; each label's rows are dealt round-robin after a seeded shuffle, so every fold gets
    its share of each class and no row is in two folds.

    Example:
        >>> stratified_folds(["a", "a", "b", "b"], 2, seed=0)  # doctest: +SKIP
        [[0, 3], [1, 2]]
    """
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for idx in _shuffled_groups(labels, random.Random(seed), sort=True):
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(i)
        offset += len(idx)
    return [sorted(f) for f in folds]


def split_dev(table: Table, keys: list[str], fraction: float, seed: int) -> tuple[Table, Table]:
    """(training rows, held-out rows): ``fraction`` of each key's rows (at least one) held out, seeded. ``keys``
    are the rows' labels for classification (stratified), or all equal."""
    dev_set = set()
    for idx in _shuffled_groups(keys, random.Random(seed), sort=False):
        dev_set.update(idx[:max(1, round(len(idx) * fraction))])
    return (Table(table.source, table.columns, [r for i, r in enumerate(table.rows) if i not in dev_set]),
            Table(f"{table.source} (held-out {fraction:.0%})", table.columns,
                  [table.rows[i] for i in sorted(dev_set)]))


def fold_tables(table: Table, held: list[int], fold: int) -> tuple[Table, Table]:
    """(training rows, held-out rows) of one fold given its held-out indices."""
    held_set = set(held)
    return (Table(table.source, table.columns, [r for i, r in enumerate(table.rows) if i not in held_set]),
            Table(f"{table.source} fold {fold}", table.columns, [table.rows[i] for i in held]))
