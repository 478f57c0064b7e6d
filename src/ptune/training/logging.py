"""The run's history and where it goes: one record per optimizer step, evaluation and kept checkpoint, and a closing
summary; written as ``metrics.jsonl`` (one JSON object a line) and drawn as ``curves.png`` in the output folder."""

from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint
from ..plotting import plot_curves


class MetricLogger:
    """The one place a run's records are added and written.

    The records live in ``history``, the list the resumable state saves (``Progress.history``), so a resumed run
    continues the same history and its files hold every record from step 1.

    Args:
        history (list[dict]): the records so far; new ones are appended to this list in place.
        out_dir (Path | None): where ``metrics.jsonl`` and ``curves.png`` are written; None keeps the records in
            memory only.
        metric (str): the dev metric drawn beside the losses in ``curves.png``.

    Example:
        >>> metrics = MetricLogger([], Path("run"), "accuracy")
        >>> metrics.log({"kind": "train", "step": 1, "loss": 0.69, "lr": 0.01})
        {'kind': 'train', 'step': 1, 'loss': 0.69, 'lr': 0.01}
        >>> metrics.write()  # run/metrics.jsonl and run/curves.png
    """

    def __init__(self, history: list[dict], out_dir: Path | None, metric: str):
        self.history = history
        self.out_dir = out_dir
        self.metric = metric

    def log(self, record: dict) -> dict:
        """Append ``record`` (``kind``: train, dev, checkpoint or summary) to the history; return it."""
        self.history.append(record)
        return record

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None

    def write(self, plot: bool = True) -> None:
        """Rewrite ``metrics.jsonl`` atomically and, with ``plot``, ``curves.png``; nothing without ``out_dir``."""
        if self.out_dir is None:
            return
        lines = "".join(json.dumps(h) + "\n" for h in self.history)
        checkpoint.write_atomic(self.out_dir / "metrics.jsonl", lines.encode())
        if plot:
            plot_curves(self.history, self.metric, self.out_dir / "curves.png")
