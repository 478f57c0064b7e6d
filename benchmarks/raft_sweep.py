"""The RAFT sweep: on each RAFT task, what a newcomer gets from ``ptune search`` as shipped, checked on splits that
played no part in the choice, against the baselines a P-tuned model must beat.

    python benchmarks/raft_sweep.py --data ../shared/data --out runs/raft_sweep --budget-minutes 30
    python benchmarks/raft_sweep.py --tasks twitter_complaints,overruling --budget-minutes 6

Per task (``raft/<task>/train.csv``: 50 labelled rows):

1. the task's config, as a newcomer writes it (``examples/search_twitter_complaints.yaml`` is the model): the
   fields of ``ptune.bench.fewshot.raft_spec`` (every data column but ID in the prompt, virtual tokens before the
   text and before the target, the label names as label words, the columns empty in some rows as
   ``data.optional_fields``), ``search:`` with the built-in space, successive halving, ``budget_minutes`` and 5
   folds of split seed 44;
2. ``run_search`` (``ptune search``) on the 50 rows: the choice, written as ``recipe.yaml``;
3. on the report splits (5 folds of seeds 46, 47, 48 by default, none used by step 2): ``cross_validate`` (``ptune
   cv``) of the choice, and ``baselines`` (``ptune baselines``: majority class, the zero-shot manual prompt, sentence
   embeddings with logistic regression, and the linear probe, ``task.head: linear`` at its defaults: the middle
   layer, mean pooling) on the same folds; macro-F1 (RAFT's metric) and accuracy, and the choice's paired lead
   (fold by fold) over the probe and over the sentence embeddings.

A chosen zero-shot prompt trains nothing; its report figures are the zero-shot baseline's (the same manual prompt
on the same folds). Each task's figures go to ``OUT/<task>/result.json``; ``OUT/raft_sweep.json`` and
``OUT/raft_sweep.md`` (one row per task, the average, and the counts) are rewritten after every task. A finished
task is not run again: rerun the same command to resume (a search stopped half-way is started over).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from machine import describe, summary_line

# few labels and short rows first, so that a run cut short has covered the cheap tasks
TASKS = ("twitter_complaints", "tweet_eval_hate", "ade_corpus_v2", "overruling", "terms_of_service",
         "semiconductor_org_types", "tai_safety_research", "systematic_review_inclusion",
         "neurips_impact_statement_risks", "medical_subdomain_of_clinical_notes", "one_stop_english", "banking_77")
SEARCH_SEED = 44
REPORT_SEEDS = (46, 47, 48)
RESULT = "result.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data", help="The shared data folder (holding raft/<task>/).")
    p.add_argument("--out", default="runs/raft_sweep", help="Where each task's search, figures and the tables go.")
    p.add_argument("--tasks", default="", help="Comma-separated RAFT task names (default: every task under raft/).")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="search.budget_minutes per task.")
    p.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    p.add_argument("--epochs", type=int, default=10, help="train.epochs of the config (the last rung's).")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--search-seed", type=int, default=SEARCH_SEED, help="The split the search chooses on.")
    p.add_argument("--search-splits", type=int, default=1,
                   help="Splits the search chooses on: --search-seed and the seeds after it (search.seeds); more "
                   "steady the means the rule compares, at that many times a candidate's cost.")
    p.add_argument("--report-seeds", default=",".join(map(str, REPORT_SEEDS)),
                   help="The splits the choice and the baselines are reported on (none may be the search's).")
    args = p.parse_args(argv)
    args.report_seeds = [int(s) for s in args.report_seeds.split(",")]
    if args.search_splits < 1:
        p.error("--search-splits must be at least 1")
    args.search_seeds = [args.search_seed + i for i in range(args.search_splits)]
    if set(args.search_seeds) & set(args.report_seeds):
        p.error(f"--report-seeds must not hold the search's split seeds {args.search_seeds}")
    return args


def task_names(raft: Path, requested: str) -> list[str]:
    """The tasks to run, in ``TASKS`` order (then any other folder, by name); a requested task must exist."""
    if not raft.is_dir():
        sys.exit(f"{raft}: RAFT folder not found (give --data, the folder holding raft/)")
    present = sorted(p.name for p in raft.iterdir() if (p / "train.csv").is_file())
    names = [t.strip() for t in requested.split(",") if t.strip()] if requested else present
    missing = [t for t in names if t not in present]
    if missing:
        sys.exit(f"{raft}: no train.csv for task(s) {', '.join(missing)}; present: {', '.join(present)}")
    order = {name: i for i, name in enumerate(TASKS)}
    return sorted(names, key=lambda t: (order.get(t, len(TASKS)), t))


def task_values(data: Path, task: str, args) -> dict:
    """The task's config values, as a newcomer writes them: the RAFT spec's template and label words, a ``search``
    section with the built-in space."""
    from ptune.bench.fewshot import raft_spec

    spec = raft_spec(task, data)
    return {
        "model": {"name_or_path": args.model},
        "task": {"type": "classification", "template": spec.ptuning, "label_column": spec.label_column,
                 "verbalizer": spec.verbalizer},
        "encoder": {"hidden_size": 128},
        "data": {"train": str((data / "raft" / task / "train.csv").resolve()),
                 **({"optional_fields": list(spec.optional_fields)} if spec.optional_fields else {})},
        "train": {"lr": 1e-2, "batch_size": 8, "epochs": args.epochs, "max_length": spec.max_length,
                  "warmup_ratio": 0.1, "seed": args.search_seed},
        "search": {"folds": args.folds, "seeds": args.search_seeds, "budget_minutes": args.budget_minutes},
    }


def write_task_config(folder: Path, values: dict) -> Path:
    """``folder/config.yaml``; an existing one must say the same (a resumed run may not change the settings)."""
    path = folder / "config.yaml"
    if path.is_file():
        if yaml.safe_load(path.read_text(encoding="utf-8")) != values:
            sys.exit(f"{path}: written by a run with other settings; give another --out to run these")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def search_step(config: Path, out: Path) -> dict:
    """``ptune search`` of the config into ``out`` (its report); a finished search (``search.json``) is reused, a
    half-written one started over."""
    from ptune.evaluation.search import run_search

    if (out / "search.json").is_file():
        return json.loads((out / "search.json").read_text(encoding="utf-8"))
    if out.exists():
        shutil.rmtree(out)  # a search stopped before its report: its checkpoint may be half-written
    return run_search(config, out, show_progress=False)


def figures(summary: dict) -> dict:
    """Mean and spread of accuracy and macro-F1, and macro-F1 fold by fold (for the paired leads)."""
    if "skipped" in summary:
        return {"skipped": summary["skipped"]}
    return {"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"],
            "fold_macro_f1": [r["macro_f1"] for r in summary["runs"]]}


def choice_of(report: dict) -> dict:
    """What the search chose, in short: its settings, whether it trains virtual tokens, and how far the halving got."""
    from ptune.template import parse_template

    best = report["candidates"][report["best"]]
    settings = best["settings"]
    zero_shot = "zero_shot" in settings
    template = settings.get("zero_shot") or settings.get("task.template", "")
    trained = [c for c in report["candidates"] if "zero_shot" not in c["settings"]]
    return {"settings": settings, "zero_shot": zero_shot,
            "virtual_tokens": 0 if zero_shot else parse_template(template).n_virtual,
            "epochs": best.get("epochs"), "rung": best.get("rung"),
            "candidates_scored": len(trained), "last_rung": max((c.get("rung") or 0 for c in trained), default=0)}


def report_step(values: dict, search_dir: Path, report: dict, args) -> dict:
    """The choice and the baselines on the report splits, with the choice's paired leads."""
    from ptune.config import config_from_dict, load_config
    from ptune.evaluation.baselines import baselines
    from ptune.evaluation.cv import cross_validate
    from ptune.evaluation.search import paired_difference
    from ptune.template import without_virtual

    manual = without_virtual(values["task"]["template"])  # the search's zero-shot prompt
    choice = choice_of(report)
    t0 = time.perf_counter()
    plain = {section: part for section, part in values.items() if section != "search"}  # data paths are absolute
    probe_cfg = config_from_dict(plain | {"task": plain["task"] | {"head": "linear"}})  # the linear head's defaults
    found = baselines(probe_cfg, manual, args.folds, args.report_seeds)
    baselines_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if choice["zero_shot"]:  # nothing trained: the zero-shot baseline is the choice, on the same folds
        chosen = figures(found["zero_shot"])
    else:
        recipe = load_config(search_dir / report["recipe"])
        chosen = figures(cross_validate(recipe, folds=args.folds, seeds=args.report_seeds, show_progress=False))
    cv_s = time.perf_counter() - t0
    base = {name: figures(summary) for name, summary in found.items()}
    leads = {name: paired_difference(chosen["fold_macro_f1"], base[name].get("fold_macro_f1", []))
             for name in ("linear_probe", "sentence_embedding")}
    return {"choice": choice | chosen, "baselines": base, "lead_over_probe": leads["linear_probe"],
            "lead_over_embeddings": leads["sentence_embedding"],
            "seconds": {"search": report["seconds"], "report_cv": round(cv_s, 1),
                        "baselines": round(baselines_s, 1)}}


