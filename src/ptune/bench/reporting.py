"""What every benchmark writes and says: ``results.json`` and ``results.md`` rewritten as the run goes (a stopped
run keeps its part), the closing line on time, and progress lines on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import write_atomic


def log_to_stderr(msg: str) -> None:
    """The default progress log: one line on stderr, flushed at once."""
    print(msg, file=sys.stderr, flush=True)


def write_results(out: Path, report: dict, markdown: str) -> None:
    """``out/results.json`` (the report, indented) and ``out/results.md``, each replaced atomically."""
    write_atomic(out / "results.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(out / "results.md", markdown.encode())


def took(report: dict) -> str:
    """The closing sentence: the run's seconds, marked partial while ``report["complete"]`` is False."""
    return (f"Took {report['seconds']:.0f} s"
            + ("." if report.get("complete", True) else " so far (partial: the run did not finish)."))
