"""Mean and spread of each metric over folds and seeds."""

from __future__ import annotations

import statistics


def summarise(runs: list[dict]) -> dict:
    """Mean and spread of each metric over the folds (and seeds)."""
    out: dict = {"runs": runs}
    for name in runs[0]:
        values = [r[name] for r in runs if isinstance(r.get(name), float)]
        if values and name not in ("fold", "seed"):
            out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out
