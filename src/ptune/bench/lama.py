"""LAMA T-REx knowledge probing: a manual-prompt baseline and P-tuning per relation, scored as precision@1.

For each relation: the relation's LAMA template as a manual prompt (no training), and a P-tuned template of the
paper's shape (a, b, c) = ``[P*a] {sub_label} [P*b] [TARGET] [P*c]`` trained on the relation's train split with early
stopping on dev. Facts whose object is not in the chosen vocabulary (LAMA-29k / LAMA-34k, the ``bert-base-cased``
word lists, as the P-Tuning code filters them) are dropped from every split; objects that are not one token for the
model's tokenizer cannot be a P@1 hit and are skipped and counted (``skipped_multi_token``). P@1 is taken over the
vocabulary's single-token words. One base model is loaded and shared by every relation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..checkpoint import refuse_foreign
from ..config import Config, config_from_dict
from ..data.tables import Table
from ..errors import PtuneError
from ..files import write_atomic
from ..modeling.base import FrozenBase, load_base
from ..plotting import plot_lama
from ..session import open_session
from ..training.trainer import fit
from .loaders import (
    convert_template,
    filter_rows,
    lama_relation_files,
    list_relations,
    ptuning_template,
    read_lama,
    relation_templates,
    require_dir,
    sample_rows,
    vocab_words,
)
from .reporting import log_to_stderr, took, write_results

VOCABS = {"29k": "29k-vocab.json", "34k": "34k-vocab.json"}
SPLITS = ("train", "dev", "test")


def base_config(model: str, *, dtype: str = "auto", device: str = "auto", lr: float = 1e-2, batch_size: int = 16,
                epochs: int = 3, eval_every: int = 0, patience: int = 3, seed: int = 42, encoder: str = "lstm",
                hidden_size: int = 128, max_length: int = 64) -> Config:
    """The probing recipe every relation starts from (its template is replaced per relation), P@1 on dev picking
    the best step."""
    return config_from_dict({
        "model": {"name_or_path": model, "dtype": dtype, "device": device},
        "task": {"type": "probing", "template": "[P*3] {sub_label} [P*3] [TARGET]", "label_column": "obj_label"},
        "encoder": {"type": encoder, "hidden_size": hidden_size},
        "train": {"lr": lr, "batch_size": batch_size, "epochs": epochs, "eval_every": eval_every,
                  "patience": patience, "seed": seed, "max_length": max_length, "metric": "p@1",
                  "eval_batch_size": 64},
    })


def with_task(cfg: Config, **changes) -> Config:
    """A copy of ``cfg`` with ``task`` fields changed."""
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **changes))


def p_at_1(session, model, table) -> dict:
    """P@1 of ``model`` on ``table`` (rows whose object is not one token are counted in skipped_multi_token)."""
    preds = session.predict(model, table.rows)
    return session.task.metrics(table.rows, preds)


def run_lama(data: str | Path, out: str | Path, *, relations: list[str] | None = None, vocab: str = "29k",
             shape: tuple[int, int, int] | None = None, max_train: int | None = None, max_dev: int | None = 200,
             max_test: int | None = None, cfg: Config | None = None, base=None, show_progress: bool = True,
             log=None) -> dict:
    """Run the benchmark and write ``out/results.json``, ``out/results.md`` and ``out/lama.png`` (rewritten after
    every scored relation, so a stopped run keeps its part).

    Args:
        data (`str` or `Path`): the LAMA folder (``fact-retrieval/``, ``relations.jsonl``, the vocabularies).
        out (`str` or `Path`): where the reports and each relation's training run (``runs/REL``) go.
        relations (`list[str]`, *optional*): relation ids, e.g. ``["P108", "P463"]``; all in the folder if None.
        vocab (`str`): ``"29k"`` or ``"34k"``, the word list facts and P@1 are restricted to.
        shape (`tuple[int, int, int]`, *optional*): (a, b, c) of the P-tuning template; (3, 3, 0) for a causal
            LM, (3, 3, 3) for a masked LM if None.
        max_train, max_dev, max_test (`int`, *optional*): caps on each split's facts (seeded samples).
        cfg (`Config`, *optional*): the probing recipe (``base_config``); the embedded model's if None.
        base (`FrozenBase`, *optional*): an already loaded base model; loaded from ``cfg.model`` if None.
        show_progress (`bool`): progress bars over relations and training.
        log (`callable`, *optional*): takes one progress line; stderr if None.

    Returns:
        `dict`: the report written to ``results.json``: the settings, ``relations`` (per relation: manual and
        P-tuning P@1, counts, training steps) and ``mean`` (``macro_means``).

    Example:
        >>> report = run_lama("../shared/data/lama", "runs/lama", relations=["P108"])  # doctest: +SKIP
        >>> report["mean"]["ptuning_p1"]  # doctest: +SKIP
    """
    log = log or log_to_stderr
    lama_dir = require_dir(data, "LAMA")
    out = Path(out)
    refuse_foreign(out)  # never a model's or adapter's folder
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or base_config("embedded:SmolLM2-135M-Instruct")
    words, vocab_file = write_vocab(lama_dir, vocab, out)
    templates = relation_templates(lama_dir)
    relations = checked_relations(lama_dir, relations)
    t_start = time.perf_counter()
    if base is None:
        log(f"loading {cfg.model.name_or_path} ...")
        base = load_base(cfg.model)
    shape = shape or ((3, 3, 0) if base.kind == "causal" else (3, 3, 3))
    run = LamaRun(with_task(cfg, vocab_file=str(vocab_file)), base, lama_dir, out, vocab, set(words), templates,
                  shape, {"train": max_train, "dev": max_dev, "test": max_test}, show_progress, log, t_start)
    bar = tqdm(relations, desc="lama", unit="rel", disable=not show_progress)
    for rel in bar:
        bar.set_postfix_str(rel)
        if run.relation(rel):
            run.write(False)
    return run.write(True)


def write_vocab(lama_dir: Path, vocab: str, out: Path) -> tuple[list[str], Path]:
    """The chosen vocabulary's words, also written to ``out/vocab-NAME.json`` as ptune's ``task.vocab_file`` takes
    it: (the words, that file)."""
    if vocab not in VOCABS:
        raise PtuneError(f"--vocab must be one of {', '.join(VOCABS)}, got {vocab!r}")
    words = vocab_words(lama_dir / VOCABS[vocab])
    vocab_file = out / f"vocab-{vocab}.json"  # the bert-base-cased list
    write_atomic(vocab_file, json.dumps(words).encode())
    return words, vocab_file


def checked_relations(lama_dir: Path, relations: list[str] | None) -> list[str]:
    """``relations``, each checked to be in the folder; every relation there if None."""
    available = list_relations(lama_dir)
    relations = relations or available
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise PtuneError(f"unknown relation(s) {', '.join(unknown)}; {lama_dir} has {', '.join(available)}")
    return relations


@dataclass
class LamaRun:
    """One benchmark run: what every relation shares, and the results so far (``results``, by relation)."""
    cfg: Config  # the probing recipe, with task.vocab_file set
    base: FrozenBase
    lama_dir: Path
    out: Path
    vocab: str
    words: set[str]
    templates: dict[str, dict]  # relation -> its LAMA record (``template``)
    shape: tuple[int, int, int]
    caps: dict[str, int | None]  # split -> most facts kept
    show_progress: bool
    log: Callable[[str], None]
    t_start: float
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def ptuning_template(self) -> str:
        """The P-tuning template of this run's shape, for the base model's kind."""
        return ptuning_template(self.shape, self.base.kind)

    def relation(self, rel: str) -> bool:
        """Score one relation into ``results[rel]``: manual prompt, then P-tuning; False if it is skipped."""
        t0 = time.perf_counter()
        files = lama_relation_files(self.lama_dir, rel)
        entry: dict = {"test_source": files["test_source"]}
        self.results[rel] = entry
        missing = [s for s in SPLITS if files[s] is None]
        if missing:
            entry.update(skipped=f"no {'/'.join(missing)} file (see lama/PROVENANCE.md)", manual_p1=None,
                         ptuning_p1=None, n_test=0)
            self.log(f"{rel}: skipped, {entry['skipped']}")
            return False
        splits = self.splits(files, entry)
        if splits is None:
            entry.update(skipped="a split is empty after the vocabulary filter", manual_p1=None, ptuning_p1=None,
                         n_test=0)
            return False
        train, dev, test = splits
        self.manual(rel, test, entry)
        m, prog = self.ptuning(rel, train, dev, test)
        entry.update(ptuning_template=self.ptuning_template, ptuning_p1=m["p@1"], n_test=m["n"],
                     skipped_multi_token=m["skipped_multi_token"], n_train=len(train), n_dev=len(dev),
                     steps=prog.step, best_dev_p1=prog.best, best_step=prog.best_step,
                     seconds=round(time.perf_counter() - t0, 1))
        shown = "n/a" if entry["manual_p1"] is None else f"{entry['manual_p1']:.3f}"
        self.log(f"{rel}: manual P@1 {shown}, P-tuning P@1 {entry['ptuning_p1']:.3f} "
                 f"(n_test {entry['n_test']}, {entry['skipped_multi_token']} multi-token skipped, "
                 f"{prog.step} steps, {entry['seconds']:.0f} s)")
        return True

    def splits(self, files: dict, entry: dict) -> list[Table] | None:
        """[train, dev, test]: facts whose object is in the vocabulary, sampled down to the caps; None if a split
        is left empty. Counts the test facts dropped as outside the vocabulary in ``entry``."""
        tables = {s: read_lama(files[s]) for s in SPLITS}
        raw_test = len(tables["test"])
        tables = {s: filter_rows(t, lambda r: r["obj_label"] in self.words, f" ({self.vocab} vocab)")
                  for s, t in tables.items()}
        entry["n_test_outside_vocab"] = raw_test - len(tables["test"])
        sampled = [sample_rows(tables[s], self.caps[s], self.cfg.train.seed, "sample") for s in SPLITS]
        return sampled if all(len(t) for t in sampled) else None

    def manual(self, rel: str, test: Table, entry: dict) -> None:
        """The relation's own template as a manual prompt, nothing trained: its P@1 on ``test`` into ``entry``."""
        raw = self.templates.get(rel, {}).get("template")
        manual, note = convert_template(raw, self.base.kind) if raw else (None, "no template in relations.jsonl")
        entry.update(lama_template=raw, manual_template=manual)
        if note:
            entry["manual_note"] = note
        entry["manual_p1"] = None
        if manual is not None:
            session = open_session(with_task(self.cfg, template=manual), base=self.base, allow_no_virtual=True)
            entry["manual_p1"] = p_at_1(session, session.new_model(), test)["p@1"]

    def ptuning(self, rel: str, train: Table, dev: Table, test: Table):
        """Train on ``train``, keep the best on ``dev`` (early stopping), score on ``test``: (metrics, progress)."""
        session = open_session(with_task(self.cfg, template=self.ptuning_template), base=self.base)
        run_dir = self.out / "runs" / rel
        shutil.rmtree(run_dir, ignore_errors=True)
        model, prog = fit(session, train, dev, run_dir, show_progress=self.show_progress)
        return p_at_1(session, model, test), prog

    def write(self, done: bool) -> dict:
        """results.json / results.md / lama.png for the relations so far; returns the report."""
        cfg = self.cfg
        report = {
            "benchmark": "LAMA T-REx fact retrieval (P@1)", "model": cfg.model.name_or_path, "kind": self.base.kind,
            "vocab": self.vocab, "shape": list(self.shape), "ptuning_template": self.ptuning_template,
            "encoder": dataclasses.asdict(cfg.encoder), "train": dataclasses.asdict(cfg.train),
            "max_train": self.caps["train"], "max_dev": self.caps["dev"], "max_test": self.caps["test"],
            "complete": done, "relations": self.results, "mean": macro_means(self.results),
            "seconds": round(time.perf_counter() - self.t_start, 1),
        }
        write_results(self.out, report, render_markdown(report))
        plot_lama(report, self.out / "lama.png")
        return report