def run_task(data: Path, out: Path, task: str, args) -> dict:
    """One task, start to finish (or its saved result, if it finished before)."""
    from ptune.files import write_atomic

    folder = out / task
    if (folder / RESULT).is_file():
        print(f"{task}: done before, not run again", file=sys.stderr)
        return json.loads((folder / RESULT).read_text(encoding="utf-8"))
    values = task_values(data, task, args)
    config = write_task_config(folder, values)
    print(f"{task}: searching ({args.budget_minutes:g} min budget)", file=sys.stderr)
    load_before, t0 = list(os.getloadavg()), time.perf_counter()
    report = search_step(config, folder / "search")
    print(f"{task}: search took {report['seconds']:.0f} s; reporting on splits {args.report_seeds}", file=sys.stderr)
    result = {"task": task, "budget_minutes": args.budget_minutes, "search_seed": args.search_seed,
              "search_seeds": args.search_seeds, "report_seeds": args.report_seeds, "folds": args.folds,
              **report_step(values, folder / "search", report, args)}
    result["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    result["load_average"] = {"start": [round(x, 2) for x in load_before],
                              "end": [round(x, 2) for x in os.getloadavg()]}
    result["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
    write_atomic(folder / RESULT, json.dumps(result, indent=2).encode())
    return result


def _f1(part: dict) -> str:
    if not part or "skipped" in part:
        return "n/a"
    return f"{part['macro_f1']['mean']:.3f} ± {part['macro_f1']['std']:.3f}"


def lead_text(lead: dict | None) -> str:
    """A paired lead (``paired_difference``) as the tables write it: mean ± s.e. (ahead/level/behind)."""
    if not lead:
        return "n/a"
    return f"{lead['mean']:+.3f} ± {lead['sem']:.3f} ({lead['ahead']}/{lead['level']}/{lead['behind']})"


def _choice_name(choice: dict) -> str:
    s = choice["settings"]
    if choice["zero_shot"]:
        return "zero-shot prompt"
    head = s.get("task.head", "words")
    where = f" L{s['task.head_layer']}/{s.get('task.head_pooling', 'mean')}" if head == "linear" else ""
    if not choice["virtual_tokens"]:
        return f"probe{where}"
    started = " started at the manual words" if s.get("encoder.residual") else ""
    return (f"{s.get('encoder.type', '')} {choice['virtual_tokens']} tok{started}, {head}{where}, "
            f"lr {s.get('train.lr', '')}")


def level_with(result: dict, key: str) -> bool:
    """The choice at least level with a baseline: its mean paired lead in macro-F1 is not below zero."""
    lead = result.get(key)
    return bool(lead) and lead["mean"] >= -1e-9


def counts(results: list[dict]) -> dict:
    """The figures the sweep is judged on, over the tasks run."""
    leads = [r["lead_over_probe"]["mean"] for r in results if r.get("lead_over_probe")]
    return {"tasks": len(results),
            "level_with_probe": sum(level_with(r, "lead_over_probe") for r in results),
            "level_with_embeddings": sum(level_with(r, "lead_over_embeddings") for r in results),
            "level_with_both": sum(level_with(r, "lead_over_probe") and level_with(r, "lead_over_embeddings")
                                   for r in results),
            "mean_lead_over_probe": sum(leads) / len(leads) if leads else None,
            "with_virtual_tokens": sum(r["choice"]["virtual_tokens"] > 0 for r in results)}


def _mean_f1(results: list[dict], pick) -> str:
    values = [p["macro_f1"]["mean"] for r in results if (p := pick(r)) and "macro_f1" in p]
    return f"{sum(values) / len(values):.3f}" if values else "n/a"


def render(results: list[dict], machine: dict, args) -> str:
    """The markdown table: one row per task, the average, and the counts."""
    lines = [f"RAFT sweep: `ptune search` (built-in space, successive halving, {args.budget_minutes:g} min, "
             f"{args.folds} folds of split(s) {', '.join(map(str, args.search_seeds))}) chooses; reported on "
             f"{args.folds} folds of splits {', '.join(map(str, args.report_seeds))}, macro-F1 mean ± sd over folds.",
             "",
             f"Machine: {summary_line(machine)}.", "",
             "| task | choice (candidates scored; rung) | choice | probe | embeddings | zero-shot | majority | "
             "lead over probe (paired mean ± s.e.; ahead/level/behind) | lead over embeddings | search s | "
             "report s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        c, b, s = r["choice"], r["baselines"], r["seconds"]
        lines.append(f"| {r['task']} | {_choice_name(c)} ({c['candidates_scored']}; {c['last_rung'] + 1}) | "
                     f"{_f1(c)} | {_f1(b.get('linear_probe'))} | {_f1(b.get('sentence_embedding'))} | "
                     f"{_f1(b.get('zero_shot'))} | {_f1(b.get('majority'))} | {lead_text(r['lead_over_probe'])} | "
                     f"{lead_text(r['lead_over_embeddings'])} | {s['search']:.0f} | "
                     f"{s['report_cv'] + s['baselines']:.0f} |")
    if results:
        base = lambda name: (lambda r: r["baselines"].get(name))  # noqa: E731
        lines.append(f"| **average** | | {_mean_f1(results, lambda r: r['choice'])} | "
                     f"{_mean_f1(results, base('linear_probe'))} | {_mean_f1(results, base('sentence_embedding'))} | "
                     f"{_mean_f1(results, base('zero_shot'))} | {_mean_f1(results, base('majority'))} | | | | |")
        n = counts(results)
        mean_lead = "n/a" if n["mean_lead_over_probe"] is None else f"{n['mean_lead_over_probe']:+.3f}"
        lines += ["", f"Of {n['tasks']} tasks: the choice at least level (mean paired lead >= 0) with the probe on "
                      f"{n['level_with_probe']}, with the sentence embeddings on {n['level_with_embeddings']}, with "
                      f"both on {n['level_with_both']}; average lead over the probe {mean_lead}; the choice has "
                      f"trained virtual tokens on {n['with_virtual_tokens']}."]
    return "\n".join(lines) + "\n"


def open_run(args) -> tuple[Path, Path, list[str], dict]:
    """The data and output folders, the tasks to run and the machine (said on stderr), from the arguments."""
    data, out = Path(args.data), Path(args.out)
    tasks = task_names(data / "raft", args.tasks)
    machine = describe()
    print(f"machine: {summary_line(machine)}", file=sys.stderr)
    return data, out, tasks, machine


def main(argv=None) -> None:
    args = parse_args(argv)
    from ptune.files import write_atomic

    data, out, tasks, machine = open_run(args)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for task in tasks:
        results.append(run_task(data, out, task, args))
        summary = {"machine": machine, "settings": {k: v for k, v in vars(args).items()}, "tasks": tasks,
                   "results": results, "counts": counts(results)}
        write_atomic(out / "raft_sweep.json", json.dumps(summary, indent=2, default=str).encode())
        write_atomic(out / "raft_sweep.md", render(results, machine, args).encode())
        r = results[-1]
        print(f"{task}: choice {_f1(r['choice'])}, probe {_f1(r['baselines'].get('linear_probe'))}, lead "
              f"{lead_text(r['lead_over_probe'])}; {r['seconds']['total']:.0f} s, load {r['load_average']['end'][0]}",
              file=sys.stderr)
    print(json.dumps({"out": str(out), "tasks": len(results), "counts": counts(results),
                      "machine": summary_line(machine)}))


if __name__ == "__main__":
    main()
