"""The folds cross-validation and the baselines share: each seed's stratified k folds, as tables."""

from __future__ import annotations

from collections.abc import Iterator

from ..data.splits import fold_tables, stratified_folds
from ..data.tables import Table


def seeded_folds(table: Table, keys: list[str], k: int, seeds: list[int]) -> Iterator[tuple[int, int, Table, Table]]:
    """Every seed's k stratified folds of ``table``, seed by seed, fold by fold.

    Args:
        table (`Table`): the rows to fold.
        keys (`list[str]`): one stratification key per row (its label; all equal for tasks without labels).
        k (`int`): folds per seed.
        seeds (`list[int]`): one split per seed.

    Returns:
        `Iterator[tuple[int, int, Table, Table]]`: ``(seed, fold number from 1, training rows, held-out rows)``.

    Example:
        >>> for seed, fold, train, held in seeded_folds(table, table.column("label"), 5, [1, 2]):  # doctest: +SKIP
        ...     print(seed, fold, len(train), len(held))
    """
    for seed in seeds:
        for fold, held in enumerate(stratified_folds(keys, k, seed), 1):
            yield (seed, fold, *fold_tables(table, held, fold))
