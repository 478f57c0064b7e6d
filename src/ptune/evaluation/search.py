"""``ptune search``: choose a recipe by repeated, stratified k-fold cross-validation over a space of candidates.

The config file is a normal ptune config, with or without a ``search`` section:

    search:
      folds: 5
      seeds: [1, 2]
      budget_minutes: 30          # stop starting new candidates after this (shared between the rungs of halving)
      ensemble: 1                 # models per fold (training seeds seed, seed+100, ...), scored as one ensemble
      halving: false              # successive halving over the epochs; the default without a space is true
      prefer_simpler: 1           # standard errors within which what trains less is chosen (0: the best mean)
      space:                      # dotted config keys -> candidate values (the grid is their product)
        task.template: ["[P*20] Tweet text : {Tweet text} Label : [TARGET]", "..."]
        train.lr: [3e-3, 1e-2]

Without ``space`` the candidates are the built-in space's (``space.py``: the probe, prompts of a few sizes and
placements, both heads, encoders, learning rates), searched by successive halving (``halving.py``): every
candidate on a rung with a fraction of its epochs, the best third promoted to the next, the last rung with the full
epochs; the winner is the best of the last rung reached. Besides the checkpoint, the winner's config is written as
``recipe.yaml``, which ``ptune train`` takes.

With a few dozen rows a fold's figure moves a lot with which rows it holds, so the best mean alone would often pick
a trained prompt on noise. The winner is the best mean unless a candidate that trains less (the zero-shot prompt,
then a probe) trails it by at most ``prefer_simpler`` standard errors of their paired difference over the same
folds: then the simplest such candidate, and the report says so (``pick_best``).

Every candidate gets the same folds, at every rung. With ``data.dev_fraction`` (or a dev file) each fold model
keeps its best epoch on dev rows outside its held-out fold and stops early after ``train.patience`` bad evaluations, so
``train.epochs`` and ``train.patience`` can be searched as a ceiling and a stopping rule; the winner is retrained
the same way. Keys used only at prediction time (``task.calibrate``, ``task.score``) cost no training: each of
their values is scored on the same fold models. The table and plot report mean and spread of
accuracy and macro-F1; the chosen candidate (above) is retrained on all rows and written as a normal checkpoint
(``predict``/``eval``/``serve`` take it). With ``ensemble: N`` (classification) every candidate is scored as an
ensemble of N seeds, and the winner's other N-1 members go to ``OUT/members/seed-S``; ``ptune predict OUT
OUT/members/*`` predicts with the whole ensemble, as it was scored.

The zero-shot manual prompt is a candidate too (``search.zero_shot: false`` leaves it out): each distinct candidate
template with its ``[P*n]`` runs taken out, label words ranked by the frozen model, nothing trained, scored on the
same folds (and under the same prediction-time variants) before the trained candidates, outside the time budget;
its figure decides, against the probe's, which prompt started at the manual words the first rung trains first
(``start_from_the_better``). A
classification config without label words (``task.head: linear`` and an empty ``task.verbalizer``) has none, and
the search says so. A chosen zero-shot prompt is written as a checkpoint with no virtual tokens and no training.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import checkpoint
from ..config import (Config, absolute_paths, apply_overrides, config_from_dict, read_config_file,
                      resolve_paths)
from ..data.tables import Table
from ..errors import ConfigError, PtuneError
from ..modeling.base import describe_base, detect_kind, load_tokenizer
from ..plotting import plot_search
from ..session import Session, open_session, read_split
from ..tasks.pooled_cache import PooledStateCache
from ..template import from_residual_form, parse_template, without_virtual
from ..training.prepare import fold_dev, prepare
from ..training.saving import save_inference
from ..training.trainer import fit, fit_label_offsets
from .coverage import coverage_notes, kind_counts
from .cv import cross_validate
from .halving import rung_epochs, rung_fractions, successive_halving
from .space import PROBE, STARTED, builtin_candidates
from .summary import mean_spread


def load_search(path: str | Path, overrides: list[str] = ()) -> tuple[dict, dict]:
    """(base config values, search settings) from a YAML file."""
    path = Path(path)
    values = read_config_file(path)
    search = values.pop("search", None)
    search = {} if search is None else search  # no section: the built-in space, with the defaults
    if not isinstance(search, dict) or ("space" in search and (not isinstance(search["space"], dict)
                                                             or not search["space"])):
        raise ConfigError(f"{path}: `search:` must be a mapping, and its `space:` (leave it out for the built-in "
                          "space) a non-empty mapping")
    unknown = set(search) - {"folds", "seeds", "budget_minutes", "ensemble", "space", "zero_shot", "halving",
                             "prefer_simpler"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in search: {', '.join(sorted(unknown))}")
    for key, options in search.get("space", {}).items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{path}: search.space.{key} must be a non-empty list of values")
    for key in ("zero_shot", "halving"):
        if not isinstance(search.get(key, True), bool):
            raise ConfigError(f"{path}: search.{key} must be true or false, got {search[key]!r}")
    simpler = search.get("prefer_simpler", PREFER_SIMPLER)
    if isinstance(simpler, bool) or not isinstance(simpler, (int, float)) or simpler < 0:
        raise ConfigError(f"{path}: search.prefer_simpler must be a number of standard errors, 0 or more (0: the "
                          f"best mean alone), got {simpler!r}")
    values = apply_overrides(values, list(overrides))
    values["__file__"] = str(path)
    return values, search


def candidates(base: dict, space: dict) -> list[tuple[dict, dict]]:
    """Each point of the grid: (its settings, the full config values)."""
    keys = list(space)
    out = []
    for combo in itertools.product(*(space[k] for k in keys)):
        settings = dict(zip(keys, combo))
        out.append((settings, apply_settings(base, settings)))
    return out


def apply_settings(base: dict, settings: dict) -> dict:
    """A copy of the config values ``base`` with a candidate's dotted ``settings`` set."""
    values = copy.deepcopy({k: v for k, v in base.items() if k != "__file__"})
    for key, value in settings.items():
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return values


