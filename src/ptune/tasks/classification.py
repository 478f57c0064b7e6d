"""Classification: loss on the gold label's tokens (or the linear head's cross-entropy); prediction ranks every
label by likelihood, so the answer is always one of the labels, with its scores."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.render import Encoded
from ..errors import ConfigError, PtuneError
from ..evaluation.metrics import classification_metrics
from ..modeling.ptuning import PTuningModel
from .base import Task, shared_input, sorted_batches


class ClassificationTask(Task):
    def check(self, table, *, labelled=True):
        if labelled and self.label_column in table.columns:
            for i, row in enumerate(table.rows, 1):
                self.labels.index(row[self.label_column], where=f"{table.source}: row {i}: ")

    @property
    def linear_head(self) -> bool:
        return self.cfg.head == "linear"

    def train_examples(self, table):
        out = []
        for i, row in enumerate(table.rows, 1):
            label = self.labels.index(row[self.label_column], where=f"{table.source}: row {i}: ")
            # a linear head reads the input alone: the label word must not be in it
            enc = self.renderer.encode(row, None if self.linear_head else
                                       self.renderer.target_ids(self.labels.words[label][0]))
            enc.label_index = label
            out.append(enc)
        return out, 0

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

    def label_weights(self, examples) -> torch.Tensor | None:
        """Per-label loss weights: None, or ``balanced`` (inverse label frequency, mean 1 over rows)."""
        if self.class_weights != "balanced":
            return None
        counts = torch.bincount(torch.tensor([e.label_index for e in examples]), minlength=len(self.labels.labels))
        return len(examples) / (len(self.labels.labels) * counts.clamp(min=1).float())

    def fit_head(self, model: PTuningModel, examples: list[Encoded], batch_size: int, device) -> None:
        """``head: linear``: fit the classifier to these rows' pooled states under the current prompt."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            features = torch.empty(len(examples), model.encoder.table.shape[1])
            for idx, chunk in sorted_batches(examples, batch_size):
                features[idx] = model.pooled_states(self.batch(chunk, device)).cpu()
        model.classifier.fit(features.to(device), torch.tensor([e.label_index for e in examples], device=device),
                             self.label_weights(examples))
        model.train(was_training)

    def make_loss(self, examples):
        weights = self.label_weights(examples)
        if self.linear_head:
            def linear_head(model, batch):
                logp = F.log_softmax(model.class_logits(batch), dim=-1)
                gold = batch["label_index"]
                nll = -logp.gather(1, gold.unsqueeze(1)).squeeze(1)
                w = weights.to(nll.device)[gold] if weights is not None else torch.ones_like(nll)
                return (nll * w).sum(), w.sum()
            return linear_head
        if self.objective == "lm":
            if weights is None:
                return super().make_loss(examples)

            def weighted_lm(model, batch):
                logp, mask = model.token_logprobs(batch)
                w = weights.to(logp.device)[batch["label_index"]].unsqueeze(1) * mask
                return -(logp * w).sum(), w.sum()
            return weighted_lm
        candidates = torch.tensor(self.label_tokens())

        def classify(model, batch):
            logp = model.label_choice_logprobs(batch, candidates.to(batch["input_ids"].device))  # (B, L)
            gold = batch["label_index"]
            nll = -logp.gather(1, gold.unsqueeze(1)).squeeze(1)
            w = weights.to(nll.device)[gold] if weights is not None else torch.ones_like(nll)
            return (nll * w).sum(), w.sum()
        return classify

    def scores(self, model, rows, batch_size, device, progress=None) -> torch.Tensor:
        """(rows, labels): each label's score, the best over its alternative words of the words' log-likelihood
        (``head: linear``: the classifier's log-probabilities)."""
        if self.linear_head:
            scores = torch.empty(len(rows), len(self.labels.labels))
            for idx, chunk in sorted_batches([self.renderer.encode(row) for row in rows], batch_size):
                scores[idx] = F.log_softmax(model.class_logits(self.batch(chunk, device)), dim=-1).float().cpu()
                if progress:
                    progress(len(chunk))
            return scores
        targets = [(li, self.renderer.target_ids(w)) for li, ws in enumerate(self.labels.words) for w in ws]
        scores = torch.full((len(rows), len(self.labels.labels)), -math.inf)

        def record(ri, li, logp_sum, n):
            s = logp_sum / n if self.cfg.score == "mean" else logp_sum
            scores[ri, li] = max(scores[ri, li].item(), s)

        shared, items = [], []
        for ri, row in enumerate(rows):
            encoded = [(li, ids, self.renderer.encode(row, ids)) for li, ids in targets]
            prefix = shared_input(encoded) if model.can_score_continuations else None
            if prefix is not None:
                shared.append((ri, prefix))
            else:
                items += [(ri, li, enc) for li, _, enc in encoded]
        # fast path: a causal row whose rendering is the same whatever the label runs once; the label words are
        # scored from its last position and the KV cache
        words = [ids for _, ids in targets]
        n_prefix = self.renderer.shared_prefix_length() if model.use_prefix_cache else 0
        for _, chunk in sorted_batches(shared, batch_size, key=lambda it: len(it[1])):
            inputs = [c[1] for c in chunk]
            # the prefix every row shares runs once (its keys and values are cached); each row keeps >= 1 token
            n = min([n_prefix] + [len(e) - 1 for e in inputs])
            if n > 0:
                prefix = (inputs[0].input_ids[:n], inputs[0].virtual_index[:n])
                inputs = [Encoded(e.input_ids[n:], e.virtual_index[n:], e.labels[n:], e.truncated) for e in inputs]
                per_word = model.continuation_logprobs(self.batch(inputs, device), words, prefix=prefix)
            else:
                per_word = model.continuation_logprobs(self.batch(inputs, device), words)
            for (li, ids), logp in zip(targets, per_word):
                for (ri, _), total in zip(chunk, logp.sum(-1).tolist()):
                    record(ri, li, total, len(ids))
            if progress:
                progress(len(chunk))  # rows
        # plain path: one candidate input per (row, label, alternative word)
        left = {ri: len(targets) for ri, _, _ in items}
        for _, chunk in sorted_batches(items, batch_size, key=lambda it: len(it[2])):
            logp, mask = model.token_logprobs(self.batch([c[2] for c in chunk], device))
            done = 0
            for (ri, li, _), total, n in zip(chunk, logp.sum(-1).tolist(), mask.sum(-1).tolist()):
                record(ri, li, total, n)
                left[ri] -= 1
                done += left[ri] == 0
            if progress and done:
                progress(done)  # rows all of whose candidates are scored
        return scores

    def content_free_rows(self) -> list[dict]:
        """Inputs that carry no evidence: every data field "N/A", or empty (Zhao et al., 2021)."""
        columns = [self.renderer.field_map.get(f, f) for f in self.renderer.template.fields]
        return [{c: "N/A" for c in columns}, {c: "" for c in columns}]

    def predict(self, model, rows, batch_size, device, progress=None):
        return self.finish(model, self.scores(model, rows, batch_size, device, progress), batch_size, device)

    def finish(self, model, scores: torch.Tensor, batch_size: int, device) -> list[dict]:
        """Raw label scores -> predictions: calibrated where the config says so, then the best label and the scores."""
        if self.cfg.calibrate == "content_free":
            # p(label | x) / mean p(label | content-free), in logs; each row's scores normalised over the labels
            free = torch.log_softmax(self.scores(model, self.content_free_rows(), batch_size, device), dim=-1)
            prior = torch.logsumexp(free, dim=0) - math.log(len(free))
            scores = torch.log_softmax(scores, dim=-1) - prior
        elif self.cfg.calibrate == "prior":
            offsets = getattr(model, "label_offsets", None)
            if offsets is None:
                raise PtuneError("task.calibrate is 'prior' but this model has no fitted label offsets (they are "
                                 "fitted at the end of training, on data.unlabeled)")
            scores = torch.log_softmax(scores, dim=-1) + offsets
        out = []
        for row_scores in scores:
            best = int(row_scores.argmax())
            out.append({"prediction": self.labels.labels[best],
                        "scores": {l: round(float(s), 4) for l, s in zip(self.labels.labels, row_scores)}})
        return out

    def raw_scores(self, model, rows, batch_size, device) -> torch.Tensor:
        """(rows, labels) log-probabilities normalised over the labels, before any calibration."""
        model.eval()
        with torch.inference_mode():
            return torch.log_softmax(self.scores(model, rows, batch_size, device), dim=-1)

    def metrics(self, rows, predictions):
        gold = [r[self.label_column] for r in rows]
        return classification_metrics(gold, [p["prediction"] for p in predictions], self.labels.labels)
