"""Choosing a few-shot recipe from the k training rows alone, by cross-validation over them.

The candidates are fixed before any figure is seen: each manual prompt of the task, scored as it stands (zero-shot),
and P-tuning started exactly at the best manual prompt's words (``encoder.residual``: the anchor text before the
answer slot becomes as many virtual tokens as it has tokens, starting at their embeddings) with a few learning
rates and budgets (``RECIPES``). Every candidate is cross-validated on the same stratified folds of the k rows by
``cross_validate``; the highest mean macro-F1 wins, and a tie goes to the candidate listed first, the zero-shot
prompt, so training is chosen only where the k rows say it helps. Nothing else reaches the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import Config
from ..data.tables import Table
from ..errors import PtuneError
from ..evaluation.cv import cross_validate
from ..modeling.base import FrozenBase
from ..session import open_session

# (learning rate, epochs) of the P-tuned candidates, fixed before any evaluation figure was seen: three step sizes
# around the 1e-2 that moved the residual start on SST-2, and half the budget at that one. Sized so that one task's
# three seeds take about 15 to 30 minutes on a 2-core CPU with SmolLM2-135M in bfloat16: there one candidate's
# 4 folds of 6 epochs on 24 SST-2 rows took 53 s, the zero-shot prompt's 5 s.
RECIPES: tuple[tuple[float, int], ...] = ((3e-3, 6), (1e-2, 3), (1e-2, 6), (3e-2, 6))


@dataclass(frozen=True)
class Candidate:
    """One recipe the k rows may choose: a template and verbalizer, and how it is trained (``epochs`` 0: not
    trained, the zero-shot prompt)."""
    name: str
    template: str
    verbalizer: dict
    encoder: dict = field(default_factory=dict)
    lr: float = 0.0
    epochs: int = 0

    @property
    def trained(self) -> bool:
        return self.epochs > 0


def residual_form(manual: str, tokenizer) -> tuple[str, str]:
    """The manual prompt with its anchor text (between the last field and ``[TARGET]``) replaced by as many virtual
    tokens as the anchor has tokens, and the anchor text (with the space the template puts before it) they start at.

    Args:
        manual (`str`): a manual template ending ``{field} words [TARGET]``.
        tokenizer: the base model's tokenizer (counts the anchor's tokens).

    Returns:
        `tuple[str, str]`: (P-tuned template, ``encoder.init_text``).

    Example:
        >>> residual_form("Review : {sentence} Sentiment : [TARGET]", tok)  # doctest: +SKIP
        ('Review : {sentence} [P*3] [TARGET]', ' Sentiment :')
    """
    head, brace, tail = manual.rpartition("}")
    anchor = tail.removesuffix("[TARGET]").strip() if tail.rstrip().endswith("[TARGET]") else ""
    if not brace or not anchor or "[P" in anchor:
        raise PtuneError(f"manual template {manual!r}: the residual start needs anchor words between the last "
                         "{field} and a final [TARGET]")
    init_text = " " + anchor
    n = len(tokenizer.encode(init_text, add_special_tokens=False))
    return f"{head}}} [P*{n}] [TARGET]", init_text


def zero_shot_candidate(template: str, verbalizer: dict) -> Candidate:
    """The manual prompt as it stands, nothing trained."""
    return Candidate(f"zero-shot `{template}`", template, verbalizer)


def trained_candidates(manual: Candidate, tokenizer, recipes=RECIPES) -> list[Candidate]:
    """P-tuning started at ``manual``'s anchor words (LSTM encoder, ``encoder.residual``), one per recipe."""
    template, init_text = residual_form(manual.template, tokenizer)
    encoder = {"type": "lstm", "hidden_size": 128, "init": "text", "init_text": init_text, "residual": True}
    return [Candidate(f"residual lr {lr:g}, {epochs} epochs", template, manual.verbalizer, encoder, lr, epochs)
            for lr, epochs in recipes]


@dataclass
class Chooser:
    """Cross-validates candidates on the k rows and picks one.

    ``configure`` turns a candidate and a seed into its config (the model, device and batch settings are the
    caller's)."""
    configure: Callable[[Candidate, int], Config]
    base: FrozenBase
    folds: int = 4
    recipes: tuple[tuple[float, int], ...] = RECIPES

    def score(self, candidate: Candidate, rows: Table, seed: int) -> dict:
        """``candidate``'s mean held-out figures over ``folds`` stratified folds of ``rows`` (split by ``seed``)."""
        cfg = self.configure(candidate, seed)
        session = open_session(cfg, base=self.base, allow_no_virtual=not candidate.trained)
        cv = cross_validate(cfg, folds=self.folds, seeds=[seed], session=session, train_table=rows,
                            show_progress=False, trained=candidate.trained)
        return {"candidate": candidate.name, "accuracy": cv["accuracy"]["mean"],
                "macro_f1": cv["macro_f1"]["mean"], "macro_f1_std": cv["macro_f1"]["std"]}

    def choose(self, prompts: list[tuple[str, dict]], rows: Table, seed: int) -> tuple[Candidate, list[dict]]:
        """The candidate the k ``rows`` choose, and every candidate's cross-validated figures.

        Args:
            prompts (`list[tuple[str, dict]]`): the task's manual prompts, (template, verbalizer) each.
            rows (`Table`): the k training rows, all that the choice sees.
            seed (`int`): the folds' split and the training seed.

        Returns:
            `tuple[Candidate, list[dict]]`: the chosen candidate and one ``{"candidate", "accuracy", "macro_f1",
            "macro_f1_std"}`` per candidate scored, in the order scored.

        Example:
            >>> chosen, scores = chooser.choose([(spec.manual, spec.verbalizer)], k_rows, seed=1)  # doctest: +SKIP
        """
        zero = [zero_shot_candidate(t, v) for t, v in prompts]
        scores = [self.score(c, rows, seed) for c in zero]
        manual = zero[best(scores)]
        trained = trained_candidates(manual, self.base.tokenizer, self.recipes)
        final = [manual, *trained]
        final_scores = [scores[zero.index(manual)]] + [self.score(c, rows, seed) for c in trained]
        return final[best(final_scores)], scores + final_scores[1:]


def best(scores: list[dict]) -> int:
    """The index of the highest mean macro-F1; the first such on a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i]["macro_f1"], -i))
