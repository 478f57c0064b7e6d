"""SST-2 with 32 training rows: the manual prompt zero-shot, P-tuning from a random start, and P-tuning that starts
exactly at the manual prompt's words (``encoder.residual``), each scored on the whole dev split.

    python benchmarks/prompt_start.py --data ../shared/data/sst2 --seeds 1,2 --out /tmp/prompt_start

Prints one JSON line per run (method, seed, dev accuracy and macro-F1, seconds) and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ptune  # noqa: E402
from machine import describe  # noqa: E402
from ptune.data.tables import read_table  # noqa: E402
from ptune.session import open_session  # noqa: E402

MANUAL = "Review : {sentence} Sentiment : [TARGET]"
VERBALIZER = {"0": "negative", "1": "positive"}
# the manual prompt's anchor text as the template reads it, the space before it included: 3 SmolLM2 tokens
ANCHOR = " Sentiment :"
RESIDUAL = "Review : {sentence} [P*3] [TARGET]"
RESIDUAL_ENCODER = {"type": "lstm", "init": "text", "init_text": ANCHOR, "residual": True}
TRAINED = {  # method -> (template, encoder section)
    "random": ("Review : {sentence} [P*8] [TARGET]", {"type": "lstm"}),
    "random_k3": (RESIDUAL, {"type": "lstm"}),
    "text": (RESIDUAL, {**RESIDUAL_ENCODER, "residual": False}),  # the words as the LSTM's input only
    "residual": (RESIDUAL, RESIDUAL_ENCODER),
}


def balanced_sample(train_tsv: Path, per_label: int, seed: int, out_csv: Path) -> Path:
    """``per_label`` rows of each label drawn from ``train_tsv`` with ``random.Random(seed)``, written as CSV."""
    with open(train_tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = random.Random(seed)
    chosen = [row for label in sorted(VERBALIZER)
              for row in rng.sample([r for r in rows if r["label"] == label], per_label)]
    rng.shuffle(chosen)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["sentence", "label"])
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"], "label": r["label"]} for r in chosen)
    return out_csv


def config(template: str, train_csv: str, seed: int, encoder: dict, epochs: int, lr: float) -> ptune.Config:
    return ptune.Config(
        task=ptune.TaskConfig(template=template, label_column="label", verbalizer=VERBALIZER),
        encoder=ptune.EncoderConfig(**encoder),
        data=ptune.DataConfig(train=train_csv),
        train=ptune.TrainConfig(lr=lr, epochs=epochs, batch_size=8, seed=seed, max_length=128))


def zero_shot(cfg: ptune.Config, dev: str) -> dict:
    """The manual prompt's dev metrics, nothing trained (a template with no virtual token)."""
    session = open_session(cfg, label_values=list(VERBALIZER), allow_no_virtual=True)
    return metrics(session, session.new_model(), dev)


def metrics(session, model, dev: str) -> dict:
    table = read_table(dev, "tsv")
    preds = session.predict(model, table.rows)
    gold = [row["label"] for row in table.rows]
    correct = [p["prediction"] == g for p, g in zip(preds, gold)]
    f1s = []
    for label in VERBALIZER:
        tp = sum(p["prediction"] == label and g == label for p, g in zip(preds, gold))
        predicted, actual = sum(p["prediction"] == label for p in preds), gold.count(label)
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return {"accuracy": round(sum(correct) / len(correct), 4), "macro_f1": round(sum(f1s) / len(f1s), 4),
            "rows": len(correct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--out", default="/tmp/prompt_start")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--methods", default="zero_shot,random,residual",
                        help="comma-separated: zero_shot, residual_start (residual, untrained), " + ", ".join(TRAINED))
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(data / "dev.tsv")
    print(json.dumps({"machine": describe(measure=False)}), flush=True)
    methods = args.methods.split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:
        train_csv = str(balanced_sample(data / "train.tsv", 16, seed, out / f"train-{seed}.csv"))
        for method in methods:
            start = time.time()
            if method == "zero_shot":
                if seed != int(args.seeds.split(",")[0]):
                    continue  # nothing trained: the same for every seed
                result = zero_shot(config(MANUAL, train_csv, seed, {}, args.epochs, args.lr), dev)
            elif method == "residual_start":  # the residual prompt before any step: the manual prompt's score
                cfg = config(RESIDUAL, train_csv, seed, RESIDUAL_ENCODER, args.epochs, args.lr)
                session = open_session(cfg, label_values=list(VERBALIZER))
                result = metrics(session, session.new_model(), dev)
            else:
                template, encoder = TRAINED[method]
                cfg = config(template, train_csv, seed, encoder, args.epochs, args.lr)
                ptune.train(cfg, out / f"{method}-{seed}", show_progress=False)
                predictor = ptune.load(out / f"{method}-{seed}")
                result = metrics(predictor.session, predictor.model, dev)
            print(json.dumps({"method": method, "seed": seed, **result, "seconds": round(time.time() - start, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