RECIPE = "recipe.yaml"  # the chosen recipe as a config file, written beside its checkpoint
# within this many standard errors of the best (paired, over the same folds), the candidate that trains less is
# chosen: the zero-shot prompt (nothing fitted), then a probe (a classifier alone), then a trained prompt
PREFER_SIMPLER = 1.0
TRAINS = ("nothing", "classifier", "prompt")  # what a candidate fits, simplest first

# settings used only when predicting: each is scored on the same fold models, at no extra training
PREDICT_ONLY = ("task.calibrate", "task.score")


def split_space(space: dict) -> tuple[dict, list[dict]]:
    """(the part of the grid that needs training, the prediction-time variants as ``task`` field overrides)."""
    train_space = {k: v for k, v in space.items() if k not in PREDICT_ONLY}
    keys = [k for k in space if k in PREDICT_ONLY]
    variants = [{k.split(".", 1)[1]: v for k, v in zip(keys, combo)}
                for combo in itertools.product(*(space[k] for k in keys))]
    return train_space, variants


def build(values: dict, source: str) -> Config:
    """A candidate's config from its values, with paths resolved against the search file's folder (``source``)."""
    cfg = config_from_dict(values)
    resolve_paths(cfg, Path(source).parent)
    return cfg


@dataclass
class SearchPlan:
    """What ``search:`` asks for, checked: the candidates' configs (grid points that need training) and the
    prediction-time variants each is scored under, with the fold settings."""
    folds: int
    seeds: list[int]
    budget: float  # seconds; 0: no limit
    ensemble: int
    configs: list[tuple[dict, Config]]  # (grid settings, config) per candidate
    variants: list[dict]  # ``task`` field overrides, scored on every candidate's fold models
    zero_shot: list[tuple[dict, Config]]  # (settings, config) per zero-shot manual prompt, scored untrained
    notes: list[str]  # why a zero-shot prompt was left out
    halving: bool = False  # successive halving over the epochs (``halving.py``), not every candidate in full
    prefer_simpler: float = PREFER_SIMPLER  # standard errors within which the candidate that trains less wins
    builtin: bool = False  # the candidates are the built-in space's (``space.py``)
    kinds: list[str] = field(default_factory=list)  # each candidate's kind (``space.KINDS``); the built-in space's

    @classmethod
    def read(cls, path: str | Path, overrides: list[str] = ()) -> SearchPlan:
        """Read and check the search file; every candidate, with each prediction variant, is built (and so
        validated) before any work."""
        base_values, search = load_search(path, overrides)
        source = base_values.pop("__file__")
        folds, seeds = int(search.get("folds", 5)), [int(s) for s in search.get("seeds", [42])]
        budget = float(search.get("budget_minutes", 0)) * 60
        ensemble = int(search.get("ensemble", 1))
        if ensemble < 1:
            raise ConfigError(f"{path}: search.ensemble must be at least 1, got {ensemble}")
        builtin = "space" not in search
        train_space, variants = split_space(search.get("space", {}))
        if builtin:
            base_cfg = build(copy.deepcopy(base_values), source)
            tokenizer = load_tokenizer(base_cfg.model)  # counts the anchor's tokens of a prompt started at them
            kinds, space = zip(*builtin_candidates(base_values, linear_depth(base_cfg), tokenizer))
            grid = [(settings, apply_settings(base_values, settings)) for settings in space]
        else:
            grid = candidates(base_values, train_space) if train_space else [({}, copy.deepcopy(base_values))]
            kinds = []
        configs = [(settings, build(values, source)) for settings, values in grid]
        if ensemble > 1 and any(cfg.task.type != "classification" for _, cfg in configs):
            raise ConfigError(f"{path}: search.ensemble averages label probabilities, so it needs a classification "
                              "task")
        for _, values in grid:
            for variant in variants:
                build(copy.deepcopy(values) | {"task": values.get("task", {}) | variant}, source)
        zero_shot, notes = (zero_shot_candidates(configs) if search.get("zero_shot", True)
                            else ([], ["zero-shot manual prompt: left out (search.zero_shot is false)"]))
        return cls(folds, seeds, budget, ensemble, configs, variants, zero_shot, notes,
                   halving=bool(search.get("halving", builtin)), builtin=builtin,
                   kinds=list(kinds), prefer_simpler=float(search.get("prefer_simpler", PREFER_SIMPLER)))


