"""``ptune search``: choose a recipe by repeated, stratified k-fold cross-validation over a declared space.

The config file is a normal ptune config plus a ``search`` section:

    search:
      folds: 5
      seeds: [1, 2]
      budget_minutes: 30          # stop starting new candidates after this
      ensemble: 1                 # models per fold (training seeds seed, seed+100, ...), scored as one ensemble
      space:                      # dotted config keys -> candidate values (the grid is their product)
        task.template: ["[P*20] Tweet text : {Tweet text} Label : [TARGET]", "..."]
        train.lr: [3e-3, 1e-2]

Every candidate gets the same folds. With ``data.dev_fraction`` (or a dev file) each fold model keeps its best
epoch on dev rows outside its held-out fold and stops early after ``train.patience`` bad evaluations, so
``train.epochs`` and ``train.patience`` can be searched as a ceiling and a stopping rule; the winner is retrained
the same way. Keys used only at prediction time (``task.calibrate``, ``task.score``) cost no training: each of
their values is scored on the same fold models. The table and plot report mean and spread of
accuracy and macro-F1; the best by mean macro-F1 is retrained on all rows and written as a normal checkpoint
(``predict``/``eval``/``serve`` take it). With ``ensemble: N`` (classification) every candidate is scored as an
ensemble of N seeds, and the winner's other N-1 members go to ``OUT/members/seed-S``; ``ptune predict OUT
OUT/members/*`` predicts with the whole ensemble, as it was scored.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from .. import checkpoint
from ..config import apply_overrides, config_from_dict, read_config_file, resolve_paths
from ..errors import ConfigError, PtuneError
from ..plotting import plot_search
from ..session import open_session, read_split
from ..training.prepare import fold_dev, prepare
from ..training.trainer import fit
from .cv import cross_validate


def load_search(path: str | Path, overrides: list[str] = ()) -> tuple[dict, dict]:
    """(base config values, search settings) from a YAML file."""
    path = Path(path)
    values = read_config_file(path)
    search = values.pop("search", None)
    if not isinstance(search, dict) or not isinstance(search.get("space"), dict) or not search["space"]:
        raise ConfigError(f"{path}: needs a `search:` section with a non-empty `space:` mapping")
    unknown = set(search) - {"folds", "seeds", "budget_minutes", "ensemble", "space"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in search: {', '.join(sorted(unknown))}")
    for key, options in search["space"].items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{path}: search.space.{key} must be a non-empty list of values")
    values = apply_overrides(values, list(overrides))
    values["__file__"] = str(path)
    return values, search


def candidates(base: dict, space: dict) -> list[tuple[dict, dict]]:
    """Each point of the grid: (its settings, the full config values)."""
    keys = list(space)
    out = []
    for combo in itertools.product(*(space[k] for k in keys)):
        settings = dict(zip(keys, combo))
        values = copy.deepcopy({k: v for k, v in base.items() if k != "__file__"})
        for key, value in settings.items():
            node = values
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        out.append((settings, values))
    return out


# settings used only when predicting: each is scored on the same fold models, at no extra training
PREDICT_ONLY = ("task.calibrate", "task.score")


def split_space(space: dict) -> tuple[dict, list[dict]]:
    """(the part of the grid that needs training, the prediction-time variants as ``task`` field overrides)."""
    train_space = {k: v for k, v in space.items() if k not in PREDICT_ONLY}
    keys = [k for k in space if k in PREDICT_ONLY]
    variants = [{k.split(".", 1)[1]: v for k, v in zip(keys, combo)}
                for combo in itertools.product(*(space[k] for k in keys))]
    return train_space, variants


def build(values: dict, source: str):
    cfg = config_from_dict(values)
    resolve_paths(cfg, Path(source).parent)
    return cfg


def run_search(path: str | Path, out_dir: str | Path, overrides: list[str] = (), show_progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    if (out_dir / checkpoint.MANIFEST).exists():
        raise PtuneError(f"{out_dir} already holds a checkpoint; choose another --out")
    base_values, search = load_search(path, overrides)
    folds = int(search.get("folds", 5))
    seeds = [int(s) for s in search.get("seeds", [42])]
    budget = float(search.get("budget_minutes", 0)) * 60
    ensemble = int(search.get("ensemble", 1))
    if ensemble < 1:
        raise ConfigError(f"{path}: search.ensemble must be at least 1, got {ensemble}")
    train_space, variants = split_space(search["space"])
    grid = candidates(base_values, train_space) if train_space else [({}, copy.deepcopy(
        {k: v for k, v in base_values.items() if k != "__file__"}))]
    # every candidate (with each prediction variant) validated before any work
    configs = [(s, build(v, base_values["__file__"])) for s, v in grid]
    if ensemble > 1 and any(cfg.task.type != "classification" for _, cfg in configs):
        raise ConfigError(f"{path}: search.ensemble averages label probabilities, so it needs a classification task")
    for s_, v in grid:
        for variant in variants:
            build(copy.deepcopy(v) | {"task": v.get("task", {}) | variant}, base_values["__file__"])
    session0, table, dev_table = prepare(configs[0][1], hold_out_dev=False)  # cv takes dev rows per fold
    base = session0.base

    def unlabeled(cfg):  # read once (the first candidate's), unless a candidate names other rows
        if not cfg.data.unlabeled:
            return None
        if cfg.data.unlabeled == configs[0][1].data.unlabeled:
            return session0.unlabeled
        return read_split(cfg, "unlabeled")
    results, configs_run = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(configs), desc="search", unit="candidate", disable=not show_progress)
    for settings, cfg in configs:
        if budget and time.perf_counter() - t0 > budget:
            print(f"time budget of {budget / 60:.0f} min reached: {len(configs) - len(configs_run)} candidates not run")
            break
        values = table.column(cfg.task.label_column) if cfg.task.type == "classification" else None
        session = open_session(cfg, label_values=values, base=base, unlabeled=unlabeled(cfg))
        summary = cross_validate(cfg, folds=folds, seeds=seeds, session=session, train_table=table,
                                 dev_table=dev_table, show_progress=False, variants=variants, ensemble=ensemble)
        for part in summary.get("variants", [summary]):
            extra = {f"task.{k}": v for k, v in part.get("settings", {}).items()}
            row = {"settings": settings | extra, "seconds": round(summary["seconds"], 1), "config": len(configs_run)}
            for metric in ("accuracy", "macro_f1"):
                if metric in part:
                    row[metric] = part[metric]
            if "macro_f1" in part:  # per fold, in fold order: every candidate has the same folds, so they pair up
                row["fold_macro_f1"] = [r["macro_f1"] for r in part["runs"]]
            results.append(row)
        configs_run.append(cfg)
        bar.update(1)
        bar.set_postfix(best_f1=f"{max(r.get('macro_f1', {}).get('mean', 0) for r in results):.3f}")
    bar.close()
    if not results:
        raise PtuneError("no candidate finished within the time budget")
    best_i = max(range(len(results)), key=lambda i: results[i].get("macro_f1", {}).get("mean", -1))
    best = results[best_i]
    for row in results:
        row["vs_best"] = paired_difference(best.get("fold_macro_f1", []), row.get("fold_macro_f1", []))
    best_cfg = dataclasses.replace(configs_run[best["config"]], task=dataclasses.replace(
        configs_run[best["config"]].task, **{k.split(".", 1)[1]: v for k, v in best["settings"].items()
                                             if k in PREDICT_ONLY}))
    # retrain the winner on every labelled row and write a normal checkpoint
    values = table.column(best_cfg.task.label_column) if best_cfg.task.type == "classification" else None
    session = open_session(best_cfg, label_values=values, base=base, unlabeled=unlabeled(best_cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    # members use the training seeds cross_validate gave them: seed, seed + 100, ...
    member_seeds = [best_cfg.train.seed + 100 * m for m in range(ensemble)]
    member_dirs = [out_dir] + [out_dir / "members" / f"seed-{s}" for s in member_seeds[1:]]
    for member_seed, member_dir in zip(member_seeds, member_dirs):
        member_dir.mkdir(parents=True, exist_ok=True)
        # the same dev rule as each fold model had (best epoch, early stopping), over every labelled row
        fit(session, *fold_dev(best_cfg, table, dev_table, member_seed), member_dir, show_progress=show_progress,
            seed=member_seed)
    report = {"folds": folds, "seeds": seeds, "ensemble": ensemble, "seconds": round(time.perf_counter() - t0, 1),
              "best": best_i, "members": [str(d.relative_to(out_dir)) for d in member_dirs], "candidates": results}
    checkpoint.write_atomic(out_dir / "search.json", json.dumps(report, indent=2).encode())
    checkpoint.write_atomic(out_dir / "search.md", (render_table(results, best_i) + usage(report, out_dir)).encode())
    plot_search(results, best_i, out_dir / "search.png")
    return report


def _short(settings: dict) -> str:
    return "; ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())


def usage(report: dict, out_dir: Path) -> str:
    """How to predict with what the search wrote: one checkpoint, or the ensemble it scored."""
    dirs = " ".join(str(out_dir / m) for m in report["members"])
    if report.get("ensemble", 1) == 1:
        return f"\nPredict with the chosen recipe: `ptune predict {dirs} --data ROWS.csv`\n"
    return (f"\nEvery candidate was scored as an ensemble of {report['ensemble']} training seeds; predict with all "
            f"of them: `ptune predict {dirs} --data ROWS.csv` (`{out_dir}` alone is its first member)\n")


def paired_difference(best: list[float], other: list[float]) -> dict | None:
    """How sure the choice is: the best candidate's macro-F1 minus another's, fold by fold on the same folds (mean,
    sd, standard error of the mean), and on how many folds the best one is ahead, level or behind."""
    if not best or len(best) != len(other):
        return None
    diffs = [b - o for b, o in zip(best, other)]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return {"mean": statistics.fmean(diffs), "std": sd, "sem": sd / math.sqrt(len(diffs)),
            "ahead": sum(d > 1e-9 for d in diffs), "level": sum(abs(d) <= 1e-9 for d in diffs),
            "behind": sum(d < -1e-9 for d in diffs)}


def render_table(results: list[dict], best: int) -> str:
    lines = ["| # | candidate | accuracy (mean ± sd) | macro-F1 (mean ± sd) | best's lead in macro-F1 (paired: mean ± "
             "s.e.; folds ahead/level/behind) | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(results):
        acc, f1, lead = r.get("accuracy", {}), r.get("macro_f1", {}), r.get("vs_best")
        mark = " **best**" if i == best else ""
        lead_text = "" if i == best or not lead else (f"{lead['mean']:+.3f} ± {lead['sem']:.3f}; "
                                                      f"{lead['ahead']}/{lead['level']}/{lead['behind']}")
        lines.append(f"| {i}{mark} | {_short(r['settings'])} | {acc.get('mean', 0):.3f} ± {acc.get('std', 0):.3f} | "
                     f"{f1.get('mean', 0):.3f} ± {f1.get('std', 0):.3f} | {lead_text} | {r['seconds']} |")
    return "\n".join(lines) + "\n" + how_sure(results, best)


def how_sure(results: list[dict], best: int) -> str:
    """One sentence on the runner-up: a lead within about two standard errors is not a clear win."""
    others = [i for i in range(len(results)) if i != best and results[i].get("vs_best")]
    if not others:
        return ""
    second = min(others, key=lambda i: results[i]["vs_best"]["mean"])
    lead = results[second]["vs_best"]
    n = lead["ahead"] + lead["level"] + lead["behind"]
    verdict = ("a clear lead" if lead["mean"] > 2 * lead["sem"] else
               "within two standard errors: the folds do not separate them")
    return (f"\nThe best (#{best}) leads the runner-up (#{second}) by {lead['mean']:+.3f} macro-F1 over the same "
            f"{n} folds (standard error {lead['sem']:.3f}; ahead on {lead['ahead']}, level on {lead['level']}, "
            f"behind on {lead['behind']}): {verdict}.\n")
