"""Few-shot classification: a zero-shot manual prompt, P-tuning with the LSTM and the MLP encoder, and plain prompt
tuning (the ``embedding`` encoder), each trained with the same budget (epochs, batch size, learning rate) over
several seeds, reported as mean and spread.

Per task: SST-2 trains on k rows sampled from ``train.tsv`` (per seed) and is scored on ``dev.tsv``; FewGLUE RTE, CB,
BoolQ, WiC train on their fixed 32-row ``train.jsonl`` and are scored on SuperGLUE ``val.jsonl``; AG News trains on k
rows sampled from the ALPS ``dev.tsv`` (the train file is not in the shared data) and is scored on ``test.tsv``; TREC
trains on k rows of ``train_5500.label`` and is scored on ``TREC_10.label``; RAFT tasks (hidden test labels) are
estimated by cross-validation over their 50 labelled rows. ``max_eval`` caps the scored rows with one fixed random
sample shared by every method and seed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..checkpoint import write_atomic
from ..config import Config, config_from_dict
from ..data.tables import Table
from ..errors import PtuneError
from ..evaluation.cv import cross_validate
from ..modeling.base import load_base
from ..session import open_session
from ..training.trainer import fit
from .loaders import read_agnews, read_fewglue, read_raft, read_sst2, read_trec, require_dir, sample_rows

METHODS = ("zero_shot", "lstm", "mlp", "embedding")


@dataclass
class TaskSpec:
    """One template + verbalizer per task. ``ptuning`` has virtual tokens; ``manual`` is the same prompt without
    them (the zero-shot baseline). Both put the target last, so they work for causal and masked LMs alike."""
    name: str
    load: Callable[[Path], tuple[Table, Table | None]]  # data folder -> (train pool, eval set or None for CV)
    ptuning: str
    manual: str
    verbalizer: dict
    label_column: str = "label"
    sampled: bool = False  # k rows are drawn from the train pool per seed
    eval_name: str = ""
    max_length: int = 256


def _fewglue(task: str):
    return lambda d: (read_fewglue(d / "superglue_fewglue" / task / "train.jsonl"),
                      read_fewglue(d / "superglue_fewglue" / task / "val.jsonl"))


YES_NO_MAYBE = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}

SPECS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", lambda d: (read_sst2(d / "sst2" / "train.tsv"), read_sst2(d / "sst2" / "dev.tsv")),
                     "{sentence} [P*4] It was [TARGET]", "{sentence} It was [TARGET]",
                     {"1": "great", "0": "terrible"}, sampled=True, eval_name="SST-2 dev (872)", max_length=128),
    "rte": TaskSpec("rte", _fewglue("RTE"), "{premise} [P*2] Question : {hypothesis} ? [P*2] Answer : [TARGET]",
                    "{premise} Question : {hypothesis} ? Answer : [TARGET]",
                    {"entailment": "yes", "not_entailment": "no"}, eval_name="RTE val (277)"),
    "cb": TaskSpec("cb", _fewglue("CB"), "{premise} [P*2] Question : {hypothesis} ? [P*2] Answer : [TARGET]",
                   "{premise} Question : {hypothesis} ? Answer : [TARGET]", YES_NO_MAYBE, eval_name="CB val (56)"),
    "boolq": TaskSpec("boolq", _fewglue("BoolQ"), "{passage} [P*2] Question : {question} ? [P*2] Answer : [TARGET]",
                      "{passage} Question : {question} ? Answer : [TARGET]", {"true": "yes", "false": "no"},
                      eval_name="BoolQ val (3,270)"),
    "wic": TaskSpec("wic", _fewglue("WiC"),
                    "{sentence1} {sentence2} [P*2] Is the word \" {word} \" used the same way in both ? [P*2] "
                    "Answer : [TARGET]",
                    "{sentence1} {sentence2} Is the word \" {word} \" used the same way in both ? Answer : [TARGET]",
                    {"true": "yes", "false": "no"}, eval_name="WiC val (638)"),
    "agnews": TaskSpec("agnews", lambda d: (read_agnews(d / "agnews" / "dev.tsv"),
                                            read_agnews(d / "agnews" / "test.tsv")),
                       "{text} [P*3] Topic : [TARGET]", "{text} Topic : [TARGET]",
                       {"World": "world", "Sports": "sports", "Business": "business", "Sci/Tech": "technology"},
                       sampled=True, eval_name="AG News test (7,600)", max_length=128),
    "trec": TaskSpec("trec", lambda d: (read_trec(d / "trec" / "train_5500.label"),
                                        read_trec(d / "trec" / "TREC_10.label")),
                     "{question} [P*3] The answer is a [TARGET]", "{question} The answer is a [TARGET]",
                     {"ABBR": "abbreviation", "DESC": "description", "ENTY": "thing", "HUM": "person",
                      "LOC": "place", "NUM": "number"}, sampled=True, eval_name="TREC test (500)", max_length=64),
}


def raft_spec(task: str, data_dir: Path) -> TaskSpec:
    """A RAFT task: every data column except ID goes into the prompt; the labels themselves are the words."""
    folder = data_dir / "raft" / task
    if not folder.is_dir():
        raise PtuneError(f"{folder}: RAFT task folder not found")
    table, info = read_raft(folder)
    label_column = next(iter(info.get("label_columns", {"Label": None})))
    fields = [c for c in info.get("data_columns", table.columns) if c not in ("ID", label_column)]
    text = " ".join(f"{c} : {{{c}}}" for c in fields)
    labels = sorted(set(table.column(label_column)))
    return TaskSpec(f"raft:{task}", lambda d: (table, None), f"[P*4] {text} [P*2] {label_column} : [TARGET]",
                    f"{text} {label_column} : [TARGET]", {l: l for l in labels}, label_column=label_column,
                    eval_name="cross-validation over the 50 labelled rows", max_length=192)


def task_config(spec: TaskSpec, model: str, *, template: str, encoder: str, dtype: str, device: str, lr: float,
                batch_size: int, epochs: int, seed: int) -> Config:
    return config_from_dict({
        "model": {"name_or_path": model, "dtype": dtype, "device": device},
        "task": {"type": "classification", "template": template, "label_column": spec.label_column,
                 "verbalizer": spec.verbalizer},
        "encoder": {"type": encoder, "hidden_size": 128},
        "train": {"lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "max_length": spec.max_length,
                  "eval_batch_size": 16},
    })


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def run_fewshot(data: str | Path, out: str | Path, *, tasks: list[str] | None = None, seeds: list[int] = (1, 2),
                k: int = 32, max_eval: int | None = 200, methods: list[str] | None = None, folds: int = 4,
                model: str = "embedded:SmolLM2-135M-Instruct", dtype: str = "auto", device: str = "auto",
                lr: float = 1e-2, batch_size: int = 8, epochs: int = 10, data_seed: int = 42, base=None,
                show_progress: bool = True, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    data_dir = require_dir(data, "shared")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = methods or list(METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PtuneError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    tasks = tasks or ["sst2", "rte"]
    specs = []
    for name in tasks:
        if name.startswith("raft:"):
            specs.append(raft_spec(name[5:], data_dir))
        elif name in SPECS:
            specs.append(SPECS[name])
        else:
            raise PtuneError(f"unknown task {name!r}; choose from {', '.join(SPECS)}, raft:<task>")
    t_start = time.perf_counter()
    budget = {"lr": lr, "batch_size": batch_size, "epochs": epochs}
    if base is None:

        log(f"loading {model} ...")
        base = load_base(task_config(specs[0], model, template=specs[0].ptuning, encoder="lstm", dtype=dtype,
                                     device=device, lr=lr, batch_size=batch_size, epochs=epochs, seed=1).model)
    results: dict[str, dict] = {}

    def write(done: bool) -> dict:
        """results.json / results.md, rewritten after every method (a stopped run keeps its part)."""
        summary = {name: {m: (e[m]["accuracy"] if isinstance(e[m]["accuracy"], float) else
                              e[m]["accuracy"]["mean"]) for m in methods if m in e} for name, e in results.items()}
        report = {"benchmark": "few-shot classification", "model": model, "kind": base.kind, "seeds": list(seeds),
                  "k": k, "max_eval": max_eval, "budget": budget, "methods": methods, "complete": done,
                  "tasks": results, "summary": summary, "seconds": round(time.perf_counter() - t_start, 1)}
        write_atomic(out / "results.json", (json.dumps(report, indent=2) + "\n").encode())
        write_atomic(out / "results.md", render_markdown(report).encode())
        return report

    for spec in specs:
        t0 = time.perf_counter()
        pool, eval_table = spec.load(data_dir)
        entry: dict = {"ptuning_template": spec.ptuning, "manual_template": spec.manual, "verbalizer": spec.verbalizer,
                       "eval_set": spec.eval_name}
        results[spec.name] = entry
        make = lambda template, encoder, seed: task_config(  # noqa: E731
            spec, model, template=template, encoder=encoder, dtype=dtype, device=device, lr=lr,
            batch_size=batch_size, epochs=epochs, seed=seed)
        if eval_table is not None:
            eval_table = sample_rows(eval_table, max_eval, data_seed, "sample")
            entry["n_eval"] = len(eval_table)
            entry["n_train"] = k if spec.sampled else len(pool)
        else:
            entry.update(n_labelled=len(pool), folds=folds)
        for method in methods:
            tm = time.perf_counter()
            if method == "zero_shot":
                session = open_session(make(spec.manual, "lstm", data_seed), base=base, allow_no_virtual=True)
                rows = eval_table.rows if eval_table is not None else pool.rows
                preds = session.predict(session.new_model(), rows)
                m = session.task.metrics(rows, preds)
                entry[method] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
            elif eval_table is None:  # RAFT: k-fold cross-validation over the labelled rows
                cfg = make(spec.ptuning, method, seeds[0])
                session = open_session(cfg, base=base)
                cv = cross_validate(cfg, folds=folds, seeds=list(seeds), session=session, train_table=pool,
                                    show_progress=False)
                entry[method] = {"accuracy": {**cv["accuracy"], "runs": [r["accuracy"] for r in cv["runs"]]},
                                 "macro_f1": {**cv["macro_f1"], "runs": [r["macro_f1"] for r in cv["runs"]]}}
            else:
                accs, f1s = [], []
                for seed in seeds:
                    train = sample_rows(pool, k, seed, f"{k}-shot seed {seed}") if spec.sampled else pool
                    session = open_session(make(spec.ptuning, method, seed), base=base)
                    model_, _ = fit(session, train, None, None, show_progress=show_progress, seed=seed)
                    preds = session.predict(model_, eval_table.rows)
                    m = session.task.metrics(eval_table.rows, preds)
                    accs.append(m["accuracy"])
                    f1s.append(m["macro_f1"])
                    log(f"{spec.name} {method} seed {seed}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
                entry[method] = {"accuracy": _stats(accs), "macro_f1": _stats(f1s)}
            entry[method]["seconds"] = round(time.perf_counter() - tm, 1)
            acc = entry[method]["accuracy"]
            log(f"{spec.name} {method}: accuracy "
                f"{acc if isinstance(acc, float) else acc['mean']:.3f} ({entry[method]['seconds']:.0f} s)")
            write(False)
        entry["seconds"] = round(time.perf_counter() - t0, 1)

    report = write(True)
    return report


def render_markdown(report: dict) -> str:
    methods = report["methods"]
    names = {"zero_shot": "zero-shot manual", "lstm": "P-tuning (LSTM)", "mlp": "P-tuning (MLP)",
             "embedding": "prompt tuning (embedding)"}
    lines = [f"# Few-shot classification, {report['model']} ({report['kind']} LM)", "",
             f"Accuracy, mean ± std over seeds {report['seeds']} (zero-shot: one deterministic run). Budget for every "
             f"trained method: {report['budget']}. k = {report['k']} for sampled tasks; evaluation rows capped at "
             f"{report['max_eval']}.", "",
             "| task | eval set (rows scored) | " + " | ".join(names[m] for m in methods) + " |",
             "| --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for name, e in report["tasks"].items():
        cells = []
        for m in methods:
            if m not in e:
                cells.append("not run")
                continue
            acc = e[m]["accuracy"]
            cells.append(f"{acc:.3f}" if isinstance(acc, float) else f"{acc['mean']:.3f} ± {acc['std']:.3f}")
        n = e.get("n_eval", e.get("n_labelled"))
        lines.append(f"| {name} | {e['eval_set']} ({n}) | " + " | ".join(cells) + " |")
    lines += ["", "Templates:", ""]
    for name, e in report["tasks"].items():
        lines.append(f"- {name}: `{e['ptuning_template']}` (manual: `{e['manual_template']}`), "
                     f"verbalizer {json.dumps(e['verbalizer'])}")
    lines += ["", f"Took {report['seconds']:.0f} s" + ("." if report.get("complete", True) else
                                                        " so far (partial: the run did not finish).")]
    return "\n".join(lines) + "\n"