def linear_depth(cfg: Config) -> int | None:
    """The base model's number of blocks, read from its config alone, where a linear head can read them (a causal
    LM of a classification task); None otherwise."""
    if cfg.task.type != "classification":
        return None
    _, _, _, model_config = describe_base(cfg.model)
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    depth = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    return depth if detect_kind(model_config) == "causal" and depth else None


def zero_shot_candidates(configs: list[tuple[dict, Config]]) -> tuple[list[tuple[dict, Config]], list[str]]:
    """The zero-shot manual prompts to score beside the trained candidates: each candidate's config with its
    template's virtual runs taken out and ``task.head: words`` (label words ranked, nothing trained), once per
    distinct prompt; and, for candidates that have none, why.

    Args:
        configs (`list[tuple[dict, Config]]`): the trained candidates' (settings, config).

    Returns:
        `tuple[list[tuple[dict, Config]], list[str]]`: ((``{"zero_shot": manual template}``, its config) per
        distinct prompt, and where there is none, notes on why).

    Example:
        >>> zero_shot_candidates([({}, cfg)])[0][0][0]  # doctest: +SKIP
        {'zero_shot': 'Tweet : {Tweet text} Is this tweet a complaint ? Answer : [TARGET]'}
    """
    out, seen, notes = [], set(), []
    for _, cfg in configs:
        if cfg.task.type != "classification":
            why = f"task.type is {cfg.task.type}, and only classification ranks label words"
        elif cfg.task.head == "linear" and not cfg.task.verbalizer:
            why = "no label words (task.head is linear and task.verbalizer is empty)"
        else:
            why = None
        if why:
            note = f"zero-shot manual prompt: skipped, {why}"
            notes += [] if note in notes else [note]
            continue
        manual = manual_template(cfg)
        zcfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, template=manual, head="words",
                                                                 head_layer=0, head_pooling="mean"),
                                   encoder=dataclasses.replace(cfg.encoder, deep_tokens=0))  # nothing trained
        key = json.dumps([zcfg.to_dict()[section] for section in ("model", "task", "data")]
                         + [zcfg.train.max_length, zcfg.train.eval_batch_size], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(({"zero_shot": manual}, zcfg))
    return out, [] if out else notes  # a probe among word-reading candidates (the built-in space) needs no note


def manual_template(cfg: Config) -> str:
    """The manual prompt a candidate is built on: its template without the virtual runs, or, for a prompt started
    at the manual words (``encoder.residual`` over ``init: text``), with its run read as those words again."""
    if cfg.encoder.residual and cfg.encoder.init == "text":
        return from_residual_form(cfg.task.template, cfg.encoder.init_text)
    return without_virtual(cfg.task.template)


@dataclass
class SharedRows:
    """The rows and the frozen base every candidate shares: the first candidate's training rows (folded the same
    way for all), its dev file, and its unlabeled rows; and the linear probes' pooled states, which are the frozen
    base's alone, so each row's is computed once per block and pooling for every probe candidate and fold."""
    first: Session
    table: Table
    dev_table: Table | None
    pooled: PooledStateCache = field(default_factory=PooledStateCache)

    def session(self, cfg: Config, allow_no_virtual: bool = False) -> Session:
        """A session for ``cfg`` over the shared base, with the shared label values, unlabeled rows and pooled
        states; ``allow_no_virtual`` for a zero-shot prompt."""
        values = self.table.column(cfg.task.label_column) if cfg.task.type == "classification" else None
        session = open_session(cfg, label_values=values, base=self.first.base, unlabeled=self.unlabeled(cfg),
                               allow_no_virtual=allow_no_virtual)
        session.task.pooled_cache = self.pooled
        return session

    def unlabeled(self, cfg: Config) -> Table | None:
        """Read once (the first candidate's), unless a candidate names other rows."""
        if not cfg.data.unlabeled:
            return None
        if cfg.data.unlabeled == self.first.cfg.data.unlabeled:
            return self.first.unlabeled
        return read_split(cfg, "unlabeled")


def run_search(path: str | Path, out_dir: str | Path, overrides: list[str] = (), show_progress: bool = True) -> dict:
    """Cross-validate the candidates of the config's ``search.space`` (or, without one, of the built-in space, by
    successive halving) on the same folds, retrain the chosen one (``pick_best``: the best mean macro-F1 among those
    on the last rung reached, or one that trains less within ``search.prefer_simpler`` standard errors) on every
    labelled row, and write its checkpoint, its recipe and the search report.

    Args:
        path (`str` or `Path`): a ptune config, with or without a ``search:`` section (see the module docstring).
        out_dir (`str` or `Path`): where the checkpoint (and ``members/`` for an ensemble), ``search.json``,
            ``search.md`` and ``search.png`` go; must not hold a checkpoint already.
        overrides (`list[str]`): ``key=value`` overrides applied to the config, as ``--set`` gives them.
        show_progress (`bool`): progress bars for the search and the retraining.

    Returns:
        `dict`: the report written to ``search.json``: ``folds``, ``seeds``, ``ensemble``, ``seconds``, ``best``
        (an index into ``candidates``), ``members`` (checkpoint folders, relative to ``out_dir``), ``notes`` (why
        a zero-shot prompt was left out, and how little of the first rung the budget covered, if so), ``coverage``
        (the built-in space's candidates scored per kind: ``kind``, ``scored``, ``of``), ``space`` (``built-in`` or
        ``search.space``), ``halving``,
        ``recipe`` (the chosen recipe's config file in ``out_dir``, which ``ptune train`` takes; None for a zero-shot
        prompt) and ``candidates`` (per candidate: ``settings``, ``accuracy`` and ``macro_f1`` mean and spread,
        ``fold_macro_f1``, ``vs_best``, ``seconds``, ``config``, and with halving ``rung`` (0 first) and
        ``epochs``, where it stopped; a zero-shot prompt's ``settings`` hold ``zero_shot``: its template).

    Example:
        >>> report = run_search("examples/search_twitter_complaints.yaml", "runs/search")  # doctest: +SKIP
        >>> report["candidates"][report["best"]]["settings"]  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    checkpoint.check_out_dir(out_dir)  # no checkpoint there yet, and no model's or adapter's files
    plan = SearchPlan.read(path, overrides)
    first, table, dev_table = prepare(plan.configs[0][1], hold_out_dev=False)  # cv takes dev rows per fold
    shared = SharedRows(first, table, dev_table)
    t0 = time.perf_counter()
    for note in plan.notes:
        print(note)
    results, configs_run, coverage = score_candidates(plan, shared, t0, show_progress)
    best_i, simpler = pick_best(results, plan.prefer_simpler)
    best_cfg = winner_config(configs_run[results[best_i]["config"]], results[best_i]["settings"])
    if "zero_shot" in results[best_i]["settings"]:
        member_dirs = write_zero_shot(best_cfg, shared, out_dir)
    else:
        member_dirs = retrain_winner(best_cfg, shared, out_dir, plan.ensemble, show_progress)
        absolute_paths(best_cfg).to_yaml(out_dir / RECIPE)  # what `ptune train` takes, from any folder
    report = {"folds": plan.folds, "seeds": plan.seeds, "ensemble": plan.ensemble,
              "seconds": round(time.perf_counter() - t0, 1), "best": best_i,
              "members": [str(d.relative_to(out_dir)) for d in member_dirs],
              "notes": plan.notes + coverage["notes"] + simpler, "coverage": coverage["kinds"],
              "space": "built-in" if plan.builtin else "search.space", "halving": plan.halving,
              "recipe": None if "zero_shot" in results[best_i]["settings"] else RECIPE, "candidates": results}
    write_report(out_dir, report)
    return report


def score_candidates(plan: SearchPlan, shared: SharedRows, t0: float,
                     show_progress: bool) -> tuple[list[dict], list[Config], dict]:
    """Score the zero-shot prompts (seconds, so outside the budget), then cross-validate the candidates within the
    time budget (counted from ``t0``): each in full, in order, or by successive halving: (one result row per
    candidate and prediction variant, in candidate order, each at the last rung it reached; the configs that ran,
    each with the epochs it was scored with; the first rung's coverage, ``first_rung_coverage``)."""
    left = max(plan.budget - (time.perf_counter() - t0), 1e-9) if plan.budget else 0.0
    zero_shot = [score_zero_shot(plan, shared, cfg) for _, cfg in plan.zero_shot]
    plan, known, order = start_from_the_better(plan, shared, zero_shot) if plan.halving else (plan, {}, [])
    for note in order:
        print(note, file=sys.stderr)
    scored, costs = (score_by_halving(plan, shared, left, show_progress, known) if plan.halving
                     else score_in_order(plan, shared, left, show_progress))
    coverage = first_rung_coverage(plan, costs)
    coverage["notes"] = order + coverage["notes"]
    results, configs_run = [], []
    for settings, cfg, summary, rung in scored:
        rows = candidate_rows(summary, settings, len(configs_run), "classifier" if trains_nothing(cfg) else "prompt")
        # a probe's figures are final at any rung (no epochs): like a zero-shot prompt, it has no rung and competes
        for row in rows if rung is not None and not trains_nothing(cfg) else []:
            row |= {"rung": rung, "epochs": cfg.train.epochs}
        results += rows
        configs_run.append(cfg)
    for (settings, cfg), summary in zip(plan.zero_shot, zero_shot):
        results += candidate_rows(summary, settings, len(configs_run), "nothing")
        configs_run.append(cfg)
    if not results:
        raise PtuneError("no candidate finished within the time budget")
    return results, configs_run, coverage


def score_zero_shot(plan: SearchPlan, shared: SharedRows, cfg: Config) -> dict:
    """A zero-shot prompt's cross-validation summary: nothing trained, each fold's model scored as built (seconds,
    outside the time budget)."""
    return cross_validate(cfg, folds=plan.folds, seeds=plan.seeds, session=shared.session(cfg, True),
                          train_table=shared.table, show_progress=False, variants=plan.variants, trained=False,
                          loss=False)


def start_from_the_better(plan: SearchPlan, shared: SharedRows,
                          zero_shot: list[dict]) -> tuple[SearchPlan, dict[int, dict], list[str]]:
    """Which prompt started at the manual words the first rung scores first: the one whose start stands higher on
    the search's folds. The label-words one starts at the zero-shot prompt, the linear-head one at the probe of
    its layer and pooling; where that probe beats the zero-shot prompt, the two swap places, so a budget that
    reaches only one of them trains from the better start. The probe is scored here (it trains nothing, so its
    figures are final) and not again.

    Args:
        plan (`SearchPlan`): the search; only a built-in space with both started candidates is reordered.
        shared (`SharedRows`): the search's rows and base model.
        zero_shot (`list[dict]`): the zero-shot prompts' summaries (``score_zero_shot``), in ``plan.zero_shot``'s
            order.

    Returns:
        `tuple[SearchPlan, dict[int, dict], list[str]]`: the plan, reordered or not; the summaries already scored,
        by candidate index; and a note saying which starts first and why (none where nothing was decided).
    """
    started = [i for i, kind in enumerate(plan.kinds) if kind == STARTED]
    if len(started) != 2 or not zero_shot:
        return plan, {}, []
    words, linear = started  # as space.started_candidates lists them: the label words' first
    head = plan.configs[linear][1].task
    probe = next((i for i, kind in enumerate(plan.kinds) if kind == PROBE
                  and (plan.configs[i][1].task.head_layer, plan.configs[i][1].task.head_pooling)
                  == (head.head_layer, head.head_pooling)), None)
    if probe is None:
        return plan, {}, []
    summary = run_candidate(plan, shared, plan.configs[probe][1])
    probe_f1, zero_f1 = best_f1(summary), max(best_f1(z) for z in zero_shot)
    first = "linear head (from the probe)" if probe_f1 > zero_f1 else "label words (from the zero-shot prompt)"
    note = (f"prompts started at the manual words: the {first} first; the probe scores {probe_f1:.3f} macro-F1 "
            f"on the search's folds, the zero-shot prompt {zero_f1:.3f}")
    configs = list(plan.configs)
    if probe_f1 > zero_f1:
        configs[words], configs[linear] = configs[linear], configs[words]
    return dataclasses.replace(plan, configs=configs), {probe: summary}, [note]


def first_rung_coverage(plan: SearchPlan, costs: dict[int, float]) -> dict:
    """How many candidates of each kind of the built-in space were scored (``kinds``: ``{"kind", "scored",
    "of"}`` each; empty for a space of the config's own), and where the budget cut the first rung short, ``notes``
    saying so (also written to stderr); ``costs`` are the seconds of each candidate's first score, by index."""
    if not plan.kinds:
        return {"kinds": [], "notes": []}
    share = len(rung_fractions(len(plan.configs), max(cfg.train.epochs for _, cfg in plan.configs)))
    notes = coverage_notes(plan.kinds, costs, share if plan.halving else 1)
    for note in notes:
        print(note, file=sys.stderr)
    return {"kinds": kind_counts(plan.kinds, set(costs)), "notes": notes}


def run_candidate(plan: SearchPlan, shared: SharedRows, cfg: Config) -> dict:
    """One candidate's cross-validation on the search's folds (its summary); the held-out loss, which no row of
    the report shows, is not computed."""
    return cross_validate(cfg, folds=plan.folds, seeds=plan.seeds, session=shared.session(cfg),
                          train_table=shared.table, dev_table=shared.dev_table, show_progress=False,
                          variants=plan.variants, ensemble=plan.ensemble, loss=False)


def best_f1(summary: dict) -> float:
    """A summary's mean macro-F1, under its best prediction-time variant (-1 without one)."""
    return max(part.get("macro_f1", {}).get("mean", -1) for part in summary.get("variants", [summary]))


def score_in_order(plan: SearchPlan, shared: SharedRows, budget: float,
                   show_progress: bool) -> tuple[list[tuple[dict, Config, dict, None]], dict[int, float]]:
    """Every candidate in full, in order, until ``budget`` seconds (0: no limit) are spent: ((settings, config,
    summary, None) per candidate run; the seconds each took, by index)."""
    out, start = [], time.perf_counter()
    bar = tqdm(total=len(plan.configs), desc="search", unit="candidate", disable=not show_progress)
    for settings, cfg in plan.configs:
        if budget and time.perf_counter() - start > budget:
            print(f"time budget of {plan.budget / 60:.0f} min reached: "
                  f"{len(plan.configs) - len(out)} candidates not run")
            break
        summary = run_candidate(plan, shared, cfg)
        out.append((settings, cfg, summary, None))
        bar.update(1)
        bar.set_postfix(best_f1=f"{max(best_f1(s) for *_, s, _ in out):.3f}")
    bar.close()
    return out, {i: summary["seconds"] for i, (_, _, summary, _) in enumerate(out)}


def trains_nothing(cfg: Config) -> bool:
    """The linear probe: a linear head over a template without virtual tokens (nor a deep prompt), fitted once,
    however many epochs."""
    return (cfg.task.head == "linear" and parse_template(cfg.task.template).n_virtual == 0
            and not cfg.encoder.deep_tokens)


def score_by_halving(plan: SearchPlan, shared: SharedRows, budget: float, show_progress: bool,
                     known: dict[int, dict] | None = None) -> tuple[list[tuple[dict, Config, dict, int]],
                                                                    dict[int, float]]:
    """Successive halving over the epochs: every candidate on the first rung, the best third on each next one, the
    last with each candidate's own ``train.epochs``; always the same folds. ((settings, config at the epochs it was
    last scored with, that summary, that rung) per candidate scored, in candidate order; the seconds of each one's
    first-rung score, by index). ``known``: probes' summaries scored beforehand, by index, not scored again."""
    known = known or {}
    fractions = rung_fractions(len(plan.configs), max(cfg.train.epochs for _, cfg in plan.configs))
    last: dict[int, tuple[dict, Config, dict, int]] = {}
    first_costs: dict[int, float] = {}
    bar = tqdm(desc=f"search ({len(fractions)} rungs)", unit="score", disable=not show_progress)

    def score(i: int, rung: int, fraction: float) -> float:
        settings, cfg = plan.configs[i]
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, epochs=rung_epochs(cfg.train.epochs, fraction)))
        if (i in last or i in known) and trains_nothing(cfg):  # a probe's figures do not depend on the epochs
            summary = last[i][2] if i in last else known[i]
        else:
            summary = run_candidate(plan, shared, cfg)
        last[i] = (settings, cfg, summary, rung)
        first_costs.setdefault(i, summary["seconds"])
        bar.update(1)
        bar.set_postfix(rung=rung + 1, epochs=cfg.train.epochs, f1=f"{best_f1(summary):.3f}")
        return best_f1(summary)

    reached = successive_halving(len(plan.configs), fractions, score, budget)
    bar.close()
    top = max((r.rung for r in reached.values()), default=0)
    if len(reached) < len(plan.configs) or top < len(fractions) - 1:
        print(f"time budget of {plan.budget / 60:.0f} min reached: {len(plan.configs) - len(reached)} candidates "
              f"not run; the last rung reached is {top + 1} of {len(fractions)}")
    return [last[i] for i in sorted(last)], first_costs


