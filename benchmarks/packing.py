"""Packed against padded training batches (``train.packing``): the reference recipe's training steps (forward and
backward, batch 8, the twitter_complaints rows) on one model, the two kinds of batch interleaved step by step in one
process, so that both meet the same machine; also how many places each computes.

    python benchmarks/packing.py --data ../shared/data/raft/twitter_complaints                    # embedded model
    python benchmarks/packing.py --data ../shared/data/raft/twitter_complaints --size 0.5b --rounds 1
    python benchmarks/packing.py --data ../shared/data/raft/twitter_complaints --size tiny --rounds 1   # seconds

``--size`` takes a random-weight model shaped as a real one (random_models.py: tiny, 135m, 0.5b, 1.5b) instead of
the embedded SmolLM2-135M. Prints one JSON line: seconds per step for each kind, their ratio, and the places
(token positions, pads included) each computes per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from machine import describe, summary_line

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "reference_twitter_complaints.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="folder with train.csv")
    p.add_argument("--size", help="a random-weight model of this shape (tiny, 135m, 0.5b, 1.5b)")
    p.add_argument("--models-root", help="where random-weight models are built and kept")
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches, each kind once per batch")
    p.add_argument("--batches", type=int, default=6, help="batches of 8 rows per round")
    return p.parse_args(argv)


def places(batch: dict) -> int:
    """Token positions the batch makes the model compute (pads included; the shared prefix once per bin or batch)."""
    if "packed_ids" in batch:
        return batch["packed_ids"].numel()
    return batch["input_ids"].numel() + (batch["prefix_ids"].numel() if "prefix_ids" in batch else 0)


def main(argv=None) -> None:
    args = parse_args(argv)
    from ptune.config import load_config
    from ptune.data.tables import read_table
    from ptune.session import open_session
    from ptune.training.trainer import packing_bins

    overrides = [f"data.train={(Path(args.data) / 'train.csv').resolve()}"]
    if args.size:
        from random_models import default_root, ensure_model
        overrides.append(f"model.name_or_path={ensure_model(args.size, args.models_root or default_root())}")
    cfg = load_config(CONFIG, overrides)
    session = open_session(cfg)
    examples, _ = session.task.train_examples(read_table(cfg.data.train))
    model = session.new_model(seed=0).train()
    bins = packing_bins(model, cfg.train, session.supports)
    if not bins:
        raise SystemExit("this model's batches cannot be packed (see train.packing in docs/reference.md)")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    groups = [[examples[i] for i in order[j:j + 8]] for j in range(0, 8 * args.batches, 8)]
    seconds, computed = {"padded": 0.0, "packed": 0.0}, {"padded": 0, "packed": 0}
    for r in range(args.rounds):
        for group in groups:
            kinds = [("padded", 0), ("packed", bins)]
            for name, pack in kinds if r % 2 == 0 else kinds[::-1]:  # alternate which kind goes first
                batch = session.task.batch(group, session.device, True, pack)
                start = time.perf_counter()
                model.loss(batch).backward()
                model.zero_grad(set_to_none=True)
                seconds[name] += time.perf_counter() - start
                computed[name] += places(batch)
    steps = args.rounds * len(groups)
    machine = describe(measure=False)
    print(summary_line(machine), file=sys.stderr)
    print(json.dumps({"model": cfg.model.name_or_path, "bin_tokens": bins, "steps_each": steps,
                      "padded_s_per_step": round(seconds["padded"] / steps, 3),
                      "packed_s_per_step": round(seconds["packed"] / steps, 3),
                      "speedup": round(seconds["padded"] / seconds["packed"], 3),
                      "padded_places_per_step": computed["padded"] / steps,
                      "packed_places_per_step": computed["packed"] / steps,
                      "cpu": machine.get("cpu_model"), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
