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
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..checkpoint import write_atomic
from ..config import Config, config_from_dict
from ..errors import PtuneError
from ..modeling.base import load_base
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

VOCABS = {"29k": "29k-vocab.json", "34k": "34k-vocab.json"}


def base_config(model: str, *, dtype: str = "auto", device: str = "auto", lr: float = 1e-2, batch_size: int = 16,
                epochs: int = 3, eval_every: int = 0, patience: int = 3, seed: int = 42, encoder: str = "lstm",
                hidden_size: int = 128, max_length: int = 64) -> Config:
    return config_from_dict({
        "model": {"name_or_path": model, "dtype": dtype, "device": device},
        "task": {"type": "probing", "template": "[P*3] {sub_label} [P*3] [TARGET]", "label_column": "obj_label"},
        "encoder": {"type": encoder, "hidden_size": hidden_size},
        "train": {"lr": lr, "batch_size": batch_size, "epochs": epochs, "eval_every": eval_every,
                  "patience": patience, "seed": seed, "max_length": max_length, "metric": "p@1",
                  "eval_batch_size": 64},
    })


def with_task(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **changes))


def p_at_1(session, model, table) -> dict:
    """P@1 of ``model`` on ``table`` (rows whose object is not one token are counted in skipped_multi_token)."""
    preds = session.predict(model, table.rows)
    return session.task.metrics(table.rows, preds)


def run_lama(data: str | Path, out: str | Path, *, relations: list[str] | None = None, vocab: str = "29k",
             shape: tuple[int, int, int] | None = None, max_train: int | None = None, max_dev: int | None = 200,
             max_test: int | None = None, cfg: Config | None = None, base=None, show_progress: bool = True,
             log=None) -> dict:
    """Run the benchmark and write ``out/results.json``, ``out/results.md`` and ``out/lama.png``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    lama_dir = require_dir(data, "LAMA")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or base_config("embedded:SmolLM2-135M-Instruct")
    if vocab not in VOCABS:
        raise PtuneError(f"--vocab must be one of {', '.join(VOCABS)}, got {vocab!r}")
    words = vocab_words(lama_dir / VOCABS[vocab])
    word_set = set(words)
    vocab_file = out / f"vocab-{vocab}.json"  # the bert-base-cased list, as ptune's task.vocab_file takes it
    write_atomic(vocab_file, json.dumps(words).encode())
    templates = relation_templates(lama_dir)
    available = list_relations(lama_dir)
    relations = relations or available
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise PtuneError(f"unknown relation(s) {', '.join(unknown)}; {lama_dir} has {', '.join(available)}")

    t_start = time.perf_counter()
    if base is None:

        log(f"loading {cfg.model.name_or_path} ...")
        base = load_base(cfg.model)
    kind = base.kind
    shape = shape or ((3, 3, 0) if kind == "causal" else (3, 3, 3))
    p_template = ptuning_template(shape, kind)
    cfg = with_task(cfg, vocab_file=str(vocab_file))
    results: dict[str, dict] = {}

    def write(done: bool) -> dict:
        """results.json / results.md / lama.png, rewritten after every relation (a stopped run keeps its part)."""
        report = {
            "benchmark": "LAMA T-REx fact retrieval (P@1)", "model": cfg.model.name_or_path, "kind": kind,
            "vocab": vocab, "shape": list(shape), "ptuning_template": p_template,
            "encoder": dataclasses.asdict(cfg.encoder), "train": dataclasses.asdict(cfg.train),
            "max_train": max_train, "max_dev": max_dev, "max_test": max_test, "complete": done,
            "relations": results, "mean": macro_means(results), "seconds": round(time.perf_counter() - t_start, 1),
        }
        write_atomic(out / "results.json", (json.dumps(report, indent=2) + "\n").encode())
        write_atomic(out / "results.md", render_markdown(report).encode())
        plot_lama(report, out / "lama.png")
        return report

    bar = tqdm(relations, desc="lama", unit="rel", disable=not show_progress)
    for rel in bar:
        bar.set_postfix_str(rel)
        t0 = time.perf_counter()
        files = lama_relation_files(lama_dir, rel)
        entry: dict = {"test_source": files["test_source"]}
        results[rel] = entry
        missing = [s for s in ("train", "dev", "test") if files[s] is None]
        if missing:
            entry.update(skipped=f"no {'/'.join(missing)} file (see lama/PROVENANCE.md)", manual_p1=None,
                         ptuning_p1=None, n_test=0)
            log(f"{rel}: skipped, {entry['skipped']}")
            continue
        in_vocab = lambda r: r["obj_label"] in word_set  # noqa: E731
        tables = {s: read_lama(files[s]) for s in ("train", "dev", "test")}
        raw_test = len(tables["test"])
        tables = {s: filter_rows(t, in_vocab, f" ({vocab} vocab)") for s, t in tables.items()}
        entry["n_test_outside_vocab"] = raw_test - len(tables["test"])
        train = sample_rows(tables["train"], max_train, cfg.train.seed, "sample")
        dev = sample_rows(tables["dev"], max_dev, cfg.train.seed, "sample")
        test = sample_rows(tables["test"], max_test, cfg.train.seed, "sample")
        if not len(train) or not len(dev) or not len(test):
            entry.update(skipped="a split is empty after the vocabulary filter", manual_p1=None, ptuning_p1=None,
                         n_test=0)
            continue

        # manual prompt: the relation's own template, nothing trained
        raw = templates.get(rel, {}).get("template")
        manual, note = convert_template(raw, kind) if raw else (None, "no template in relations.jsonl")
        entry.update(lama_template=raw, manual_template=manual)
        if note:
            entry["manual_note"] = note
        if manual is not None:
            session = open_session(with_task(cfg, template=manual), base=base, allow_no_virtual=True)
            m = p_at_1(session, session.new_model(), test)
            entry["manual_p1"] = m["p@1"]
        else:
            entry["manual_p1"] = None

        # P-tuning: train on train, keep the best on dev (early stopping), score on test
        session = open_session(with_task(cfg, template=p_template), base=base)
        run_dir = out / "runs" / rel
        shutil.rmtree(run_dir, ignore_errors=True)
        model, prog = fit(session, train, dev, run_dir, show_progress=show_progress)
        m = p_at_1(session, model, test)
        entry.update(ptuning_template=p_template, ptuning_p1=m["p@1"], n_test=m["n"],
                     skipped_multi_token=m["skipped_multi_token"], n_train=len(train), n_dev=len(dev),
                     steps=prog.step, best_dev_p1=prog.best, best_step=prog.best_step,
                     seconds=round(time.perf_counter() - t0, 1))
        shown = "n/a" if entry["manual_p1"] is None else f"{entry['manual_p1']:.3f}"
        log(f"{rel}: manual P@1 {shown}, P-tuning P@1 {entry['ptuning_p1']:.3f} "
            f"(n_test {entry['n_test']}, {entry['skipped_multi_token']} multi-token skipped, "
            f"{prog.step} steps, {entry['seconds']:.0f} s)")

        write(False)
    report = write(True)
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
                 f"P-tuning {_fmt(o['ptuning_p1'])}. Took {report['seconds']:.0f} s"
                 + ("." if report.get("complete", True) else " so far (partial: the run did not finish)."))
    return "\n".join(lines) + "\n"