def candidate_rows(summary: dict, settings: dict, config: int, trains: str) -> list[dict]:
    """One result row per prediction variant of a candidate's cross-validation ``summary``; ``config`` indexes the
    candidate's config among those run, ``trains`` says what it fits (one of ``TRAINS``)."""
    rows = []
    for part in summary.get("variants", [summary]):
        extra = {f"task.{k}": v for k, v in part.get("settings", {}).items()}
        row = {"settings": settings | extra, "seconds": round(summary["seconds"], 1), "config": config,
               "trains": trains}
        for metric in ("accuracy", "macro_f1"):
            if metric in part:
                row[metric] = part[metric]
        if "macro_f1" in part:  # per fold, in fold order: every candidate has the same folds, so they pair up
            row["fold_macro_f1"] = [r["macro_f1"] for r in part["runs"]]
        rows.append(row)
    return rows


def pick_best(results: list[dict], prefer_simpler: float = PREFER_SIMPLER) -> tuple[int, list[str]]:
    """The chosen row: the best by mean macro-F1 among those that reached the last rung any row reached (rows of a
    search without halving, zero-shot prompts and linear probes have no rung and always compete), unless one that
    trains less (``trains``: ``TRAINS``, simplest first) trails it by at most ``prefer_simpler`` standard errors of
    their paired difference over the same folds: then the simplest such row, the folds not telling the two apart.
    Every row gets ``vs_best``, its paired gap to the chosen one. Returns (its index, a note where the rule chose).
    """
    top = max((r["rung"] for r in results if "rung" in r), default=None)
    eligible = [i for i, r in enumerate(results) if r.get("rung", top) == top]
    mean = lambda i: results[i].get("macro_f1", {}).get("mean", -1)  # noqa: E731
    best_i = max(eligible, key=mean)
    chosen, notes = best_i, []
    if prefer_simpler > 0:
        chosen, notes = simplest_within(results, eligible, best_i, prefer_simpler)
    for row in results:
        row["vs_best"] = paired_difference(results[chosen].get("fold_macro_f1", []), row.get("fold_macro_f1", []))
    return chosen, notes


