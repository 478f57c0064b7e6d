"""Mean and spread: of one list of figures, and of each metric over folds and seeds."""

from __future__ import annotations

import statistics


def mean_spread(values: list[float]) -> dict:
    """The mean and sample standard deviation of ``values``.

    Args:
        values (`list[float]`): at least one figure.

    Returns:
        `dict`: ``{"mean": float, "std": float}``; ``std`` is 0.0 for a single value.

    Example:
        >>> mean_spread([0.5, 0.7])["mean"]
        0.6
    """
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict:
    """Mean and spread of each float metric over the runs (folds, seeds).

    Args:
        runs (`list[dict]`): one metrics dict per run, all with the same keys as the first.

    Returns:
        `dict`: ``{"runs": runs}`` plus, for each float-valued metric other than ``fold`` and ``seed``,
        ``{name: {"mean": ..., "std": ...}}`` (integer counts such as ``n`` are left out).

    Example:
        >>> summarise([{"accuracy": 0.5, "n": 4}, {"accuracy": 0.7, "n": 4}])["accuracy"]["mean"]
        0.6
    """
    out: dict = {"runs": runs}
    for name in runs[0]:
        values = [r[name] for r in runs if isinstance(r.get(name), float)]
        if values and name not in ("fold", "seed"):
            out[name] = mean_spread(values)
    return out
