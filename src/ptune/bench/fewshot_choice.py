"""Choosing a few-shot recipe from the k training rows alone, by cross-validation over them.

The candidates are fixed before any figure is seen, and listed in this order:

1. each manual prompt of the task, scored as it stands (zero-shot);
2. the linear probe over the best manual prompt (``task.head: linear``, no virtual tokens, only the classifier
   fitted), at the layers and poolings the built-in search space pairs for a linear head (``PROBES``: the middle
   layer with mean pooling, a late layer with the last position's state), on causal LMs only;
3. P-tuning started exactly at the best manual prompt's words (``encoder.residual``: the anchor text before the
   answer slot becomes as many virtual tokens as it has tokens, starting at their embeddings) with a few learning
   rates and budgets (``RECIPES``);
4. a deep prompt over the best manual prompt, its keys and values at every layer a table started as those the
   frozen model gives the prompt's label words (``deep_text_encoder``, ``DEEP_TEXT_RECIPE``), on causal LMs only.
   This one was added after ``ptune bench fewshot``'s ``deep_text`` method, the same recipe, had been scored on
   SST-2's and AG News' evaluation rows.

Every candidate is cross-validated on the same stratified folds of the k rows by ``cross_validate`` (``splits``
different splits of them, 1 by default, each its own folds; ``split_seeds``) and chosen by
``ptune search``'s own rule (``search.pick_best``): the highest mean macro-F1 wins, unless a candidate that fits
less (the zero-shot prompt, then a probe) trails it by at most ``prefer_simpler`` standard errors of their paired
difference over the folds; then the simplest such one. A tie goes to the candidate listed first, the zero-shot
prompt, so fitting anything is chosen only where the k rows say it helps. Nothing else reaches the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import Config
from ..data.tables import Table
from ..evaluation.cv import cross_validate
from ..evaluation.search import PREFER_SIMPLER, TRAINS, pick_best
from ..evaluation.space import HEADS, layer_number
from ..modeling.base import FrozenBase
from ..modeling.heads import decoder_layers
from ..session import open_session
from ..tasks.pooled_cache import PooledStateCache
from ..template import residual_form

# (learning rate, epochs) of the P-tuned candidates, fixed before any evaluation figure was seen: three step sizes
# around the 1e-2 that moved the residual start on SST-2, and half the budget at that one. Sized so that one task's
# three seeds take about 15 to 30 minutes on a 2-core CPU with SmolLM2-135M in bfloat16: there one candidate's
# 4 folds of 6 epochs on 24 SST-2 rows took 53 s, the zero-shot prompt's 5 s.
RECIPES: tuple[tuple[float, int], ...] = ((3e-3, 6), (1e-2, 3), (1e-2, 6), (3e-2, 6))
# (layer name, pooling) of the probe candidates: the linear heads of the built-in search space (``space.HEADS``)
PROBES: tuple[tuple[str, str], ...] = tuple((h["task.head_layer"], h["task.head_pooling"]) for h in HEADS
                                            if h["task.head"] == "linear")
# the deep prompt started from the label words: 8 positions, (learning rate, epochs)
DEEP_TEXT_TOKENS, DEEP_TEXT_RECIPE = 8, (1e-2, 6)
# a seed's further splits of the k rows are seeded this far apart, so that they never meet another seed's own
SPLIT_STRIDE = 1000
# the kinds of candidate, in the order they are listed (a tie goes to the earlier)
ZERO_SHOT, PROBE, RESIDUAL, DEEP = "zero-shot prompt", "linear probe", "residual P-tuning", "deep prompt"
KINDS = (ZERO_SHOT, PROBE, RESIDUAL, DEEP)


@dataclass(frozen=True)
class Candidate:
    """One recipe the k rows may choose: a template and verbalizer, how it is read (``head``: ``task`` keys of a
    linear head; empty: the label words) and how its prompt is trained (``epochs`` 0: not trained)."""
    name: str
    template: str
    verbalizer: dict
    encoder: dict = field(default_factory=dict)
    lr: float = 0.0
    epochs: int = 0
    head: dict = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Whether its prompt is trained (residual P-tuning)."""
        return self.epochs > 0

    @property
    def fitted(self) -> bool:
        """Whether anything is fitted to the rows: the prompt, or a probe's classifier."""
        return self.trained or bool(self.head)

    @property
    def trains(self) -> str:
        """What it fits to the rows, as ``ptune search`` names it (``search.TRAINS``)."""
        nothing, classifier, prompt = TRAINS
        return prompt if self.trained else classifier if self.head else nothing

    @property
    def kind(self) -> str:
        """One of ``KINDS``."""
        if self.trained:
            return DEEP if self.encoder.get("deep_tokens") else RESIDUAL
        return PROBE if self.head else ZERO_SHOT