def simplest_within(results: list[dict], eligible: list[int], best_i: int, within: float) -> tuple[int, list[str]]:
    """``pick_best``'s rule: the simplest row (then the higher mean) among ``eligible`` ones that train less than
    row ``best_i`` and trail it by at most ``within`` standard errors, paired; ``best_i`` where none does. With a
    note saying why, where it is not ``best_i``."""
    simplicity = lambda i: TRAINS.index(results[i].get("trains", "prompt"))  # noqa: E731
    best_folds = results[best_i].get("fold_macro_f1", [])
    close = []
    for i in eligible:
        gap = paired_difference(best_folds, results[i].get("fold_macro_f1", []))
        if simplicity(i) < simplicity(best_i) and gap and gap["mean"] <= within * gap["sem"] + 1e-12:
            close.append((simplicity(i), -results[i]["macro_f1"]["mean"], i, gap))
    if not close:
        return best_i, []
    _, _, chosen, gap = min(close)
    what = {"nothing": "the zero-shot prompt (nothing trained)", "classifier": "a probe (a classifier alone)"}
    return chosen, [f"chose #{chosen}, {what[results[chosen]['trains']]}, over the best mean, #{best_i}: it trails "
                    f"it by {gap['mean']:.3f} macro-F1 with a standard error of {gap['sem']:.3f} over the same "
                    f"{len(best_folds)} folds, within search.prefer_simpler = {within:g}, so the folds do not show "
                    f"that what #{best_i} trains helps"]


