"""Every PNG ptune writes: training curves, the search's candidates, LAMA's relations. One writer (``save_png``),
atomic like every other file, and matplotlib's non-interactive backend (no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

from .files import write_atomic


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: it costs about a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG (atomically) and free it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    write_atomic(path, buf.getvalue())


def plot_curves(history: list[dict], metric: str, path: Path) -> None:
    """Training loss per step and the dev metric per evaluation, on one figure."""
    plt = pyplot()

    train = [h for h in history if h.get("kind") == "train"]
    dev = [h for h in history if h.get("kind") == "dev"]
    if not train:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in train], [h["loss"] for h in train], color="tab:blue", alpha=0.6, label="train loss")
    if dev and "loss" in dev[0]:
        ax.plot([h["step"] for h in dev], [h["loss"] for h in dev], "o-", color="tab:cyan", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if dev and metric != "loss" and metric in dev[0]:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in dev], [h[metric] for h in dev], "s-", color="tab:orange", label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric}")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("ptune training")
    save_png(fig, path)


def plot_search(results: list[dict], best: int, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(results) + 1.5))
    ys = range(len(results))
    means = [r.get("macro_f1", {}).get("mean", 0) for r in results]
    sds = [r.get("macro_f1", {}).get("std", 0) for r in results]
    colors = ["tab:orange" if i == best else "tab:blue" for i in ys]
    ax.barh(list(ys), means, xerr=sds, color=colors, alpha=0.8)
    for y, r in zip(ys, results):  # each fold's score: the spread the mean hides
        folds = r.get("fold_macro_f1", [])
        ax.scatter(folds, [y] * len(folds), s=12, color="black", alpha=0.5, zorder=3)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"#{i}" for i in ys])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("cross-validated macro-F1 (bar: mean ± sd over folds and seeds; dots: each fold)")
    ax.set_title("ptune search: candidates (orange: chosen)")
    save_png(fig, path)


def plot_lama(report: dict, path: Path) -> None:
    plt = pyplot()

    rels = [r for r, e in report["relations"].items() if e.get("ptuning_p1") is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(rels) + 2), 4))
    xs = range(len(rels))
    manual = [report["relations"][r]["manual_p1"] or 0.0 for r in rels]
    tuned = [report["relations"][r]["ptuning_p1"] for r in rels]
    ax.bar([x - 0.2 for x in xs], manual, width=0.4, label="manual prompt", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="P-tuning", color="tab:orange")
    ax.set_xticks(list(xs), rels, rotation=45 if len(rels) > 8 else 0)
    ax.set_ylabel("P@1")
    ax.set_title(f"LAMA-{report['vocab']} P@1, {report['model']}")
    ax.legend()
    save_png(fig, path)