def zero_shot_candidate(template: str, verbalizer: dict) -> Candidate:
    """The manual prompt as it stands, nothing trained."""
    return Candidate(f"zero-shot `{template}`", template, verbalizer)


def probe_depth(base: FrozenBase) -> int | None:
    """The base model's number of blocks where a linear head can read them (a causal LM); None otherwise."""
    return len(decoder_layers(base.model)) if base.kind == "causal" else None


def probe_candidates(manual: Candidate, depth: int | None) -> list[Candidate]:
    """The linear probe over ``manual``'s template (no virtual tokens), one per ``PROBES`` layer and pooling; none
    without a ``depth`` (not a causal LM).

    Example:
        >>> [c.name for c in probe_candidates(zero_shot_candidate("{text} Topic : [TARGET]", {}), depth=30)]
        ['probe middle layer 15, mean pooling', 'probe late layer 22, last pooling']
    """
    if not depth:
        return []
    out = []
    for layer, pooling in PROBES:
        number = layer_number(layer, depth)
        out.append(Candidate(f"probe {layer} layer {number}, {pooling} pooling", manual.template, manual.verbalizer,
                             head={"head": "linear", "head_layer": number, "head_pooling": pooling}))
    return out


def trained_candidates(manual: Candidate, tokenizer, recipes=RECIPES) -> list[Candidate]:
    """P-tuning started at ``manual``'s anchor words (LSTM encoder, ``encoder.residual``), one per recipe."""
    template, init_text = residual_form(manual.template, tokenizer)
    return [Candidate(f"residual lr {lr:g}, {epochs} epochs", template, manual.verbalizer, residual_encoder(init_text),
                      lr, epochs) for lr, epochs in recipes]


def deep_candidates(manual: Candidate, depth: int | None) -> list[Candidate]:
    """The deep prompt over ``manual``'s template, started from its label words (``deep_text_encoder``); none
    without a ``depth`` (not a causal LM, whose KV cache a deep prompt fills)."""
    if not depth:
        return []
    lr, epochs = DEEP_TEXT_RECIPE
    return [Candidate(f"deep prompt from the label words, lr {lr:g}, {epochs} epochs", manual.template,
                      manual.verbalizer, deep_text_encoder(), lr, epochs)]


def deep_text_encoder() -> dict:
    """The ``encoder`` section of a deep prompt started from the label words: no input-layer virtual tokens, a table
    of ``DEEP_TEXT_TOKENS`` positions' keys and values started as those the frozen model gives the prompt's label
    words (``encoder.init: labels``).

    Example:
        >>> deep_text_encoder()["deep_encoder"], deep_text_encoder()["init"]
        ('table', 'labels')
    """
    return {"type": "lstm", "hidden_size": 128, "deep_tokens": DEEP_TEXT_TOKENS, "deep_encoder": "table",
            "init": "labels"}


def residual_encoder(init_text: str) -> dict:
    """The ``encoder`` section of residual P-tuning started at ``init_text``: an LSTM encoder whose output is added
    to the embeddings of ``init_text``'s tokens, so that training starts exactly at the manual prompt."""
    return {"type": "lstm", "hidden_size": 128, "init": "text", "init_text": init_text, "residual": True}


