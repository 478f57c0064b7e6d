"""``ptune demo``: the main job on the embedded default model, offline.

Trains on the bundled customer-messages set (64 hand-written messages, complaint or not), picks the best epoch on a
held-out fifth of them, evaluates on 35 messages it never saw, compares with the majority class, a zero-shot manual
prompt and the linear probe (the same classifier without virtual tokens), and predicts a few new messages.
"""

from __future__ import annotations

import tempfile
import time
from importlib.resources import files
from pathlib import Path

import click

from .config import config_from_dict
from .data.tables import Table, read_table
from .evaluation.baselines import fit_probe, manual_session
from .inference import Predictor
from .tasks.metrics import classification_metrics
from .training.run import train

DATA = files("ptune") / "examples_data"

MANUAL_TEMPLATE = "Message : {message} Is this a complaint ? Answer : [TARGET]"

DEMO_CONFIG = {
    # the virtual tokens sit between the message and the question, where they can read the message; the label is
    # read by a linear classifier over the middle block's pooled states (task.head linear), which cross-validated
    # at 0.99 accuracy on the 64 training messages against 0.87 for the label words (README, "make demo")
    "task": {"type": "classification",
             "template": "Message : {message} [P*8] Is this a complaint ? Answer : [TARGET]",
             "label_column": "label",
             "verbalizer": {"complaint": "yes", "no complaint": "no"},
             "head": "linear"},
    "encoder": {"type": "lstm", "hidden_size": 128},
    "data": {"dev_fraction": 0.2},
    "train": {"lr": 3e-3, "batch_size": 8, "epochs": 8, "max_length": 96, "seed": 7, "warmup_ratio": 0.1},
}

NEW_MESSAGES = ["The parcel never arrived and support ignores my emails.",
                "What are your opening hours on Saturday?",
                "Thank you, the repair was quick and friendly.",
                "I was billed for a service I never signed up for."]


def baseline_predictions(predictor: Predictor, train: Table, rows: list[dict]) -> dict[str, list[str]]:
    """The manual prompt (no virtual tokens) read two ways, the baselines P-tuning must beat: zero-shot label words
    (nothing trained), and the linear probe (the classifier fitted on all the training messages)."""
    cfg, base = predictor.session.cfg, predictor.session.base
    words = manual_session(cfg, MANUAL_TEMPLATE, train, base, "words")
    probe = manual_session(cfg, MANUAL_TEMPLATE, train, base, "linear")
    return {"zero-shot manual prompt": [p["prediction"] for p in words.predict(words.new_model(), rows)],
            "linear probe": [p["prediction"] for p in probe.predict(fit_probe(probe, train, cfg.train.seed), rows)]}


def run_demo(out_dir: str | None = None, show_progress: bool = True) -> dict:
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ptune-demo-")
        out_dir = str(Path(tmp.name) / "checkpoint")
    cfg = config_from_dict(DEMO_CONFIG)
    cfg.data.train = str(DATA / "customer_messages_train.csv")
    cfg.data.test = str(DATA / "customer_messages_test.csv")
    click.echo(f"ptune demo: P-tuning {cfg.model.name_or_path} on {cfg.data.train}")
    click.echo(f"template: {cfg.task.template}")
    t0 = time.perf_counter()
    summary = train(cfg, out_dir, show_progress=show_progress)
    train_seconds = time.perf_counter() - t0

    predictor = Predictor.load(out_dir)

    test, train_table = read_table(cfg.data.test), read_table(cfg.data.train)
    gold = test.column("label")
    labels = predictor.session.task.labels.labels
    train_labels = train_table.column("label")
    majority = max(labels, key=train_labels.count)  # a tie goes to the first label (not to set order, which varies)
    rows = {"majority class": classification_metrics(gold, [majority] * len(gold), labels)}
    for name, preds in baseline_predictions(predictor, train_table, test.rows).items():
        rows[name] = classification_metrics(gold, preds, labels)
    rows["P-tuned (ptune)"] = summary["test"]
    click.echo(f"\nHeld-out test set: {len(gold)} messages never seen in training (train took {train_seconds:.0f} s)")
    click.echo(f"{'method':<26}{'accuracy':>10}{'macro-F1':>10}")
    for name, m in rows.items():
        click.echo(f"{name:<26}{m['accuracy']:>10.3f}{m['macro_f1']:>10.3f}")
    preds = predictor.predict_rows([{"message": m} for m in NEW_MESSAGES])
    click.echo("\nNew messages:")
    for message, p in zip(NEW_MESSAGES, preds):
        click.echo(f"  {p['prediction']:<13} {message}")
    click.echo(f"\ncheckpoint: {out_dir}" + (" (temporary; pass --out DIR to keep it)" if tmp else ""))
    if tmp:
        tmp.cleanup()
    return {name: m for name, m in rows.items()}
