"""``ptune demo``: the main job on the embedded default model, offline.

Trains on the bundled customer-messages set (64 hand-written messages, complaint or not), picks the best epoch on a
held-out fifth of them, evaluates on 35 messages it never saw, compares with a zero-shot manual prompt and the
majority class, and predicts a few new messages.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import click

from .config import config_from_dict
from .data import read_table
from .evaluate import classification_metrics
from .predict import Predictor
from .train import train

DATA = files("ptune") / "examples_data"

DEMO_CONFIG = {
    # the virtual tokens sit between the message and the question, where they can read the message and steer the
    # answer; measured on the held-out 35 messages: accuracy 0.80, macro-F1 0.80 (see README)
    "task": {"type": "classification",
             "template": "Message : {message} [P*8] Is this a complaint ? Answer : [TARGET]",
             "label_column": "label",
             "verbalizer": {"complaint": "yes", "no complaint": "no"}},
    "encoder": {"type": "lstm", "hidden_size": 128},
    "data": {"dev_fraction": 0.2},
    "train": {"lr": 3e-3, "batch_size": 8, "epochs": 8, "max_length": 96, "seed": 7, "warmup_ratio": 0.1},
}

NEW_MESSAGES = ["The parcel never arrived and support ignores my emails.",
                "What are your opening hours on Saturday?",
                "Thank you, the repair was quick and friendly.",
                "I was billed for a service I never signed up for."]


def zero_shot(predictor: Predictor, rows: list[dict]) -> list[str]:
    """The same label ranking with a manual prompt and no virtual tokens: the baseline P-tuning must beat."""
    from .session import open_session

    cfg = config_from_dict(json.loads(json.dumps(predictor.session.cfg.to_dict())))
    cfg.task.template = "Message : {message} Is this a complaint ? Answer : [TARGET]"
    session = open_session(cfg, labels=predictor.session.task.labels, base=predictor.session.base,
                           allow_no_virtual=True)
    model = session.new_model()
    return [p["prediction"] for p in session.predict(model, rows)]


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

    test = read_table(cfg.data.test)
    gold = test.column("label")
    labels = predictor.session.task.labels.labels
    train_labels = [r["label"] for r in read_table(cfg.data.train).rows]
    majority = max(labels, key=train_labels.count)  # a tie goes to the first label (not to set order, which varies)
    rows = {
        "majority class": classification_metrics(gold, [majority] * len(gold), labels),
        "zero-shot manual prompt": classification_metrics(gold, zero_shot(predictor, test.rows), labels),
        "P-tuned (ptune)": summary["test"],
    }
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
