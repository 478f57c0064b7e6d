"""Classification: loss on the gold label's tokens (or the linear head's cross-entropy); prediction ranks every
label by likelihood, so the answer is always one of the labels, with its scores. The losses live in ``losses``,
label-word scoring in ``label_scoring`` and calibration in ``calibration``; this class picks among them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.render import Encoded
from ..errors import ConfigError
from ..modeling.ptuning import PTuningModel
from .base import Task, sorted_batches
from .calibration import calibrated
from .label_scoring import best_only, label_word_scores
from .losses import ClassifyLoss, LinearHeadLoss, WeightedLMLoss, balanced_weights
from .metrics import classification_metrics


class ClassificationTask(Task):
    """Rows labelled with one of ``labels``; each label is spoken as one or more words (``task.verbalizer``).

    Training: the gold label's first word after the input (``train.objective: lm``), the choice among the labels'
    first tokens (``classify``), or, with ``task.head: linear``, a classifier over one block's pooled states.
    Prediction: every label's score (``scores``), calibrated as ``task.calibrate`` says, and the best label.

    Args:
        cfg (`TaskConfig`), renderer (`Renderer`), labels (`LabelSpace`): see ``Task``.
        objective (`str`): ``lm`` or ``classify``. class_weights (`str`): ``none`` or ``balanced``.

    Example:
        >>> task = build_task(cfg.task, renderer, LabelSpace.build(cfg.task.verbalizer, ["yes", "no"]))
        >>> preds = task.predict(model, [{"text": "great"}], 8, "cpu")
        >>> sorted(preds[0])  # the best label, and every label's (calibrated) score
        ['prediction', 'scores']
    """

    def check(self, table, *, labelled=True):
        if labelled and self.label_column in table.columns:
            for i, row in enumerate(table.rows, 1):
                self.labels.index(row[self.label_column], where=f"{table.source}: row {i}: ")

    @property
    def linear_head(self) -> bool:
        """Whether its head is a classifier of its own (``task.head: linear``), as the session chose it."""
        return self.head.fits_classifier

    def train_examples(self, table):
        out = []
        for i, row in enumerate(table.rows, 1):
            label = self.labels.index(row[self.label_column], where=f"{table.source}: row {i}: ")
            # a linear head reads the input alone: the label word must not be in it
            enc = self.renderer.encode(row, self.renderer.target_ids(self.labels.words[label][0])
                                       if self.head.target_in_input else None)
            enc.label_index = label
            out.append(enc)
        return out, 0

    def soft_examples(self, rows: list[dict], probs: torch.Tensor, weight: float) -> list[Encoded]:
        """Training examples for soft-labelled rows, whose loss is ``weight`` times each row's cross-entropy against
        its distribution, over the same label scores the objective trains (label words, the labels' first tokens,
        or the linear head). Where one pass scores every label (``soft_in_one_pass``), each row comes once,
        carrying its distribution (``soft_probs``); otherwise once per label it has probability for, that label as
        its target, weighing ``weight * p(label)``.

        Args:
            rows (`list[dict]`): the unlabeled rows (no label column needed).
            probs (`torch.Tensor`): (rows, labels) each row's label distribution, in ``labels.labels`` order.
            weight (`float`): a soft row's weight against a labelled row's 1 (``train.distill_weight``).

        Returns:
            `list[Encoded]`: the examples, row by row (label by label); labels of probability 0 are left out.

        Example:
            >>> examples = task.soft_examples([{"text": "late again"}], torch.tensor([[0.9, 0.1]]), 0.5)
            >>> [(e.weight, e.soft_probs) for e in examples]  # one pass: one example
            [(0.5, [0.9, 0.1])]
        """
        target = lambda label: None if self.linear_head else self.renderer.target_ids(  # noqa: E731
            self.labels.words[label][0])
        out = []
        for row, dist in zip(rows, probs.tolist()):
            if self.soft_in_one_pass:
                best = max(range(len(dist)), key=dist.__getitem__)  # the target; its place scores every label
                enc = self.renderer.encode(row, target(best))
                enc.label_index, enc.weight, enc.soft_probs = best, weight, dist
                out.append(enc)
                continue
            for label, p in enumerate(dist):
                if p > 0:
                    enc = self.renderer.encode(row, target(label))
                    enc.label_index, enc.weight = label, weight * p
                    out.append(enc)
        return out

    @property
    def soft_in_one_pass(self) -> bool:
        """Whether one pass over a soft row scores all its labels: always for the linear head and the ``classify``
        objective (the labels' first tokens, at one place); for ``lm``, where every label's word is one token."""
        if self.linear_head or self.objective != "lm":
            return True
        return all(len(self.renderer.target_ids(words[0])) == 1 for words in self.labels.words)

    def label_tokens(self) -> list[int]:
        """Each label's first token (of its first word): what the ``classify`` objective chooses between."""
        firsts = [self.renderer.target_ids(words[0])[0] for words in self.labels.words]
        for i, a in enumerate(firsts):
            for j in range(i):
                if firsts[j] == a:
                    raise ConfigError(
                        f"train.objective classify needs label words that start with different tokens, but "
                        f"{self.labels.words[j][0]!r} ({self.labels.labels[j]}) and {self.labels.words[i][0]!r} "
                        f"({self.labels.labels[i]}) both start with {self.renderer.tokenizer.decode([a])!r}; "
                        "change task.verbalizer or use train.objective lm")
        return firsts

    def label_weights(self, examples: list[Encoded]) -> torch.Tensor | None:
        """(labels,) per-label loss weights: None, or ``balanced`` (inverse label frequency, mean 1 over rows), the
        frequencies those of the labelled rows (soft-labelled ones, which carry a ``weight``, are not counted)."""
        if self.class_weights != "balanced":
            return None
        return balanced_weights([e.label_index for e in examples if e.weight is None], len(self.labels.labels))

    def fit_head(self, model: PTuningModel, examples: list[Encoded], batch_size: int, device) -> None:
        """``head: linear``: fit the classifier to these rows' pooled states under the current prompt (the labelled
        rows only: soft-labelled ones, which carry a ``weight``, train the prompt, not the classifier's fit)."""
        examples = [e for e in examples if e.weight is None]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            features = torch.empty(len(examples), model.encoder.table.shape[1])  # (rows, d)
            for idx, chunk in sorted_batches(examples, batch_size):
                features[idx] = self.pooled_states(model, chunk, device).cpu()
        model.classifier.fit(features.to(device), torch.tensor([e.label_index for e in examples], device=device),
                             self.label_weights(examples))
        model.train(was_training)

    def pooled_states(self, model: PTuningModel, rows: list[Encoded], device) -> torch.Tensor:
        """(B, d): ``head: linear``'s pooled states of ``rows`` (one batch); from ``pooled_cache`` where one is set
        and the model's states are the frozen model's alone (no virtual token: the linear probe)."""
        compute = lambda chunk: model.pooled_states(self.batch(chunk, device))  # noqa: E731
        if self.pooled_cache is None or not self.pooled_cache.applies(model):
            return compute(rows)
        return self.pooled_cache.states(model, rows, compute)

    def make_loss(self, examples):
        weights = self.label_weights(examples)
        if self.head.fits_classifier:
            return LinearHeadLoss(weights)
        if self.objective == "classify":
            return ClassifyLoss(torch.tensor(self.label_tokens()), weights)
        if any(e.soft_probs is not None for e in examples):  # soft rows read every label's one token
            return WeightedLMLoss(weights, torch.tensor([self.renderer.target_ids(w[0])[0] for w in self.labels.words]))
        return super().make_loss(examples) if weights is None else WeightedLMLoss(weights)

    def scores(self, model: PTuningModel, rows: list[dict], batch_size: int, device, progress=None,
               keep: int | None = None) -> torch.Tensor:
        """(rows, labels): each label's score, the best over its alternative words of the words' log-likelihood
        (``head: linear``: the classifier's log-probabilities). ``keep``: only each row's ``keep`` best labels
        are scored, the others are -inf (label words: searched best first)."""
        if self.head.fits_classifier:
            scores = self.head_scores(model, rows, batch_size, device, progress)
            return scores if keep is None else best_only(scores, keep)
        return label_word_scores(self, model, rows, batch_size, device, progress, keep)

    def head_scores(self, model: PTuningModel, rows: list[dict], batch_size: int, device,
                    progress=None) -> torch.Tensor:
        """(rows, labels): ``head: linear``'s log-probabilities."""
        scores = torch.empty(len(rows), len(self.labels.labels))
        for idx, chunk in sorted_batches([self.renderer.encode(row) for row in rows], batch_size):
            logits = model.classifier(self.pooled_states(model, chunk, device))
            scores[idx] = F.log_softmax(logits, dim=-1).float().cpu()
            if progress:
                progress(len(chunk))
        return scores

    def predict(self, model, rows, batch_size, device, progress=None):
        keep = self.cfg.top_labels
        return self.finish(model, self.scores(model, rows, batch_size, device, progress, keep), batch_size, device)

    def finish(self, model: PTuningModel, scores: torch.Tensor, batch_size: int, device) -> list[dict]:
        """Raw label scores (rows, labels) -> predictions: calibrated where the config says so, then the best label
        and the scores (``task.top_labels``: the best ones only)."""
        scores = calibrated(self, model, scores, batch_size, device)
        if self.cfg.top_labels is not None:
            scores = best_only(scores, self.cfg.top_labels)
        out = []
        for row_scores in scores:
            best = int(row_scores.argmax())
            out.append({"prediction": self.labels.labels[best],
                        "scores": {l: round(float(s), 4) for l, s in zip(self.labels.labels, row_scores)
                                   if s > -math.inf}})
        return out

    def raw_scores(self, model: PTuningModel, rows: list[dict], batch_size: int, device) -> torch.Tensor:
        """(rows, labels) log-probabilities normalised over the labels, before any calibration."""
        model.eval()
        with torch.inference_mode():
            return torch.log_softmax(self.scores(model, rows, batch_size, device), dim=-1)

    def metrics(self, rows, predictions):
        gold = [r[self.label_column] for r in rows]
        return classification_metrics(gold, [p["prediction"] for p in predictions], self.labels.labels)
