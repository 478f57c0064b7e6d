"""Few-shot classification: the majority class, the zero-shot manual prompts, two baselines fitted on the k rows
(``embeddings``: a generic sentence encoder's embeddings with logistic regression, as ``ptune baselines`` fits it;
``probe``: the linear probe, ``task.head: linear`` at the middle layer with mean pooling over the manual prompt, no
virtual tokens), and the recipe that cross-validation on the k training rows chooses (``chosen``: a manual prompt as
it stands, a linear probe, P-tuning started at the manual prompt's words, or a deep prompt started from its label
words, see ``fewshot_choice``), over several seeds, reported as mean and spread with each seed's choice; the three
see the same k rows per seed. Seven more methods train on those rows with one fixed recipe each (``fewshot_methods``),
from the manual prompt the k rows prefer: ``residual``, P-tuning started at its words; ``deep``, a deep prompt over
it (causal LMs); ``deep_text``, the same started as its label words' keys and values; ``unlabeled``, ``residual``
distilled from teachers that label the train pool's other rows, their labels removed (sampled tasks only); and
``deep_unlabeled``, ``deep_text`` distilled the same way, with ``deep_pvp`` taught by every manual prompt in its
own words and ``deep_pet`` by three seeds of each. The older
fixed-budget methods (P-tuning with the LSTM and the MLP encoder, plain prompt tuning with ``embedding``, each with
the same epochs, batch size and learning rate) stay available by name, to compare with and to rerun older reports.

Per task: SST-2 trains on k rows sampled from ``train.tsv`` (per seed; labels balanced for ``chosen``, ``probe``
and ``embeddings``) and is scored on ``dev.tsv``; FewGLUE RTE, CB, BoolQ, WiC train on their fixed 32-row
``train.jsonl`` and are scored on SuperGLUE ``val.jsonl``; AG News trains on k rows sampled from the ALPS
``dev.tsv`` (the train file is not in the shared data) and is scored on ``test.tsv``; TREC trains on k rows of
``train_5500.label`` and is scored on ``TREC_10.label``;
RAFT tasks (hidden test labels) are estimated by cross-validation over their 50 labelled rows (the fixed methods
and the zero-shot prompts only; ``majority``, ``embeddings``, ``probe`` and ``chosen`` are not run there).
``max_eval`` (1,000) caps the scored rows with one fixed random sample shared by every method and seed; smaller
splits are scored whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..checkpoint import refuse_foreign
from ..config import Config, config_from_dict
from ..data.tables import Table, read_table
from ..errors import PtuneError
from ..evaluation.baselines import fit_probe
from ..evaluation.cv import cross_validate
from ..evaluation.embedding_baseline import (ENCODER_NAME, MISSING, SentenceEncoder, encoder_folder, fit_and_label,
                                              row_texts)
from ..evaluation.search import PREFER_SIMPLER
from ..evaluation.summary import mean_spread
from ..modeling.base import FrozenBase, load_base
from ..session import open_session
from ..tasks.pooled_cache import PooledStateCache
from ..template import residual_form
from ..training.trainer import fit
from .fewshot_choice import (DEEP, KINDS, PROBE, PROBES, RECIPES, Candidate, Chooser, criterion, deep_text_encoder,
                             probe_depth, residual_encoder)
from .fewshot_methods import (DEEP_EPOCHS, DEEP_LR, DEEP_TEXT_EPOCHS, DEEP_TEXT_LR, DISTILL, DISTILL_EPOCHS,
                              DISTILL_LR, PET_TEACHERS, deep_encoder, deep_pvp_plan, deep_text_plan, distill_plan,
                              distill_settings, unlabeled_rows)
from .loaders import (balanced_sample, read_agnews, read_fewglue, read_raft, read_sst2, read_trec, require_dir,
                      sample_rows)
from .reporting import log_to_stderr, took, write_results

METHODS = ("majority", "zero_shot", "embeddings", "probe", "residual", "deep", "deep_text", "unlabeled",
           "deep_unlabeled", "deep_pvp", "deep_pet", "chosen", "lstm", "mlp", "embedding")
DEFAULT_METHODS = ("majority", "zero_shot", "chosen")
FIXED_METHODS = ("lstm", "mlp", "embedding")  # one fixed budget each, no choice


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
    # further manual prompts, (template, verbalizer), written before any figure of theirs was seen: the k rows
    # choose among them and ``manual`` (zero-shot, by cross-validation) before P-tuning starts at the chosen one
    alternatives: tuple[tuple[str, dict], ...] = ()
    optional_fields: tuple[str, ...] = ()  # data.optional_fields: template fields that are empty in some rows

    def prompts(self) -> list[tuple[str, dict]]:
        """Every manual prompt, ``manual`` first, as (template, verbalizer)."""
        return [(self.manual, self.verbalizer), *self.alternatives]


def _fewglue(task: str):
    return lambda d: (read_fewglue(d / "superglue_fewglue" / task / "train.jsonl"),
                      read_fewglue(d / "superglue_fewglue" / task / "val.jsonl"))


YES_NO_MAYBE = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}

SPECS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", lambda d: (read_sst2(d / "sst2" / "train.tsv"), read_sst2(d / "sst2" / "dev.tsv")),
                     "{sentence} [P*4] It was [TARGET]", "{sentence} It was [TARGET]",
                     {"1": "great", "0": "terrible"}, sampled=True, eval_name="SST-2 dev (872)", max_length=128,
                     alternatives=(("Review : {sentence} Sentiment : [TARGET]", {"1": "positive", "0": "negative"}),)),
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
                       sampled=True, eval_name="AG News test (7,600)", max_length=128,
                       alternatives=(("News : {text} Topic : [TARGET]",
                                      {"World": "world", "Sports": "sports", "Business": "business",
                                       "Sci/Tech": "science"}),)),
    "trec": TaskSpec("trec", lambda d: (read_trec(d / "trec" / "train_5500.label"),
                                        read_trec(d / "trec" / "TREC_10.label")),
                     "{question} [P*3] The answer is a [TARGET]", "{question} The answer is a [TARGET]",
                     {"ABBR": "abbreviation", "DESC": "description", "ENTY": "thing", "HUM": "person",
                      "LOC": "place", "NUM": "number"}, sampled=True, eval_name="TREC test (500)", max_length=64,
                     alternatives=(("Question : {question} Answer type : [TARGET]",
                                    {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
                                     "LOC": "location", "NUM": "number"}),)),
}


UNLABELED = "test_unlabeled.csv"  # a RAFT task's rows without labels


def raft_spec(task: str, data_dir: Path) -> TaskSpec:
    """A RAFT task: every data column except ID goes into the prompt; the labels themselves are the words. The
    columns that are empty in any of the task's rows, labelled (``train.csv``) or unlabeled (``test_unlabeled.csv``),
    are its ``optional_fields`` (``data.optional_fields``: such a cell reads as an empty string), so that tasks with
    missing abstracts or urls (tai_safety_research, systematic_review_inclusion) run."""
    folder = data_dir / "raft" / task
    if not folder.is_dir():
        raise PtuneError(f"{folder}: RAFT task folder not found")
    table, info = read_raft(folder)
    label_column = next(iter(info.get("label_columns", {"Label": None})))
    fields = [c for c in info.get("data_columns", table.columns) if c not in ("ID", label_column)]
    text = " ".join(f"{c} : {{{c}}}" for c in fields)
    labels = sorted(set(table.column(label_column)))
    tables = [table] + ([read_table(folder / UNLABELED, "csv")] if (folder / UNLABELED).is_file() else [])
    optional = tuple(c for c in fields if any(not (row.get(c) or "").strip() for t in tables for row in t.rows))
    return TaskSpec(f"raft:{task}", lambda d: (table, None), f"[P*4] {text} [P*2] {label_column} : [TARGET]",
                    f"{text} {label_column} : [TARGET]", {l: l for l in labels}, label_column=label_column,
                    eval_name="cross-validation over the 50 labelled rows", max_length=192, optional_fields=optional)


def task_config(spec: TaskSpec, model: str, *, template: str, encoder: str | dict, dtype: str, device: str, lr: float,
                batch_size: int, epochs: int, seed: int, verbalizer: dict | None = None,
                head: dict | None = None) -> Config:
    """One method's recipe on one task: ``template`` read out by ``verbalizer`` (the task's if None) or by a linear
    head (``head``: its ``task`` keys), ``encoder`` (a type, or a whole encoder section) trained with the given
    budget."""
    return config_from_dict({
        "model": {"name_or_path": model, "dtype": dtype, "device": device},
        "task": {"type": "classification", "template": template, "label_column": spec.label_column,
                 "verbalizer": verbalizer or spec.verbalizer, **(head or {})},
        "encoder": encoder if isinstance(encoder, dict) else {"type": encoder, "hidden_size": 128},
        "data": {"optional_fields": list(spec.optional_fields)},
        "train": {"lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "max_length": spec.max_length,
                  "eval_batch_size": 16},
    })


def run_fewshot(data: str | Path, out: str | Path, *, tasks: list[str] | None = None, seeds: list[int] = (1, 2, 3),
                k: int = 32, max_eval: int | None = 1000, methods: list[str] | None = None, folds: int = 4,
                model: str = "embedded:SmolLM2-135M-Instruct", dtype: str = "auto", device: str = "auto",
                lr: float = 1e-2, batch_size: int = 8, epochs: int = 10, data_seed: int = 42, base=None,
                show_progress: bool = True, log=None, recipes: tuple[tuple[float, int], ...] = RECIPES,
                prefer_simpler: float = PREFER_SIMPLER, choice_splits: int = 1) -> dict:
    """Run the benchmark and write ``out/results.json`` and ``out/results.md`` (rewritten after every method, so a
    stopped run keeps its part).

    Args:
        data (`str` or `Path`): the shared data folder (``sst2/``, ``superglue_fewglue/``, ``agnews/``, ``trec/``,
            ``raft/``).
        out (`str` or `Path`): where the reports go.
        tasks (`list[str]`, *optional*): names in ``SPECS`` or ``raft:<task>``; ``["sst2", "rte"]`` if None.
        seeds (`list[int]`): training seeds (and, for sampled tasks, training samples and the choice's folds).
        k (`int`): training rows sampled (labels balanced) for the sampled tasks.
        max_eval (`int`, *optional*): cap on scored rows (one fixed sample for every method and seed; a split
            with fewer rows is scored whole).
        methods (`list[str]`, *optional*): from ``METHODS``; ``DEFAULT_METHODS`` if None.
        folds (`int`): cross-validation folds over the k rows for the choice, and over the labelled rows for RAFT
            tasks.
        model, dtype, device (`str`): the base model and where it runs.
        lr, batch_size, epochs: the budget of the fixed methods (``chosen``, ``residual``, ``deep`` and
            ``unlabeled`` take batch_size only; their learning rates and epochs are the candidates' and
            ``fewshot_methods``' own).
        data_seed (`int`): seed of the evaluation sample and the zero-shot run.
        base (`FrozenBase`, *optional*): an already loaded base model; loaded from ``model`` if None.
        show_progress (`bool`): training progress bars.
        log (`callable`, *optional*): takes one progress line; stderr if None.
        recipes (`tuple`): (learning rate, epochs) of the P-tuned candidates ``chosen`` may pick.
        prefer_simpler (`float`): ``chosen``'s rule, ``search.prefer_simpler``: the candidate that fits less wins
            where it trails the best mean by at most this many standard errors over the folds (0: the best mean).
        choice_splits (`int`): ``chosen``'s splits of the k rows (``Chooser.splits``), each of ``folds`` folds.

    Returns:
        `dict`: the report written to ``results.json``: the settings, ``tasks`` (per task and method: accuracy and
        macro-F1, mean and spread over seeds or folds; for ``chosen`` each seed's choice and every candidate's
        cross-validated figures and kind; ``{"skipped": why}`` for a method that could not run, such as
        ``embeddings`` without its encoder's package), ``choice`` (the kinds of candidate, the probes' layers and
        poolings, the P-tuned recipes) and ``summary`` (mean accuracy per task and method).

    Example:
        >>> report = run_fewshot("../shared/data", "runs/fewshot", tasks=["sst2"], seeds=[1, 2, 3])  # doctest: +SKIP
        >>> report["summary"]["sst2"]  # doctest: +SKIP
    """
    log = log or log_to_stderr
    data_dir = require_dir(data, "shared")
    out = Path(out)
    refuse_foreign(out)  # never a model's or adapter's folder
    out.mkdir(parents=True, exist_ok=True)
    methods = methods or list(DEFAULT_METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PtuneError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    specs = [task_spec(name, data_dir) for name in tasks or ["sst2", "rte"]]
    t_start = time.perf_counter()
    budget = {"lr": lr, "batch_size": batch_size, "epochs": epochs}
    if base is None:
        log(f"loading {model} ...")
        base = load_base(task_config(specs[0], model, template=specs[0].ptuning, encoder="lstm", dtype=dtype,
                                     device=device, lr=lr, batch_size=batch_size, epochs=epochs, seed=1).model)
    run = FewshotRun(model, {"dtype": dtype, "device": device, **budget}, base, list(seeds), k, max_eval, folds,
                     data_seed, methods, out, show_progress, log, t_start, tuple(recipes), prefer_simpler,
                     choice_splits)
    for spec in specs:
        run.task(spec, data_dir)
    return run.write(True)


def task_spec(name: str, data_dir: Path) -> TaskSpec:
    """The task's spec: one of ``SPECS``, or a RAFT task (``raft:<task>``) read from ``data_dir``."""
    if name.startswith("raft:"):
        return raft_spec(name[5:], data_dir)
    if name in SPECS:
        return SPECS[name]
    raise PtuneError(f"unknown task {name!r}; choose from {', '.join(SPECS)}, raft:<task>")


@dataclass
class FewshotRun:
    """One benchmark run: the settings every task and method shares, and the results so far (``results``)."""
    model: str
    settings: dict  # dtype, device and the training budget (lr, batch_size, epochs): ``task_config``'s keywords
    base: FrozenBase
    seeds: list[int]
    k: int
    max_eval: int | None
    folds: int
    data_seed: int
    methods: list[str]
    out: Path
    show_progress: bool
    log: Callable[[str], None]
    t_start: float
    recipes: tuple[tuple[float, int], ...] = RECIPES  # the P-tuned candidates of the choice
    prefer_simpler: float = PREFER_SIMPLER  # the choice's rule (search.prefer_simpler)
    choice_splits: int = 1  # splits of the k rows the choice cross-validates on
    results: dict[str, dict] = field(default_factory=dict)
    # the linear probes' pooled states (the frozen model's alone): each row's computed once for every seed and fold
    pooled: PooledStateCache = field(default_factory=PooledStateCache)
    encoder: SentenceEncoder | None = None  # the ``embeddings`` method's, loaded when first needed

    @property
    def depth(self) -> int | None:
        """The base model's number of blocks where a linear head can read them (a causal LM); None otherwise."""
        return probe_depth(self.base)

    def config(self, spec: TaskSpec, template: str, encoder: str, seed: int) -> Config:
        """``task_config`` with this run's model, device and budget."""
        return task_config(spec, self.model, template=template, encoder=encoder, seed=seed, **self.settings)

    def candidate_config(self, spec: TaskSpec, candidate: Candidate, seed: int) -> Config:
        """``task_config`` for one candidate of the choice: its template, verbalizer, encoder and budget."""
        settings = self.settings | ({"lr": candidate.lr, "epochs": candidate.epochs} if candidate.trained else {})
        return task_config(spec, self.model, template=candidate.template, encoder=candidate.encoder or "lstm",
                           verbalizer=candidate.verbalizer, head=candidate.head, seed=seed, **settings)

    def train_rows(self, spec: TaskSpec, pool: Table, seed: int, balanced: bool = True) -> Table:
        """The seed's training rows: for sampled tasks k drawn with balanced labels (or, for the fixed methods,
        drawn plainly as the older reports drew them, so that their commands still give their figures), else the
        fixed rows."""
        if not spec.sampled:
            return pool
        if balanced:
            return balanced_sample(pool, self.k, seed, spec.label_column)
        return sample_rows(pool, self.k, seed, f"{self.k}-shot seed {seed}")

    def task(self, spec: TaskSpec, data_dir: Path) -> None:
        """Every method on one task, into ``results[spec.name]``; the reports are rewritten after each method."""
        t0 = time.perf_counter()
        pool, eval_table = spec.load(data_dir)
        entry: dict = {"ptuning_template": spec.ptuning, "manual_template": spec.manual, "verbalizer": spec.verbalizer,
                       "eval_set": spec.eval_name}
        self.results[spec.name] = entry
        if eval_table is not None:
            eval_table = sample_rows(eval_table, self.max_eval, self.data_seed, "sample")
            entry["n_eval"] = len(eval_table)
            entry["n_train"] = self.k if spec.sampled else len(pool)
        else:
            entry.update(n_labelled=len(pool), folds=self.folds)
        for method in self.methods:
            tm = time.perf_counter()
            if method == "zero_shot":
                entry[method] = self.zero_shot(spec, eval_table if eval_table is not None else pool)
            elif eval_table is None and method not in FIXED_METHODS:
                self.log(f"{spec.name} {method}: not run (no labelled evaluation set)")
                continue
            elif method == "majority":
                entry[method] = self.majority(spec, eval_table)
            elif method == "chosen":
                entry[method] = self.chosen(spec, pool, eval_table)
            elif method in ("probe", "embeddings", "residual", "deep", "deep_text", "unlabeled", "deep_unlabeled",
                            "deep_pvp", "deep_pet"):
                entry[method] = getattr(self, method)(spec, pool, eval_table)
            elif eval_table is None:  # RAFT: k-fold cross-validation over the labelled rows
                entry[method] = self.cross_validated(spec, method, pool)
            else:
                entry[method] = self.trained(spec, method, pool, eval_table)
            entry[method]["seconds"] = round(time.perf_counter() - tm, 1)
            if "skipped" in entry[method]:
                self.log(f"{spec.name} {method}: {entry[method]['skipped']}")
            else:
                acc = entry[method]["accuracy"]
                self.log(f"{spec.name} {method}: accuracy "
                         f"{acc if isinstance(acc, float) else acc['mean']:.3f} ({entry[method]['seconds']:.0f} s)")
            self.write(False)
        entry["seconds"] = round(time.perf_counter() - t0, 1)

    def majority(self, spec: TaskSpec, eval_table: Table) -> dict:
        """Every evaluation row answered with the evaluation rows' most frequent label (the bar a constant answer
        reaches)."""
        session = open_session(self.config(spec, spec.manual, "lstm", self.data_seed), base=self.base,
                               allow_no_virtual=True)
        labels = eval_table.column(spec.label_column)
        label = max(sorted(set(labels)), key=labels.count)
        m = session.task.metrics(eval_table.rows, [{"prediction": label}] * len(labels))
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "label": label}

    def zero_shot(self, spec: TaskSpec, table: Table) -> dict:
        """Each manual prompt, nothing trained, on every row of ``table``. The top figures are the best prompt's on
        these rows (a bar set with the evaluation rows' help, which no choice uses); ``prompts`` holds each one's."""
        prompts = []
        for template, verbalizer in spec.prompts():
            cfg = task_config(spec, self.model, template=template, encoder="lstm", verbalizer=verbalizer,
                              seed=self.data_seed, **self.settings)
            session = open_session(cfg, base=self.base, allow_no_virtual=True)
            m = score_rows(session, session.new_model(), table)
            prompts.append({"template": template, "verbalizer": verbalizer, "accuracy": m["accuracy"],
                            "macro_f1": m["macro_f1"], "n": m["n"]})
        top = max(prompts, key=lambda p: p["accuracy"])
        return {"accuracy": top["accuracy"], "macro_f1": top["macro_f1"], "n": top["n"], "prompts": prompts}

    def chosen(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: the recipe cross-validation on the seed's k rows chooses (``fewshot_choice``), trained on all k
        rows (when it trains, or its classifier when a probe is chosen) and scored on ``eval_table``, which the
        choice never sees."""
        chooser = Chooser(lambda c, seed: self.candidate_config(spec, c, seed), self.base, self.folds, self.recipes,
                          depth=self.depth, pooled=self.pooled, prefer_simpler=self.prefer_simpler,
                          splits=self.choice_splits)
        runs, picks = [], []
        for seed in self.seeds:
            rows = self.train_rows(spec, pool, seed)
            candidate, scores = chooser.choose(spec.prompts(), rows, seed)
            session = open_session(self.candidate_config(spec, candidate, seed), base=self.base,
                                   allow_no_virtual=not candidate.trained)
            session.task.pooled_cache = self.pooled
            if candidate.trained:
                model, _ = fit(session, rows, None, None, show_progress=self.show_progress, seed=seed)
            elif candidate.head:  # a linear probe: its classifier fitted on all k rows
                model = fit_probe(session, rows, seed)
            else:
                model = session.new_model(seed)
            m = score_rows(session, model, eval_table)
            runs.append(m)
            picks.append({"seed": seed, "chosen": candidate.name, "kind": candidate.kind,
                          "template": candidate.template, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                          "cv": scores})
            self.log(f"{spec.name} chosen seed {seed}: {candidate.name}; accuracy {m['accuracy']:.3f}, "
                     f"macro-F1 {m['macro_f1']:.3f}")
        return seed_summary(runs) | {"seeds": picks}

    def probe(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: the linear probe as ``ptune baselines`` fits it (``task.head: linear`` at the middle layer,
        mean pooling, over the manual prompt, no virtual tokens), fitted on the seed's k rows (those ``chosen``
        sees) and scored on ``eval_table``; ``{"skipped": why}`` off causal LMs."""
        if self.depth is None:
            return {"skipped": f"not run: a linear probe reads a causal LM's blocks, not a {self.base.kind} LM's"}
        cfg = task_config(spec, self.model, template=spec.manual, encoder="lstm", head={"head": "linear"},
                          seed=self.data_seed, **self.settings)
        session = open_session(cfg, base=self.base, allow_no_virtual=True)
        session.task.pooled_cache = self.pooled  # the evaluation rows' states computed once for every seed
        runs = []
        for seed in self.seeds:
            m = score_rows(session, fit_probe(session, self.train_rows(spec, pool, seed), seed), eval_table)
            runs.append(m)
            self.log(f"{spec.name} probe seed {seed}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
        return seed_summary(runs)

    def deep(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: a deep prompt (``fewshot_methods.DEEP_ENCODER``: keys and values trained at every layer, no
        input-layer virtual tokens) over the manual prompt the k rows prefer (``preferred_prompt``), read by its
        label words, trained on the seed's k rows (those ``chosen`` sees) with the fixed recipe and scored on
        ``eval_table``; ``{"skipped": why}`` off causal LMs."""
        return self.deep_prompt(spec, pool, eval_table, "deep", DEEP_LR, DEEP_EPOCHS, deep_encoder())

    def deep_text(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """``deep`` with the deep prompt a table started as the keys and values the frozen model gives the preferred
        prompt's label words (``fewshot_methods.deep_text_encoder``)."""
        return self.deep_prompt(spec, pool, eval_table, "deep_text", DEEP_TEXT_LR, DEEP_TEXT_EPOCHS,
                                deep_text_encoder())

    def deep_prompt(self, spec: TaskSpec, pool: Table, eval_table: Table, method: str, lr: float, epochs: int,
                    encoder: dict) -> dict:
        """The deep-prompt methods: ``encoder``'s deep prompt over the preferred manual prompt as it is,
        trained with ``lr`` and ``epochs``; ``{"skipped": why}`` off causal LMs."""
        if self.base.kind != "causal":
            return {"skipped": f"not run: a deep prompt is keys and values in a causal LM's KV cache, which a "
                               f"{self.base.kind} LM does not take"}
        out = self.trained_from_preferred(spec, pool, eval_table, method, lr, epochs,
                                          lambda template: (template, encoder))
        return out | {"encoder": encoder}

    def preferred_prompt(self, spec: TaskSpec, rows: Table) -> tuple[str, dict]:
        """The manual prompt (template, verbalizer) the seed's k ``rows`` prefer: the highest macro-F1 scored as it
        stands on those rows (nothing is fitted, so no fold is needed; the first prompt on a tie). The evaluation
        rows play no part, as in ``chosen``, whose zero-shot step makes the same choice by cross-validation."""
        prompts = spec.prompts()
        if len(prompts) == 1:
            return prompts[0]
        scores = []
        for template, verbalizer in prompts:
            cfg = task_config(spec, self.model, template=template, encoder="lstm", verbalizer=verbalizer,
                              seed=self.data_seed, **self.settings)
            session = open_session(cfg, base=self.base, allow_no_virtual=True)
            scores.append(score_rows(session, session.new_model(), rows)["macro_f1"])
        return prompts[max(range(len(prompts)), key=lambda i: (scores[i], -i))]

    def residual(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: ``unlabeled``'s student recipe without the soft rows (residual P-tuning started at the words of
        the manual prompt the k rows prefer, ``fewshot_methods``' fixed learning rate and epochs), trained on the
        seed's k rows alone and scored on ``eval_table``: what the unlabeled rows add is the difference."""
        def start(template: str) -> tuple[str, dict]:
            student, init_text = residual_form(template, self.base.tokenizer)
            return student, residual_encoder(init_text)

        return self.trained_from_preferred(spec, pool, eval_table, "residual", DISTILL_LR, DISTILL_EPOCHS, start)

    def trained_from_preferred(self, spec: TaskSpec, pool: Table, eval_table: Table, method: str, lr: float,
                               epochs: int, start: Callable[[str], tuple[str, dict]]) -> dict:
        """Per seed: ``start`` turns the manual prompt the seed's k rows prefer into (template, encoder section);
        that recipe, read by the prompt's label words, trains on the k rows at ``lr`` for ``epochs`` and is scored on
        ``eval_table``. Returns the seeds' summary with each seed's template."""
        settings = self.settings | {"lr": lr, "epochs": epochs}
        runs, templates, encoders = [], [], []
        for seed in self.seeds:
            rows = self.train_rows(spec, pool, seed)
            manual, verbalizer = self.preferred_prompt(spec, rows)
            template, encoder = start(manual)
            cfg = task_config(spec, self.model, template=template, encoder=encoder, verbalizer=verbalizer, seed=seed,
                              **settings)
            session = open_session(cfg, base=self.base)
            model, _ = fit(session, rows, None, None, show_progress=self.show_progress, seed=seed)
            runs.append(score_rows(session, model, eval_table))
            templates.append(template)
            encoders.append(encoder)
            self.log(f"{spec.name} {method} seed {seed} `{template}`: accuracy {runs[-1]['accuracy']:.3f}, "
                     f"macro-F1 {runs[-1]['macro_f1']:.3f}")
        return seed_summary(runs) | {"templates": templates, "encoders": encoders, "lr": lr, "epochs": epochs}

    def unlabeled(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: PET-style distillation (``fewshot_methods``): residual P-tuning teachers trained on the seed's
        k rows label a sample of the train pool's other rows (labels removed, no evaluation row among them), and
        the residual form of the manual prompt the k rows prefer (``preferred_prompt``) trains on the k rows plus
        those soft labels, then is scored on ``eval_table``; ``{"skipped": why}`` where the task has no rows beyond
        its fixed training rows."""
        def plan(prompts: list[tuple[str, dict]]) -> tuple[str, dict, list[tuple[str, dict]]]:
            student, init_text, teachers = distill_plan(prompts, self.base.tokenizer)
            return student, residual_encoder(init_text), [(t, prompts[0][1]) for t in teachers]

        return self.distilled(spec, pool, eval_table, "unlabeled", DISTILL_LR, DISTILL_EPOCHS, plan)

    def deep_unlabeled(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """``unlabeled`` with ``deep_text``'s recipe for teachers and student (``fewshot_methods.deep_text_plan``):
        deep prompts started from the label words over the manual templates as they are."""
        def plan(prompts: list[tuple[str, dict]]) -> tuple[str, dict, list[tuple[str, dict]]]:
            student, teachers = deep_text_plan(prompts)
            return student, deep_text_encoder(), [(t, prompts[0][1]) for t in teachers]

        return self.deep_distilled(spec, pool, eval_table, "deep_unlabeled", plan)

    def deep_pvp(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """``deep_unlabeled`` with every manual prompt a teacher, in its own words
        (``fewshot_methods.deep_pvp_plan``)."""
        return self.deep_distilled(spec, pool, eval_table, "deep_pvp", self.pvp_plan)

    def deep_pet(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """``deep_pvp`` with ``fewshot_methods.PET_TEACHERS`` teachers (seeds) per manual prompt."""
        return self.deep_distilled(spec, pool, eval_table, "deep_pet", self.pvp_plan, per_prompt=PET_TEACHERS)

    @staticmethod
    def pvp_plan(prompts: list[tuple[str, dict]]) -> tuple[str, dict, list[tuple[str, dict]]]:
        """``deep_pvp``'s and ``deep_pet``'s plan: every manual prompt teaching in its own words."""
        student, teachers = deep_pvp_plan(prompts)
        return student, deep_text_encoder(), teachers

    def deep_distilled(self, spec: TaskSpec, pool: Table, eval_table: Table, method: str,
                       plan: Callable[[list[tuple[str, dict]]], tuple[str, dict, list[tuple[str, dict]]]],
                       per_prompt: int = 1) -> dict:
        """``distilled`` at ``deep_text``'s recipe; ``{"skipped": why}`` off causal LMs."""
        if self.base.kind != "causal":
            return {"skipped": f"not run: a deep prompt is keys and values in a causal LM's KV cache, which a "
                               f"{self.base.kind} LM does not take"}
        return self.distilled(spec, pool, eval_table, method, DEEP_TEXT_LR, DEEP_TEXT_EPOCHS, plan, per_prompt)

    def distilled(self, spec: TaskSpec, pool: Table, eval_table: Table, method: str, lr: float, epochs: int,
                  plan: Callable[[list[tuple[str, dict]]], tuple[str, dict, list[tuple[str, dict]]]],
                  per_prompt: int = 1) -> dict:
        """Per seed: ``plan`` turns the task's manual prompts, the one the seed's k rows prefer first, into the
        student's template and encoder section and the teachers' templates with their label words; the teachers
        (``per_prompt`` seeds of each) train on the k rows and label a sample of the train pool's other rows
        (``fewshot_methods.unlabeled_rows``), the student trains on both at ``lr`` for ``epochs`` and is scored on
        ``eval_table``."""
        if not spec.sampled:
            return {"skipped": "not run: no unlabeled rows for this task"}
        settings = self.settings | {"lr": lr, "epochs": epochs}
        runs, plans = [], []
        for seed in self.seeds:
            rows = self.train_rows(spec, pool, seed)
            first = self.preferred_prompt(spec, rows)  # the student's and the first teacher's start
            student, encoder, teachers = plan([first] + [p for p in spec.prompts() if p != first])
            unlabeled = unlabeled_rows(pool, rows, eval_table, first[0], spec.label_column)
            if not unlabeled.rows:
                return {"skipped": "not run: the train pool holds no rows beyond the k training rows"}
            distill = distill_settings(teachers, unlabeled.source, per_prompt)
            cfg = task_config(spec, self.model, template=student, encoder=encoder, seed=seed,
                              verbalizer=first[1], **settings).replace(distill)
            session = open_session(cfg, base=self.base, unlabeled=unlabeled)
            model, _ = fit(session, rows, None, None, show_progress=self.show_progress, seed=seed,
                           held_out=eval_table)
            runs.append(score_rows(session, model, eval_table))
            plans.append({"seed": seed, "student": student, "teachers": [t for t, _ in teachers],
                          "teacher_words": [w for _, w in teachers], "unlabeled": len(unlabeled)})
            self.log(f"{spec.name} {method} seed {seed}: accuracy {runs[-1]['accuracy']:.3f}, "
                     f"macro-F1 {runs[-1]['macro_f1']:.3f} ({len(unlabeled)} unlabeled rows)")
        return seed_summary(runs) | {"seeds": plans, "lr": lr, "epochs": epochs,
                                     **{key: distill[key] for key in ("data.unlabeled", *DISTILL)}}

    def embeddings(self, spec: TaskSpec, pool: Table, eval_table: Table) -> dict:
        """Per seed: logistic regression on the sentence encoder's embeddings of the manual prompt's data fields
        (the sentence-embedding baseline of ``ptune baselines``), fitted on the seed's k rows and scored on
        ``eval_table``; ``{"skipped": why}`` when the encoder's package is not installed."""
        folder = encoder_folder()
        if folder is None:
            return {"skipped": MISSING}
        session = open_session(self.config(spec, spec.manual, "lstm", self.data_seed), base=self.base,
                               allow_no_virtual=True)
        self.encoder = self.encoder or SentenceEncoder(folder, session.device, name=ENCODER_NAME)
        eval_vectors = self.encoder.embed(row_texts(session.cfg, eval_table))
        runs = []
        for seed in self.seeds:
            rows = self.train_rows(spec, pool, seed)
            labels = fit_and_label(session.cfg, self.encoder.embed(row_texts(session.cfg, rows)),
                                   rows.column(spec.label_column), eval_vectors)
            m = session.task.metrics(eval_table.rows, [{"prediction": label} for label in labels])
            runs.append(m)
            self.log(f"{spec.name} embeddings seed {seed}: accuracy {m['accuracy']:.3f}, "
                     f"macro-F1 {m['macro_f1']:.3f}")
        return seed_summary(runs) | {"encoder": self.encoder.name}

    def cross_validated(self, spec: TaskSpec, method: str, pool: Table) -> dict:
        """``method`` cross-validated over the labelled rows (tasks without a labelled evaluation set)."""
        cfg = self.config(spec, spec.ptuning, method, self.seeds[0])
        cv = cross_validate(cfg, folds=self.folds, seeds=self.seeds, session=open_session(cfg, base=self.base),
                            train_table=pool, show_progress=False)
        return {metric: {**cv[metric], "runs": [r[metric] for r in cv["runs"]]} for metric in ("accuracy", "macro_f1")}

    def trained(self, spec: TaskSpec, method: str, pool: Table, eval_table: Table) -> dict:
        """``method`` trained once per seed (on k sampled rows, or the fixed training rows) and scored on
        ``eval_table``: mean and spread over the seeds."""
        runs = []
        for seed in self.seeds:
            session = open_session(self.config(spec, spec.ptuning, method, seed), base=self.base)
            model, _ = fit(session, self.train_rows(spec, pool, seed, balanced=False), None, None,
                           show_progress=self.show_progress, seed=seed)
            m = score_rows(session, model, eval_table)
            runs.append(m)
            self.log(f"{spec.name} {method} seed {seed}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
        return seed_summary(runs)

    def write(self, done: bool) -> dict:
        """results.json / results.md for the tasks so far; returns the report."""
        summary = {name: {m: (e[m]["accuracy"] if isinstance(e[m]["accuracy"], float) else
                              e[m]["accuracy"]["mean"]) for m in self.methods if "accuracy" in e.get(m, {})}
                   for name, e in self.results.items()}
        probes = [{"layer": layer, "pooling": pooling} for layer, pooling in PROBES] if self.depth else []
        report = {"benchmark": "few-shot classification", "model": self.model, "kind": self.base.kind,
                  "seeds": self.seeds, "k": self.k, "max_eval": self.max_eval,
                  "budget": {name: self.settings[name] for name in ("lr", "batch_size", "epochs")},
                  "choice": {"folds": self.folds, "splits": self.choice_splits,
                             "kinds": [kind for kind in KINDS if probes or kind not in (PROBE, DEEP)],
                             "probes": probes, "recipes": [{"lr": lr, "epochs": e} for lr, e in self.recipes],
                             "criterion": criterion(self.prefer_simpler, self.choice_splits),
                             "prefer_simpler": self.prefer_simpler},
                  "methods": self.methods, "complete": done, "tasks": self.results, "summary": summary,
                  "seconds": round(time.perf_counter() - self.t_start, 1)}
        write_results(self.out, report, render_markdown(report))
        return report


def seed_summary(runs: list[dict]) -> dict:
    """Accuracy and macro-F1 over the seeds' runs: mean, spread and each seed's figure (``runs``)."""
    return {metric: mean_spread([m[metric] for m in runs]) | {"runs": [m[metric] for m in runs]}
            for metric in ("accuracy", "macro_f1")}


def score_rows(session, model, table: Table) -> dict:
    """``model``'s metrics on every row of ``table`` (the one place evaluation rows are scored)."""
    return session.task.metrics(table.rows, session.predict(model, table.rows))


def render_markdown(report: dict) -> str:
    """``results.md``: accuracy (macro-F1) per task and method, each seed's chosen recipe, then the templates."""
    methods = report["methods"]
    names = {"majority": "majority class", "zero_shot": "zero-shot manual (best prompt)",
             "embeddings": f"sentence embeddings ({ENCODER_NAME})", "probe": "linear probe (middle layer)",
             "residual": "residual P-tuning, fixed recipe", "deep": "deep prompt (P-tuning v2)",
             "deep_text": "deep prompt started from the label words",
             "unlabeled": "distilled on unlabeled rows (PET-style)",
             "deep_unlabeled": "deep prompt from the label words, distilled on unlabeled rows",
             "deep_pvp": "the same, every manual prompt teaching in its own words",
             "deep_pet": "deep_pvp with three teachers (seeds) per manual prompt",
             "chosen": "chosen by CV on the k rows", "lstm": "P-tuning (LSTM)", "mlp": "P-tuning (MLP)",
             "embedding": "prompt tuning (embedding)"}
    lines = [f"# Few-shot classification, {report['model']} ({report['kind']} LM)", "",
             f"Accuracy (macro-F1), mean ± std over seeds {report['seeds']} (majority and zero-shot: one "
             f"deterministic run). k = {report['k']} for sampled tasks (labels balanced); evaluation rows capped at "
             f"{report['max_eval']} (one fixed sample). Budget of the fixed methods: {report['budget']}.", "",
             "| task | eval set (size): rows scored | " + " | ".join(names[m] for m in methods) + " |",
             "| --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for name, e in report["tasks"].items():
        cells = [figure_cell(e[m]) if m in e else "not run" for m in methods]
        n = e.get("n_eval", e.get("n_labelled"))
        lines.append(f"| {name} | {e['eval_set']}: {n} | " + " | ".join(cells) + " |")
    skipped = [f"- {name} {m}: {e[m]['skipped']}" for name, e in report["tasks"].items() for m in methods
               if "skipped" in e.get(m, {})]
    lines += ["", *skipped] if skipped else []
    choices = [(name, e["chosen"]["seeds"]) for name, e in report["tasks"].items() if "chosen" in e]
    if choices:
        lines += ["", f"Chosen per seed ({report['choice']['criterion']}; the evaluation rows unseen):", ""]
        for name, seeds in choices:
            for pick in seeds:
                lines.append(f"- {name} seed {pick['seed']}: {pick['chosen']} -> accuracy {pick['accuracy']:.3f}, "
                             f"macro-F1 {pick['macro_f1']:.3f} (CV: " + "; ".join(
                                 f"{c['candidate']} {c['macro_f1']:.3f}" for c in pick["cv"]) + ")" +
                             "".join(f"; chosen {c['note']}" for c in pick["cv"] if c.get("note")))
    lines += ["", "Templates:", ""]
    for name, e in report["tasks"].items():
        lines.append(f"- {name}: `{e['ptuning_template']}` (manual: `{e['manual_template']}`), "
                     f"verbalizer {json.dumps(e['verbalizer'])}")
        for p in e.get("zero_shot", {}).get("prompts", [])[1:]:
            lines.append(f"  - also manual: `{p['template']}`, verbalizer {json.dumps(p['verbalizer'])}")
    lines += ["", took(report)]
    return "\n".join(lines) + "\n"


def figure_cell(result: dict) -> str:
    """One table cell: accuracy (macro-F1), with the spread over seeds or folds where there are several."""
    if "skipped" in result:
        return "skipped"
    acc, f1 = result["accuracy"], result["macro_f1"]
    if isinstance(acc, float):
        return f"{acc:.3f} ({f1:.3f})"
    return f"{acc['mean']:.3f} ± {acc['std']:.3f} ({f1['mean']:.3f})"
