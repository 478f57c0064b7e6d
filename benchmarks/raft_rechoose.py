"""The RAFT sweep's table again under the search's rule for choosing as it stands now (``search.pick_best``: the
best mean macro-F1, or a candidate that trains less within ``search.prefer_simpler`` standard errors of it), from
saved sweeps alone, nothing trained or scored again.

    python benchmarks/raft_rechoose.py runs/raft_sweep runs/raft_more --out runs/rechosen.md
    python benchmarks/raft_rechoose.py runs/raft_sweep --prefer-simpler 0     # the best mean alone

The rule only picks among the candidates a search scored, so it can be applied to a saved ``search.json``; the
search would have scored the same ones. Where the new choice is the one the sweep chose, its report figures stay;
where it is the zero-shot prompt or the probe at the linear head's defaults (middle layer, mean pooling), they are
those baselines' figures, which the sweep computed on the same report folds. A new choice of any other candidate
cannot be reported without training it and is refused. Each task's latest sweep counts (the last folder given that
holds it). Prints the table of ``raft_sweep.py`` (with its counts) and a line per task whose choice changed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from raft_sweep import RESULT, TASKS, counts, render


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", help="raft_sweep.py output folders (OUT/<task>/result.json and search/).")
    p.add_argument("--prefer-simpler", type=float, default=None,
                   help="search.prefer_simpler to choose with (default: the search's own default).")
    p.add_argument("--out", help="Also write the table here.")
    return p.parse_args(argv)


def latest(sweeps: list[str]) -> dict[str, Path]:
    """Each task's folder in the last sweep that finished it, in the sweep's task order."""
    found = {}
    for sweep in sweeps:
        for folder in sorted(Path(sweep).iterdir()):
            if (folder / RESULT).is_file() and (folder / "search" / "search.json").is_file():
                found[folder.name] = folder
    order = {name: i for i, name in enumerate(TASKS)}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(TASKS)), item[0])))


def trains(candidate: dict) -> str:
    """What a saved candidate fits (``search.TRAINS``), for reports written before rows said so."""
    from ptune.template import parse_template

    settings = candidate["settings"]
    if "zero_shot" in settings:
        return "nothing"
    untrained = parse_template(settings.get("task.template", "")).n_virtual == 0 and not settings.get(
        "encoder.deep_tokens")
    return "classifier" if settings.get("task.head") == "linear" and untrained else "prompt"


def middle_layer(folder: Path) -> int:
    """The layer of the sweep's probe baseline (the linear head's default, the middle block) for the task's model."""
    import yaml

    from ptune.config import config_from_dict
    from ptune.evaluation.search import linear_depth
    from ptune.evaluation.space import layer_number

    values = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    values.pop("search", None)
    return layer_number("middle", linear_depth(config_from_dict(values)))


def rechoose(folder: Path, within: float) -> tuple[dict, str | None]:
    """A task's result with the choice made again (unchanged where the rule picks the same), and a line on what
    changed (None where nothing did)."""
    from ptune.evaluation.search import paired_difference, pick_best

    result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    report = json.loads((folder / "search" / "search.json").read_text(encoding="utf-8"))
    candidates = copy.deepcopy(report["candidates"])
    for candidate in candidates:
        candidate.setdefault("trains", trains(candidate))
    chosen, notes = pick_best(candidates, within)
    if chosen == report["best"]:
        return result, None
    new = candidates[chosen]
    settings, base = new["settings"], result["baselines"]
    if new["trains"] == "nothing":
        figures = base["zero_shot"]
    elif new["trains"] == "classifier" and settings.get("task.head_pooling", "mean") == "mean" \
            and settings.get("task.head_layer") == middle_layer(folder):
        figures = base["linear_probe"]
    else:
        sys.exit(f"{folder}: the rule chooses #{chosen} ({settings}), whose report figures the sweep has not")
    result["choice"] = {"settings": settings, "zero_shot": new["trains"] == "nothing", "virtual_tokens": 0,
                        "epochs": None, "rung": None,
                        "candidates_scored": result["choice"]["candidates_scored"],
                        "last_rung": result["choice"]["last_rung"], **figures}
    for key, name in (("lead_over_probe", "linear_probe"), ("lead_over_embeddings", "sentence_embedding")):
        result[key] = paired_difference(figures["fold_macro_f1"], base[name].get("fold_macro_f1", []))
    return result, f"{folder.name}: #{report['best']} -> #{chosen}: {notes[0] if notes else ''}"


def main(argv=None) -> None:
    args = parse_args(argv)
    from ptune.evaluation.search import PREFER_SIMPLER

    within = PREFER_SIMPLER if args.prefer_simpler is None else args.prefer_simpler
    results, changes = [], []
    for folder in latest(args.sweeps).values():
        result, change = rechoose(folder, within)
        results.append(result)
        changes += [change] if change else []
    if not results:
        sys.exit("no finished task in the folders given")
    first = results[0]
    machine = json.loads((Path(args.sweeps[0]) / "raft_sweep.json").read_text(encoding="utf-8"))["machine"]
    shape = SimpleNamespace(budget_minutes=first["budget_minutes"], folds=first["folds"],
                            search_seeds=first.get("search_seeds", [first["search_seed"]]),
                            report_seeds=first["report_seeds"])
    table = render(results, machine, shape) + "".join(f"\n- {line}" for line in changes) + "\n"
    table = f"Chosen again with search.prefer_simpler = {within:g}.\n\n" + table
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    print(json.dumps({"prefer_simpler": within, "changed": len(changes), "counts": counts(results)}))


if __name__ == "__main__":
    main()
