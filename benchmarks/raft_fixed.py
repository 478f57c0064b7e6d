"""Fixed recipes on the RAFT report splits: how a shallow and a deep prompt score on each RAFT task when nothing is
chosen, beside the linear probe on the same folds (the "shallow prompt" and "deep prompt" columns of the RAFT table
in docs/results.md, where the search chose a probe and so reported no prompt).

    python benchmarks/raft_fixed.py --data ../shared/data --out runs/raft_fixed
    python benchmarks/raft_fixed.py --tasks twitter_complaints,overruling --recipes deep

The recipes are set before any figure of theirs is seen, the same on every task:

- ``shallow``: the config the RAFT sweep writes as a newcomer would (``raft_sweep.task_values``: ``[P*4]`` before
  the data fields, ``[P*2]`` before ``Label : [TARGET]``, an LSTM encoder, the label names as label words, lr 1e-2,
  batch 8, ``--epochs`` epochs), trained as written;
- ``deep``: the same config's manual prompt (its ``[P*n]`` runs taken out) with the built-in search space's first
  deep prompt (``space.DEEP_PROMPTS[0]``: 8 keys and values at every layer, a plain table started as those the
  frozen model gives the label words), read by the label words, at the same lr and epochs.

Per task and recipe: ``cross_validate`` (``ptune cv``) on 5 folds of splits 46, 47 and 48 (the sweep's report
splits), macro-F1 and accuracy, and the paired lead (fold by fold) over the linear probe at the linear head's
defaults (middle layer, mean pooling) on the same folds. Each figure goes to ``OUT/<task>/<recipe>.json`` (a
finished one is not run again, so the same command resumes); ``OUT/raft_fixed.md`` and ``OUT/raft_fixed.json``
(with the machine) are rewritten after each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import summary_line
from raft_sweep import REPORT_SEEDS, SEARCH_SEED, figures, lead_text, open_run, task_values

RECIPES = ("shallow", "deep")
PROBE = "probe.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="The shared data folder (holding raft/<task>/).")
    p.add_argument("--out", default="runs/raft_fixed", help="Where each task's figures and the tables go.")
    p.add_argument("--tasks", default="", help="Comma-separated RAFT task names (default: every task under raft/).")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"Comma-separated, of {', '.join(RECIPES)}.")
    p.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    p.add_argument("--epochs", type=int, default=10, help="train.epochs of both recipes.")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--report-seeds", default=",".join(map(str, REPORT_SEEDS)), help="The splits reported on.")
    args = p.parse_args(argv)
    args.report_seeds = [int(s) for s in args.report_seeds.split(",")]
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        p.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    # the sweep's training seed; task_values' search section is dropped
    args.search_seed, args.search_seeds, args.budget_minutes = SEARCH_SEED, [SEARCH_SEED], 0
    return args


def recipe_values(values: dict, recipe: str) -> dict:
    """The config values of a recipe over the task's newcomer config (its ``search`` section dropped)."""
    from ptune.evaluation.space import DEEP_PROMPTS
    from ptune.template import without_virtual

    plain = {section: dict(part) for section, part in values.items() if section != "search"}
    if recipe == "shallow":
        return plain
    deep = {key.split(".", 1)[1]: value for key, value in DEEP_PROMPTS[0].items()}  # all encoder.* keys
    return plain | {"task": plain["task"] | {"template": without_virtual(plain["task"]["template"])},
                    "encoder": plain["encoder"] | deep}


def probe_figures(values: dict, args) -> dict:
    """The linear probe (the linear head's defaults, the manual prompt, nothing else trained) on the report folds."""
    from ptune.config import config_from_dict
    from ptune.evaluation.baselines import linear_probe
    from ptune.template import without_virtual
    from ptune.training.prepare import prepare

    plain = recipe_values(values, "shallow")
    cfg = config_from_dict(plain | {"task": plain["task"] | {"head": "linear"}})
    session, table, _ = prepare(cfg, hold_out_dev=False)
    manual = without_virtual(plain["task"]["template"])
    return figures(linear_probe(cfg, manual, table, args.folds, args.report_seeds, base=session.base))


def cached(path: Path, compute) -> dict:
    """``path``'s figures, computed and written (atomically) the first time."""
    from ptune.files import write_atomic

    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    write_atomic(path, json.dumps(result, indent=2).encode())
    return result


def run_recipe(values: dict, recipe: str, probe: dict, args) -> dict:
    """One recipe's cross-validation on the report folds, with its paired lead over the probe."""
    from ptune.config import config_from_dict
    from ptune.evaluation.cv import cross_validate
    from ptune.evaluation.search import paired_difference

    t0, load = time.perf_counter(), os.getloadavg()[0]
    cfg = config_from_dict(recipe_values(values, recipe))
    scored = figures(cross_validate(cfg, folds=args.folds, seeds=args.report_seeds, show_progress=False))
    return scored | {"recipe": recipe, "lead_over_probe": paired_difference(scored["fold_macro_f1"],
                                                                            probe["fold_macro_f1"]),
                     "seconds": round(time.perf_counter() - t0, 1), "load_average": [round(load, 2),
                                                                                    round(os.getloadavg()[0], 2)],
                     "finished": time.strftime("%Y-%m-%d %H:%M %Z")}


def _f1(part: dict | None) -> str:
    return "not run" if not part else f"{part['macro_f1']['mean']:.3f} ± {part['macro_f1']['std']:.3f}"


def _lead(part: dict | None) -> str:
    return lead_text((part or {}).get("lead_over_probe"))


def render(rows: list[dict], machine: dict, args) -> str:
    """One row per task: the probe, then each recipe and its paired lead over the probe."""
    head = " | ".join(f"{r} | {r}: lead over the probe (paired mean ± s.e.; ahead/level/behind)" for r in args.recipes)
    lines = [f"RAFT, fixed recipes ({args.epochs} epochs, nothing chosen) on {args.folds} folds of splits "
             f"{', '.join(map(str, args.report_seeds))}, macro-F1 mean ± sd over folds.", "",
             f"Machine: {summary_line(machine)}.", "", f"| task | probe | {head} |",
             "| --- | --- |" + " --- | --- |" * len(args.recipes)]
    for row in rows:
        cells = " | ".join(f"{_f1(row.get(r))} | {_lead(row.get(r))}" for r in args.recipes)
        lines.append(f"| {row['task']} | {_f1(row['probe'])} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    from ptune.files import write_atomic

    data, out, tasks, machine = open_run(args)
    rows = []
    for task in tasks:
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        values = task_values(data, task, args)
        row = {"task": task, "probe": cached(folder / PROBE, lambda: probe_figures(values, args))}
        rows.append(row)
        for recipe in args.recipes:
            print(f"{task}: {recipe}", file=sys.stderr)
            row[recipe] = cached(folder / f"{recipe}.json", lambda: run_recipe(values, recipe, row["probe"], args))
            summary = {"machine": machine, "settings": vars(args), "rows": rows}
            write_atomic(out / "raft_fixed.json", json.dumps(summary, indent=2, default=str).encode())
            write_atomic(out / "raft_fixed.md", render(rows, machine, args).encode())
            print(f"{task}: {recipe} {_f1(row[recipe])}, probe {_f1(row['probe'])}, lead {_lead(row[recipe])}",
                  file=sys.stderr)
    print(json.dumps({"out": str(out), "tasks": len(rows), "machine": summary_line(machine)}))


if __name__ == "__main__":
    main()