def winner_config(cfg: Config, settings: dict) -> Config:
    """The winning candidate's config with its prediction-time settings (``task.calibrate``, ``task.score``)."""
    predict_only = {k.split(".", 1)[1]: v for k, v in settings.items() if k in PREDICT_ONLY}
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **predict_only))


def retrain_winner(cfg: Config, shared: SharedRows, out_dir: Path, ensemble: int, show_progress: bool) -> list[Path]:
    """Retrain the winner on every labelled row, as each fold model was trained (the same dev rule: best epoch,
    early stopping), and write a normal checkpoint per member; returns the members' folders (``out_dir`` first)."""
    session = shared.session(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    # members use the training seeds cross_validate gave them: seed, seed + 100, ...
    member_seeds = [cfg.train.seed + 100 * m for m in range(ensemble)]
    member_dirs = [out_dir] + [out_dir / "members" / f"seed-{s}" for s in member_seeds[1:]]
    for member_seed, member_dir in zip(member_seeds, member_dirs):
        member_dir.mkdir(parents=True, exist_ok=True)
        fit(session, *fold_dev(cfg, shared.table, shared.dev_table, member_seed), member_dir,
            show_progress=show_progress, seed=member_seed)
    return member_dirs


def write_zero_shot(cfg: Config, shared: SharedRows, out_dir: Path) -> list[Path]:
    """Write the chosen zero-shot prompt as a normal checkpoint, nothing trained: no virtual tokens, the label words
    ranked (with prior offsets fitted on every labelled row where ``task.calibrate`` is ``prior``); returns
    ``[out_dir]``."""
    session = shared.session(cfg, allow_no_virtual=True)
    model = session.new_model().eval()
    if cfg.task.calibrate == "prior":
        fit_label_offsets(session, model, shared.table, cfg.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_inference(session, model, out_dir, extra={"training": {"step": 0, "zero_shot": True}})
    return [out_dir]


def write_report(out_dir: Path, report: dict) -> None:
    """``search.json``, ``search.md`` (the table and how to predict) and ``search.png``."""
    results, best_i = report["candidates"], report["best"]
    checkpoint.write_atomic(out_dir / "search.json", json.dumps(report, indent=2).encode())
    notes = "".join(f"\n{note}\n" for note in report.get("notes", []))
    checkpoint.write_atomic(out_dir / "search.md",
                            (render_table(results, best_i) + notes + usage(report, out_dir)).encode())
    plot_search(results, best_i, out_dir / "search.png")


def _short(settings: dict) -> str:
    return "; ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())


def usage(report: dict, out_dir: Path) -> str:
    """How the search chose (with halving) and how to predict with what it wrote (one checkpoint, or the ensemble it
    scored), and train its recipe again."""
    text = ""
    if report.get("halving"):
        text = ("\nSuccessive halving: every candidate on the first rung (a fraction of its epochs), the best third "
                "promoted to the next rung, the last with the full epochs, all on the same folds; the best is "
                "chosen among the candidates on the last rung reached, and each row shows where it stopped.\n")
    if report.get("recipe"):
        text += (f"\nThe chosen recipe, as a config: `{out_dir / report['recipe']}`; train it again with `ptune "
                 f"train {out_dir / report['recipe']} --out DIR`.\n")
    return text + predict_usage(report, out_dir)


def predict_usage(report: dict, out_dir: Path) -> str:
    """How to predict with what the search wrote: one checkpoint, or the ensemble it scored."""
    dirs = " ".join(str(out_dir / m) for m in report["members"])
    if "zero_shot" in report["candidates"][report["best"]]["settings"]:
        return (f"\nThe chosen recipe is the zero-shot manual prompt: nothing was trained, and `{out_dir}` holds it "
                f"with no virtual tokens. Predict with it: `ptune predict {dirs} --data ROWS.csv`\n")
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
    spread = mean_spread(diffs)
    return {**spread, "sem": spread["std"] / math.sqrt(len(diffs)),
            "ahead": sum(d > 1e-9 for d in diffs), "level": sum(abs(d) <= 1e-9 for d in diffs),
            "behind": sum(d < -1e-9 for d in diffs)}


def render_table(results: list[dict], best: int) -> str:
    """``search.md``'s table: each candidate's mean and spread, the best's paired lead over it, and a sentence on
    the runner-up."""
    lines = ["| # | candidate | accuracy (mean ± sd) | macro-F1 (mean ± sd) | best's lead in macro-F1 (paired: mean ± "
             "s.e.; folds ahead/level/behind) | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(results):
        acc, f1, lead = r.get("accuracy", {}), r.get("macro_f1", {}), r.get("vs_best")
        mark = " **best**" if i == best else ""
        lead_text = "" if i == best or not lead else (f"{lead['mean']:+.3f} ± {lead['sem']:.3f}; "
                                                      f"{lead['ahead']}/{lead['level']}/{lead['behind']}")
        rung = f"; rung {r['rung'] + 1}, {r['epochs']} epoch{'s' * (r['epochs'] != 1)}" if "rung" in r else ""
        lines.append(f"| {i}{mark} | {_short(r['settings'])}{rung} | "
                     f"{acc.get('mean', 0):.3f} ± {acc.get('std', 0):.3f} | "
                     f"{f1.get('mean', 0):.3f} ± {f1.get('std', 0):.3f} | {lead_text} | {r['seconds']} |")
    return "\n".join(lines) + "\n" + how_sure(results, best)


def how_sure(results: list[dict], best: int) -> str:
    """One sentence on the runner-up: a lead within about two standard errors is not a clear win; or, where the
    choice trails a candidate that trains more (``pick_best``), on that one."""
    others = [i for i in range(len(results)) if i != best and results[i].get("vs_best")]
    if not others:
        return ""
    second = min(others, key=lambda i: results[i]["vs_best"]["mean"])
    lead = results[second]["vs_best"]
    n = lead["ahead"] + lead["level"] + lead["behind"]
    if lead["mean"] < 0:  # chosen for training less (search.prefer_simpler), not for the best mean
        return (f"\nThe choice (#{best}) trails #{second} by {-lead['mean']:.3f} macro-F1 over the same {n} folds "
                f"(standard error {lead['sem']:.3f}; ahead on {lead['ahead']}, level on {lead['level']}, behind on "
                f"{lead['behind']}): it trains less, and the folds do not show that what #{second} trains helps "
                "(search.prefer_simpler).\n")
    verdict = ("a clear lead" if lead["mean"] > 2 * lead["sem"] else
               "within two standard errors: the folds do not separate them")
    return (f"\nThe best (#{best}) leads the runner-up (#{second}) by {lead['mean']:+.3f} macro-F1 over the same "
            f"{n} folds (standard error {lead['sem']:.3f}; ahead on {lead['ahead']}, level on {lead['level']}, "
            f"behind on {lead['behind']}): {verdict}.\n")
