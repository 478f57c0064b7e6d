"""Training metrics on disk: ``metrics.jsonl`` (one JSON object per step, evaluation and summary) and
``curves.png``."""

from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint
from ..plotting import plot_curves


def write_metrics(out_dir: Path, history: list[dict], metric: str, plot: bool = True) -> None:
    lines = "".join(json.dumps(h) + "\n" for h in history)
    checkpoint.write_atomic(out_dir / "metrics.jsonl", lines.encode())
    if plot:
        plot_curves(history, metric, out_dir / "curves.png")
