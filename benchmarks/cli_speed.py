"""Whole-command speed: ``ptune train`` and ``ptune predict`` as a user runs them, against PEFT's P-tuning recipe
doing the same work as a script (``peft_recipe.py``), each command timed from start to exit (interpreter start,
imports and model loading included), in its own process, one after the other.

    # full (on a quiet machine): 10 epochs over train.csv's 50 rows, 200 unlabeled rows predicted
    python benchmarks/cli_speed.py --data ../shared/data/raft/twitter_complaints
    # smoke test: 1 epoch, 16 rows
    python benchmarks/cli_speed.py --data ../shared/data/raft/twitter_complaints --quick
    # smoke test of the script alone, on a 2-layer random model (seconds)
    python benchmarks/cli_speed.py --data ../shared/data/raft/twitter_complaints --quick \\
        --model "$(python benchmarks/random_models.py --size tiny)"

The work, for both: the reference recipe (examples/reference_twitter_complaints.yaml; PEFT's PromptEncoderConfig
with 20 virtual tokens and an MLP encoder of hidden size 128, batch 8, lr 3e-2, ``--epochs`` epochs over train.csv)
on the same local model folder, by default the embedded SmolLM2-135M-Instruct's cached float copy; then the first
``--rows`` rows of test_unlabeled.csv labelled from the saved checkpoint (ptune: labels ranked by likelihood; PEFT:
``generate``). ptune runs with its defaults (dtype ``auto``: bfloat16 only where the CPU is fast at it), PEFT in
float32 as its example does.

Printed: one JSON line on stdout (the machine, each command's wall seconds and peak resident memory, the ratios
PEFT seconds / ptune seconds, and whether they reach the targets of 3x for training and 10x for prediction), and a
short table on stderr. Timings from a busy machine say little: run it alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe, summary_line
from memory import run_measured

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "reference_twitter_complaints.yaml"
PEFT_RECIPE = Path(__file__).resolve().parent / "peft_recipe.py"
LABELS = ("complaint", "no complaint")
TARGETS = {"train": 3.0, "predict": 10.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="folder with train.csv and test_unlabeled.csv")
    p.add_argument("--model", help="local model folder for both systems (default: the embedded model's float copy)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 16 rows")
    p.add_argument("--epochs", type=int, help="training epochs (default 10, quick 1)")
    p.add_argument("--rows", type=int, help="unlabeled rows to predict (default 200, quick 16)")
    p.add_argument("--systems", default="peft,ptune", help="which to run, in this order (default peft,ptune)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every command (0: unset)")
    p.add_argument("--workdir", help="keep checkpoints and predictions here (default: a temporary folder)")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 10)
    args.rows = args.rows or (16 if args.quick else 200)
    return args


def write_rows(source: Path, target: Path, n: int) -> int:
    """Copy the header and the first ``n`` rows of a CSV file; return how many rows were written."""
    with open(source, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = [next(reader)] + [row for _, row in zip(range(n), reader)]
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return len(rows) - 1


def ptune_command() -> list[str]:
    """The ``ptune`` console script beside this interpreter (as a user runs it), else ``python -m ptune``."""
    script = Path(sys.executable).parent / "ptune"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ptune"]


def commands(system: str, args, model: Path, work: Path, rows_csv: Path) -> dict[str, list[str]]:
    """The train and predict commands of one system, writing under ``work``."""
    train_csv = str((Path(args.data) / "train.csv").resolve())
    if system == "ptune":
        ckpt = work / "ptune-checkpoint"
        return {"train": ptune_command() + ["train", str(CONFIG), "--out", str(ckpt), "--quiet",
                                           "--set", f"data.train={train_csv}", "--set", f"model.name_or_path={model}",
                                           "--set", f"train.epochs={args.epochs}"],
                "predict": ptune_command() + ["predict", str(ckpt), "--data", str(rows_csv),
                                              "--out", str(work / "ptune-predictions.jsonl"), "--quiet"]}
    adapter = work / "peft-adapter"
    recipe = [sys.executable, str(PEFT_RECIPE)]
    return {"train": recipe + ["train", "--model", str(model), "--data", train_csv, "--out", str(adapter),
                               "--epochs", str(args.epochs)],
            "predict": recipe + ["predict", "--adapter", str(adapter), "--data", str(rows_csv),
                                 "--out", str(work / "peft-predictions.jsonl")]}


def prediction_check(path: Path) -> dict:
    """How many predictions a command wrote, and the share that are one of the labels."""
    with open(path, encoding="utf-8") as f:
        preds = [json.loads(line)["prediction"] for line in f if line.strip()]
    return {"predictions": len(preds), "valid_label_fraction": sum(p in LABELS for p in preds) / max(len(preds), 1)}


def run_system(system: str, args, model: Path, work: Path, rows_csv: Path) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out: dict = {}
    for step, argv in commands(system, args, model, work, rows_csv).items():
        print(f"{system} {step}: {' '.join(argv)}", file=sys.stderr)
        r = run_measured(argv, env=env, stdout=subprocess.PIPE)  # kept: the command's own report
        if r["returncode"]:
            raise SystemExit(f"{system} {step} failed (exit {r['returncode']})")
        out[f"{step}_wall_s"], out[f"{step}_peak_rss_mb"] = round(r["wall_s"], 3), round(r["peak_rss_mb"], 1)
        if system == "peft":  # the recipe's own split of its time: loading, training loop or generation, saving
            out[f"{step}_inner"] = json.loads(r["stdout"].strip().splitlines()[-1])
    out.update(prediction_check(work / f"{system}-predictions.jsonl"))
    return out


def ratios(results: dict) -> dict:
    """PEFT's seconds over ptune's per command, and whether each reaches its target."""
    p, q = results["peft"], results["ptune"]
    out = {}
    for step, target in TARGETS.items():
        ratio = p[f"{step}_wall_s"] / q[f"{step}_wall_s"]
        out[step] = {"peft_over_ptune_seconds": round(ratio, 2), "target": target, "met": ratio >= target}
    return out


def print_table(out: dict) -> None:
    lines = [summary_line(out["machine"]),
             f"{'system':7} {'train s':>9} {'train MB':>9} {'predict s':>10} {'predict MB':>10} {'valid':>6}"]
    for system in out["systems"]:
        r = out[system]
        lines.append(f"{system:7} {r['train_wall_s']:9.1f} {r['train_peak_rss_mb']:9.0f} {r['predict_wall_s']:10.1f} "
                     f"{r['predict_peak_rss_mb']:10.0f} {r['valid_label_fraction']:6.2f}")
    for step, r in out.get("ratios", {}).items():
        lines.append(f"{step}: PEFT seconds / ptune seconds = {r['peft_over_ptune_seconds']} (target {r['target']}, "
                     f"{'met' if r['met'] else 'not met'})")
    print("\n".join(lines), file=sys.stderr)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = Path(args.data)
    for name in ("train.csv", "test_unlabeled.csv"):
        if not (data / name).is_file():
            raise SystemExit(f"{data / name}: not found (give the twitter_complaints folder with --data)")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    from random_models import embedded_tokenizer_folder

    model = Path(args.model).resolve() if args.model else embedded_tokenizer_folder()
    out: dict = {"machine": describe(), "model": str(model), "epochs": args.epochs, "systems": systems,
                 "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="ptune-cli-speed-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if any((work / name).exists() for name in ("ptune-checkpoint", "peft-adapter")):
            raise SystemExit(f"{work} holds an earlier run's checkpoint: give an empty --workdir")
        out["rows"] = write_rows(data / "test_unlabeled.csv", work / "rows.csv", args.rows)
        for system in systems:
            out[system] = run_system(system, args, model, work, work / "rows.csv")
    if "peft" in out and "ptune" in out:
        out["ratios"] = ratios(out)
    print(json.dumps(out))
    print_table(out)


if __name__ == "__main__":
    main()