def macro_means(results: dict[str, dict]) -> dict:
    """Macro means over relations: P-tuning over all scored relations, and both methods over the relations where
    both were scored (the paired comparison); the same restricted to relations with the official test file."""
    scored = {r: e for r, e in results.items() if e.get("ptuning_p1") is not None}
    paired = {r: e for r, e in scored.items() if e.get("manual_p1") is not None}

    def mean(entries, key):
        values = [e[key] for e in entries.values()]
        return statistics.fmean(values) if values else None

    official = {r: e for r, e in paired.items() if e.get("test_source") == "original"}
    return {"manual_p1": mean(paired, "manual_p1"), "ptuning_p1": mean(paired, "ptuning_p1"),
            "n_relations": len(paired), "ptuning_p1_all": mean(scored, "ptuning_p1"), "n_relations_all": len(scored),
            "official_test_only": {"manual_p1": mean(official, "manual_p1"),
                                   "ptuning_p1": mean(official, "ptuning_p1"), "n_relations": len(official)}}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render_markdown(report: dict) -> str:
    """``results.md``: per relation, both methods' P@1, then the macro means."""
    lines = [f"# LAMA ({report['vocab']} vocabulary) P@1, {report['model']} ({report['kind']} LM)", "",
             f"P-tuning template: `{report['ptuning_template']}`; encoder {report['encoder']['type']}.", "",
             "| relation | manual template | manual P@1 | P-tuning P@1 | n_test | multi-token skipped | test file |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rel, e in report["relations"].items():
        if e.get("skipped"):
            lines.append(f"| {rel} | skipped: {e['skipped']} | | | 0 | | {e['test_source']} |")
            continue
        tmpl = f"`{e['manual_template']}`" if e.get("manual_template") else "(none)"
        if e.get("manual_note"):
            tmpl += f" ({e['manual_note']})"
        lines.append(f"| {rel} | {tmpl} | {_fmt(e['manual_p1'])} | {_fmt(e['ptuning_p1'])} | {e['n_test']} | "
                     f"{e.get('skipped_multi_token', '')} | {e['test_source']} |")
    m = report["mean"]
    lines += [f"| **macro mean** ({m['n_relations']} relations) | | **{_fmt(m['manual_p1'])}** | "
              f"**{_fmt(m['ptuning_p1'])}** | | | |", ""]
    o = m["official_test_only"]
    lines.append(f"Official-test relations only ({o['n_relations']}): manual {_fmt(o['manual_p1'])}, "
                 f"P-tuning {_fmt(o['ptuning_p1'])}. " + took(report))
    return "\n".join(lines) + "\n"
