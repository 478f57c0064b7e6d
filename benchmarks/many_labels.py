"""Many labels: prediction speed of label words scored by their prefix tree (each prefix that words share run once
per row, in a few large model calls) against word by word (one model call per multi-token word), and of the best
label alone searched best first through the tree (``task.top_labels: 1``: a prefix runs only while a word through
it can still be the best), on RAFT banking_77's 77 intents, the kinds interleaved batch by batch in one process so
that all meet the same machine. Also the zero-shot accuracy of the label words on the 50 labelled rows by every
kind, whose predictions must agree.

    python benchmarks/many_labels.py --data ../shared/data/raft/banking_77                 # embedded model
    python benchmarks/many_labels.py --data ../shared/data/raft/banking_77 --rows 32 --today
    python benchmarks/many_labels.py --data ../shared/data/raft/banking_77 --size tiny     # 2 random layers
    python benchmarks/many_labels.py --data ../shared/data/raft/banking_77 --threads 1     # one core of a busy CPU
    python benchmarks/many_labels.py --data ../shared/data/raft/banking_77 --checkpoint runs/banking  # trained

No verbalizer is given: the label words come from the label names (``card_arrival`` -> ``card arrival``).
``--today`` times a fourth kind as well: the raw names as words, word by word (what a config without a verbalizer
ran before label names were spoken as words). ``--size`` takes a random-weight model shaped as a real one
(random_models.py) instead of the embedded SmolLM2-135M-Instruct; ``--checkpoint`` a prompt trained on the task
(``ptune train``, its own template and label words) instead of the zero-shot prompt. Prints the machine and date on stderr and one JSON
line: rows/s of each kind, the ratios, the places (rows x tokens) each runs per row, and the accuracies.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

from machine import describe, summary_line

TEMPLATE = "Query : {Query} Label : [TARGET]"  # the manual prompt of docs/results.md's RAFT runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="the banking_77 folder (task.json, train.csv, test_unlabeled.csv)")
    p.add_argument("--rows", type=int, default=96, help="rows of test_unlabeled.csv timed per kind and round")
    p.add_argument("--rounds", type=int, default=2, help="passes over the rows, the kinds taking turns per batch")
    p.add_argument("--batch-size", type=int, default=32, help="rows per prediction batch (train.eval_batch_size)")
    p.add_argument("--today", action="store_true", help="also time the raw label names, word by word")
    p.add_argument("--size", help="a random-weight model of this shape (tiny, 135m, 0.5b, 1.5b)")
    p.add_argument("--models-root", help="where random-weight models are built and kept")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("--checkpoint", help="a checkpoint trained on the task, in place of the zero-shot prompt")
    return p.parse_args(argv)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def open_kinds(args) -> tuple[dict, dict]:
    """The sessions (label words from the names; raw names with ``--today``) and the model of each kind."""
    from ptune.config import Config, ModelConfig, TaskConfig
    from ptune.data.labels import LabelSpace
    from ptune.session import open_session

    if args.checkpoint:
        return checkpoint_kinds(args.checkpoint)
    names = json.loads((Path(args.data) / "task.json").read_text())["label_columns"]["Label"]
    model_name = "embedded:SmolLM2-135M-Instruct"
    if args.size:
        from random_models import default_root, ensure_model
        model_name = str(ensure_model(args.size, args.models_root or default_root()))
    cfg = Config(model=ModelConfig(name_or_path=model_name),
                 task=TaskConfig(template=TEMPLATE, label_column="Label"))
    spoken = open_session(cfg, label_values=names, allow_no_virtual=True)
    best = open_session(cfg.replace({"task.top_labels": 1}), label_values=names, base=spoken.base,
                        allow_no_virtual=True)
    sessions = {"word_by_word": spoken, "tree": spoken, "best": best}
    if args.today:  # (not with --checkpoint: its label words are its own)
        raw = LabelSpace(sorted(set(names)), [[n] for n in sorted(set(names))])
        sessions["today"] = open_session(cfg, labels=raw, base=spoken.base, allow_no_virtual=True)
    models = {}
    for kind, session in sessions.items():
        models[kind] = session.new_model().eval()
        models[kind].use_prefix_tree = kind in ("tree", "best")
    return sessions, models


def checkpoint_kinds(folder: str) -> tuple[dict, dict]:
    """The kinds over a trained checkpoint: word by word and the tree over every label, and the best label alone."""
    from ptune.inference import Predictor

    every = Predictor.load(folder, device="cpu")
    best = Predictor.load(folder, device="cpu", top_labels=1, base=every.session.base)
    sessions = {"word_by_word": every.session, "tree": every.session, "best": best.session}
    models = {"word_by_word": every.model, "best": best.model}
    models["tree"] = Predictor.load(folder, device="cpu", base=every.session.base).model
    for kind, model in models.items():
        model.eval().use_prefix_tree = kind in ("tree", "best")
    return sessions, models


def places_per_row(session) -> int:
    """Tokens each row runs through the model for its label words after its own: word by word, every word's tokens
    but the last; by the tree, every distinct proper prefix once."""
    words = [session.task.renderer.target_ids(w) for ws in session.task.labels.words for w in ws]
    return sum(len(w) - 1 for w in words), len({tuple(w[:k]) for w in words for k in range(1, len(w))})


def places_run(session, model, rows: list[dict], batch_size: int) -> float:
    """Model places (rows x tokens, the rows' own included) per row of one prediction pass over ``rows``."""
    places, real = [0], model.base.forward

    def counting(*args, **kwargs):
        places[0] += kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1]
        return real(*args, **kwargs)

    model.base.forward = counting
    try:
        session.task.predict(model, rows, batch_size, "cpu")
    finally:
        model.base.forward = real
    return round(places[0] / len(rows), 1)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    sessions, models = open_kinds(args)
    rows = read_csv(data / "test_unlabeled.csv")[:args.rows]
    batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    seconds = dict.fromkeys(sessions, 0.0)
    kinds = list(sessions)
    with torch.inference_mode():
        for r in range(args.rounds):
            for b, batch in enumerate(batches):
                turn = (r * len(batches) + b) % len(kinds)
                for kind in kinds[turn:] + kinds[:turn]:  # each kind goes first in turn
                    start = time.perf_counter()
                    sessions[kind].task.predict(models[kind], batch, args.batch_size, "cpu")
                    seconds[kind] += time.perf_counter() - start
        labelled = read_csv(data / "train.csv")
        accuracy, agree, reference = {}, {}, None
        for kind in kinds:
            preds = sessions[kind].task.predict(models[kind], labelled, args.batch_size, "cpu")
            accuracy[kind] = sum(p["prediction"] == row["Label"] for p, row in zip(preds, labelled)) / len(labelled)
            if reference is None:  # word by word, the first kind
                reference = [p["prediction"] for p in preds]
            agree[kind] = f"{sum(p['prediction'] == q for p, q in zip(preds, reference))}/{len(labelled)}"
        places = {kind: places_run(sessions[kind], models[kind], batches[0], args.batch_size) for kind in kinds}
    machine = describe(measure=False)
    print(summary_line(machine), file=sys.stderr)
    timed = args.rounds * len(rows)
    rate = {kind: round(timed / seconds[kind], 3) for kind in kinds}
    by_word, tree = places_per_row(sessions["tree"])
    out = {"model": sessions["tree"].cfg.model.name_or_path, "dtype": str(sessions["tree"].base.model.dtype),
           "labels": len(sessions["tree"].task.labels.labels), "rows_timed_each": timed,
           "batch_size": args.batch_size, "rows_per_s": rate,
           "tree_vs_word_by_word": round(rate["tree"] / rate["word_by_word"], 2),
           "best_vs_tree": round(rate["best"] / rate["tree"], 2),
           "word_places_per_row": {"word_by_word": by_word, "tree": tree},
           "model_places_per_row_first_batch": places,
           "accuracy_50_labelled": accuracy, "predictions_agreeing_with_word_by_word": agree,
           "checkpoint": args.checkpoint,  # (a checkpoint trained on those 50 rows: its training accuracy)
           "cpu": machine.get("cpu_model"), "torch_threads": torch.get_num_threads(), "date": machine.get("date"),
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    if "today" in rate:
        out["tree_vs_today"] = round(rate["tree"] / rate["today"], 2)
        out["best_vs_today"] = round(rate["best"] / rate["today"], 2)
        out["word_places_per_row"]["today"] = places_per_row(sessions["today"])[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
