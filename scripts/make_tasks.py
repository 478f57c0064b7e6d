"""Write many classification checkpoints cheaply, for measuring a server that holds many tasks: one config, one
seed per checkpoint, trained 0 steps (the seeded encoder's table, saved as a checkpoint) or a few steps on a CSV.

    python scripts/make_tasks.py /tmp/tasks --count 1000                      # 0 steps: seconds per hundred
    python scripts/make_tasks.py /tmp/tasks --count 20 --steps 1 --label-column Label \\
        --train ../shared/data/raft/twitter_complaints/train.csv --template "[P*8] Message : {Tweet text} Complaint ? [TARGET]"
    python scripts/make_tasks.py /tmp/replies --count 4 --type generation     # generation tasks (0 steps only)

Checkpoints are written to OUT/task-0000, OUT/task-0001, ...; ``ptune serve OUT`` (or ``scripts/load_test.py
--tasks-dir OUT``) serves every checkpoint in OUT, each named after its folder. Existing checkpoints are kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TEMPLATE = "[P*8] Message : {text} Complaint ? [TARGET]"  # scripts/load_test.py --demo's classification task
GENERATION_TEMPLATE = "[P*8] Customer : {text} Agent : [TARGET]"  # and its generation task
LABELS = ["complaint", "no complaint"]


def task_config(args) -> dict:
    """The config every checkpoint shares (only the seed differs)."""
    task = {"type": args.type, "template": args.template, "label_column": args.label_column}
    if args.type == "classification":
        task["verbalizer"] = dict(zip(LABELS, ["yes", "no"]))
    else:
        task["max_new_tokens"] = args.max_new_tokens
    return {"model": {"name_or_path": args.model}, "task": task,
            "encoder": {"type": args.encoder, "hidden_size": args.encoder_hidden},
            "train": {"max_length": 96, "max_steps": args.steps, "batch_size": 8, "lr": 3e-2, "warmup_ratio": 0.0}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write OUT/task-NNNN checkpoints into")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=0, help="checkpoint i is seeded with first-seed + i")
    ap.add_argument("--steps", type=int, default=0, help="training steps per checkpoint (0: the initial table)")
    ap.add_argument("--train", default=None, help="labelled CSV for --steps > 0 (labels complaint / no complaint)")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--type", default="classification", choices=["classification", "generation"])
    ap.add_argument("--template", default=None, help="its field names the CSV column for --steps > 0 (default: "
                                                     f"{TEMPLATE!r}, or {GENERATION_TEMPLATE!r} for generation)")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="generation tasks' default budget")
    ap.add_argument("--encoder", default="mlp", choices=["mlp", "lstm", "embedding"])
    ap.add_argument("--encoder-hidden", type=int, default=64)
    ap.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    args = ap.parse_args(argv)
    if not 1 <= args.count <= 100_000 or args.steps < 0:
        ap.error("--count must be 1..100000 and --steps at least 0")
    if args.steps and not args.train:
        ap.error("--steps > 0 needs --train CSV")
    if args.steps and args.type != "classification":
        ap.error("--steps > 0 trains classification tasks only")
    if args.template is None:
        args.template = TEMPLATE if args.type == "classification" else GENERATION_TEMPLATE
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the checkpoints ``argv`` (this script's command line) asks for; scripts/soak.py calls it too."""
    args = parse_args(argv)
    from ptune.config import config_from_dict
    from ptune.data.tables import read_table
    from ptune.session import open_session
    from ptune.training.saving import save_inference
    from ptune.training.trainer import fit

    labels = LABELS if args.type == "classification" else None
    session = open_session(config_from_dict(task_config(args)), label_values=labels)
    train = read_table(args.train) if args.steps else None
    args.out.mkdir(parents=True, exist_ok=True)
    t0, written = time.perf_counter(), 0
    for i in range(args.count):
        folder = args.out / f"task-{i:04d}"
        if (folder / "ptune.json").is_file():
            continue
        seed = args.first_seed + i
        if args.steps:
            model, _ = fit(session, train, None, None, show_progress=False, seed=seed)
        else:
            model = session.new_model(seed=seed)
        save_inference(session, model, folder, seed=seed)
        written += 1
    print(f"wrote {written} checkpoints ({args.count - written} already there) to {args.out} in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