@dataclass
class Chooser:
    """Cross-validates candidates on the k rows and picks one.

    ``configure`` turns a candidate and a seed into its config (the model, device and batch settings are the
    caller's). ``depth``: the causal LM's number of blocks, for the probe candidates (None: no probe). ``pooled``
    keeps the probes' pooled states, which are the frozen model's alone, across folds, seeds and the final fit.
    ``prefer_simpler``: ``search.prefer_simpler`` (0: the best mean alone). ``splits``: splits of the k rows each
    candidate is cross-validated on (``split_seeds``), all their folds weighing in the choice: more folds steady the
    means that a lucky 8-row fold moves, at that many times the cost."""
    configure: Callable[[Candidate, int], Config]
    base: FrozenBase
    folds: int = 4
    recipes: tuple[tuple[float, int], ...] = RECIPES
    depth: int | None = None
    pooled: PooledStateCache = field(default_factory=PooledStateCache)
    prefer_simpler: float = PREFER_SIMPLER
    splits: int = 1

    def score(self, candidate: Candidate, rows: Table, seed: int) -> dict:
        """``candidate``'s mean held-out figures over ``folds`` stratified folds of ``rows`` in each of ``splits``
        splits (``split_seeds(seed, splits)``)."""
        cfg = self.configure(candidate, seed)
        session = open_session(cfg, base=self.base, allow_no_virtual=not candidate.trained)
        session.task.pooled_cache = self.pooled
        cv = cross_validate(cfg, folds=self.folds, seeds=split_seeds(seed, self.splits), session=session,
                            train_table=rows, show_progress=False, trained=candidate.fitted)
        return {"candidate": candidate.name, "kind": candidate.kind, "trains": candidate.trains,
                "accuracy": cv["accuracy"]["mean"], "macro_f1": cv["macro_f1"]["mean"],
                "macro_f1_std": cv["macro_f1"]["std"], "fold_macro_f1": [r["macro_f1"] for r in cv["runs"]],
                "seconds": round(cv["seconds"], 1)}

    def choose(self, prompts: list[tuple[str, dict]], rows: Table, seed: int) -> tuple[Candidate, list[dict]]:
        """The candidate the k ``rows`` choose, and every candidate's cross-validated figures.

        Args:
            prompts (`list[tuple[str, dict]]`): the task's manual prompts, (template, verbalizer) each.
            rows (`Table`): the k training rows, all that the choice sees.
            seed (`int`): the folds' split and the training seed.

        Returns:
            `tuple[Candidate, list[dict]]`: the chosen candidate and one ``{"candidate", "kind", "trains",
            "accuracy", "macro_f1", "macro_f1_std", "fold_macro_f1", "seconds"}`` per candidate scored, in the
            order scored (the zero-shot prompts, the probes, the residual starts, the deep prompt); the chosen one
            also has ``note`` where a simpler candidate was chosen over the best mean (``prefer_simpler``).

        Example:
            >>> chosen, scores = chooser.choose([(spec.manual, spec.verbalizer)], k_rows, seed=1)  # doctest: +SKIP
        """
        zero = [zero_shot_candidate(t, v) for t, v in prompts]
        scores = [self.score(c, rows, seed) for c in zero]
        manual = zero[best(scores)]
        fitted = probe_candidates(manual, self.depth) + trained_candidates(manual, self.base.tokenizer, self.recipes) \
            + deep_candidates(manual, self.depth)
        final = [manual, *fitted]
        final_scores = [scores[zero.index(manual)]] + [self.score(c, rows, seed) for c in fitted]
        chosen, note = pick(final_scores, self.prefer_simpler)
        if note:
            final_scores[chosen]["note"] = note
        return final[chosen], scores + final_scores[1:]


def split_seeds(seed: int, splits: int) -> list[int]:
    """The seeds of ``splits`` splits of the k rows (each also its folds' training seed): ``seed`` first.

    Example:
        >>> split_seeds(2, 3)
        [2, 1002, 2002]
    """
    if splits < 1:
        raise ValueError(f"splits must be at least 1, not {splits}")
    return [seed + SPLIT_STRIDE * i for i in range(splits)]


def best(scores: list[dict]) -> int:
    """The index of the highest mean macro-F1; the first such on a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i]["macro_f1"], -i))


def criterion(prefer_simpler: float, splits: int = 1) -> str:
    """The choice's rule in words, for the reports."""
    rows = "the k rows" if splits == 1 else f"{splits} splits of the k rows"
    rule = f"mean macro-F1 over the folds of {rows}; a tie to the candidate listed first (zero-shot, then the probes)"
    if prefer_simpler <= 0:
        return rule
    return (f"{rule}; a candidate that fits less (zero-shot, then a probe) wins where it trails the best mean by at "
            f"most {prefer_simpler:g} standard error(s) of their paired difference over the folds")


def pick(scores: list[dict], prefer_simpler: float) -> tuple[int, str]:
    """``ptune search``'s choice (``search.pick_best``) among ``Chooser.score`` figures: the best mean macro-F1
    (the first on a tie), or the simplest candidate the folds do not separate from it. Returns its index and, where
    that is not the best mean, a note naming the best mean and how far the choice trails it."""
    rows = [{"macro_f1": {"mean": s["macro_f1"]}, "fold_macro_f1": s["fold_macro_f1"], "trains": s["trains"]}
            for s in scores]
    chosen, notes = pick_best(rows, prefer_simpler)
    if not notes:  # the best mean itself
        return chosen, ""
    top = best(scores)
    gap = rows[top]["vs_best"]  # the chosen one's folds minus the best mean's
    return chosen, (f"over {scores[top]['candidate']} (the best mean), which leads it by {-gap['mean']:.3f} "
                    f"macro-F1 with a standard error of {gap['sem']:.3f} over the same folds: within "
                    f"prefer_simpler = {prefer_simpler:g}")
