"""Task types: how rows become training examples, predictions and metrics.

- ``ClassificationTask``: loss on the gold label's tokens; prediction ranks every label by likelihood, so the answer
  is always one of the labels, with its scores.
- ``GenerationTask``: loss on the target text (and EOS); prediction by greedy ``generate`` with the KV cache.
- ``ProbingTask``: one target token; prediction is the top token over the vocabulary (or a given word list): P@1.

For a seq2seq model the target tokens are the decoder's (``Encoded.decoder_labels``); everything else is the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TaskConfig
from .data import Encoded, Renderer, Table, collate
from .errors import ConfigError, DataError, PtuneError
from .evaluate import classification_metrics, precision_at_1
from .labels import LabelSpace
from .model import PTuningModel


def _batches(items: list, size: int, key=len):
    """Length-sorted batches (less padding); yields (original indices, items)."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        yield idx, [items[i] for i in idx]


def _shared_prefix(encoded: list[tuple[int, list[int], Encoded]]) -> Encoded | None:
    """The target-free input shared by every candidate of a row, or None where truncation made them differ."""
    first = None
    for _, ids, enc in encoded:
        n = len(ids)
        if n == 0 or enc.input_ids[len(enc) - n:] != ids:
            return None
        cut = (enc.input_ids[:len(enc) - n], enc.virtual_index[:len(enc) - n])
        if first is None:
            first = cut
        elif cut != first:
            return None
    if first is None or not first[0]:
        return None
    return Encoded(first[0], first[1], [-100] * len(first[0]), any(e.truncated for _, _, e in encoded))


@dataclass
class Task:
    cfg: TaskConfig
    renderer: Renderer
    labels: LabelSpace | None = None
    vocab_ids: list[int] | None = None
    objective: str = "lm"
    class_weights: str = "none"

    @property
    def label_column(self) -> str:
        return self.cfg.label_column

    @property
    def pad_side(self) -> str:
        return "left" if self.renderer.kind == "causal" else "right"

    def batch(self, examples: list[Encoded], device, share_prefix: bool = False) -> dict[str, torch.Tensor]:
        """Padded tensors. ``share_prefix`` (causal LMs): the tokens every row starts with (virtual tokens and anchor
        text before the first data field) are taken out and given once, as ``prefix_ids``/``prefix_virtual``
        (1, P), for the model to run once for the whole batch; every row keeps at least one token."""
        pad = self.renderer.tokenizer.pad_token_id
        if share_prefix and self.renderer.kind == "causal" and len(examples) > 1:
            n = min([self.renderer.shared_prefix_length()] + [len(e) - 1 for e in examples])
            if n > 0:
                rest = [Encoded(e.input_ids[n:], e.virtual_index[n:], e.labels[n:], e.truncated, None, e.label_index)
                        for e in examples]
                out = collate(rest, pad, "left", device)
                first = examples[0]
                out["prefix_ids"] = torch.tensor([first.input_ids[:n]], device=out["input_ids"].device)
                out["prefix_virtual"] = torch.tensor([first.virtual_index[:n]], device=out["input_ids"].device)
                return out
        return collate(examples, pad, self.pad_side, device)

    def check(self, table: Table, *, labelled: bool = True) -> None:
        """Raise a DataError naming file, row and field for anything this task cannot use."""

    def train_examples(self, table: Table) -> tuple[list[Encoded], int]:
        """Examples for training/loss, and how many rows were skipped (probing: object not one token)."""
        raise NotImplementedError

    def make_loss(self, examples: list[Encoded]):
        """The training loss for these rows, as ``fn(model, batch) -> (summed loss, its weight)``; the mean is their
        ratio (kept apart so that data-parallel processes can sum both before dividing)."""
        def lm(model: PTuningModel, batch):
            logp, mask = model.token_logprobs(batch)
            return -logp.sum(), mask.sum()
        return lm

    def predict(self, model: PTuningModel, rows: list[dict], batch_size: int, device, progress=None) -> list[dict]:
        raise NotImplementedError

    def metrics(self, rows: list[dict], predictions: list[dict]) -> dict:
        raise NotImplementedError


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
            for idx, chunk in _batches(examples, batch_size):
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
            for idx, chunk in _batches([self.renderer.encode(row) for row in rows], batch_size):
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
            prefix = _shared_prefix(encoded) if model.can_score_continuations else None
            if prefix is not None:
                shared.append((ri, prefix))
            else:
                items += [(ri, li, enc) for li, _, enc in encoded]
        # fast path: a causal row whose rendering is the same whatever the label runs once; the label words are
        # scored from its last position and the KV cache
        words = [ids for _, ids in targets]
        n_prefix = self.renderer.shared_prefix_length() if model.use_prefix_cache else 0
        for _, chunk in _batches(shared, batch_size, key=lambda it: len(it[1])):
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
        for _, chunk in _batches(items, batch_size, key=lambda it: len(it[2])):
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


class GenerationTask(Task):
    def _target(self, text: str) -> list[int]:
        eos = self.renderer.tokenizer.eos_token_id
        return self.renderer.target_ids(text) + ([eos] if eos is not None else [])

    def train_examples(self, table):
        return [self.renderer.encode(row, self._target(row[self.label_column])) for row in table.rows], 0

    def predict(self, model, rows, batch_size, device, progress=None):
        tok = self.renderer.tokenizer
        encoded = [self.renderer.encode(row) for row in rows]
        texts: list[str] = [""] * len(rows)
        for idx, chunk in _batches(encoded, batch_size):
            out = model.generate(self.batch(chunk, device), self.cfg.max_new_tokens, tok.eos_token_id,
                                 tok.pad_token_id)
            for i, seq in zip(idx, out.tolist()):
                texts[i] = tok.decode(seq, skip_special_tokens=True).strip()
            if progress:
                progress(len(chunk))
        return [{"prediction": t} for t in texts]

    def metrics(self, rows, predictions):
        gold = [r[self.label_column].strip() for r in rows]
        pred = [p["prediction"] for p in predictions]
        return {"exact_match": sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1), "n": len(gold)}


class ProbingTask(Task):
    def _target(self, obj: str) -> list[int] | None:
        ids = self.renderer.target_ids(obj)
        return ids if len(ids) == 1 else None

    def train_examples(self, table):
        out, skipped = [], 0
        for row in table.rows:
            ids = self._target(row[self.label_column])
            if ids is None or (self.vocab_ids is not None and ids[0] not in self._vocab_set):
                skipped += 1
                continue
            out.append(self.renderer.encode(row, ids))
        return out, skipped

    @property
    def _vocab_set(self) -> set[int]:
        if not hasattr(self, "_vs"):
            self._vs = set(self.vocab_ids or [])
        return self._vs

    def predict(self, model, rows, batch_size, device, progress=None):
        tok = self.renderer.tokenizer
        # a one-token placeholder marks the target column; for a causal LM the logit that predicts it comes from
        # the position before, which never sees the placeholder (seq2seq: the decoder's first logit, from its start)
        placeholder = [tok.mask_token_id if self.renderer.kind == "masked" else tok.pad_token_id]
        encoded = [self.renderer.encode(row, placeholder) for row in rows]
        vocab = torch.tensor(self.vocab_ids, device=device) if self.vocab_ids is not None else None
        preds: list[str] = [""] * len(rows)
        for idx, chunk in _batches(encoded, batch_size):
            logits, _ = model.target_logits(self.batch(chunk, device))
            logits = logits[:, 0]  # (B, V): the single target column
            top = vocab[logits[:, vocab].argmax(-1)] if vocab is not None else logits.argmax(-1)
            for i, t in zip(idx, top.tolist()):
                preds[i] = tok.decode([t]).strip()
            if progress:
                progress(len(chunk))
        return [{"prediction": p} for p in preds]

    def metrics(self, rows, predictions):
        gold, pred, skipped = [], [], 0
        for row, p in zip(rows, predictions):
            if self._target(row[self.label_column]) is None:
                skipped += 1  # an object of several tokens cannot be a P@1 hit; counted apart, as LAMA does
                continue
            gold.append(row[self.label_column].strip())
            pred.append(p["prediction"])
        return {"p@1": precision_at_1(gold, pred), "n": len(gold), "skipped_multi_token": skipped}


TASKS = {"classification": ClassificationTask, "generation": GenerationTask, "probing": ProbingTask}


def load_vocab_ids(path: str, renderer: Renderer) -> list[int]:
    """Token ids of a JSON word list (LAMA's 29k/34k vocabularies); words that are not one token are dropped."""
    path, _, key = str(path).partition("#")
    try:
        words = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the vocabulary file: {err}") from None
    if isinstance(words, dict):
        # LAMA's 29k/34k files map a model name to its word list: ``FILE#bert-base-cased`` picks one
        if not key or key not in words:
            raise DataError(f"{path}: holds several word lists ({', '.join(map(str, words))}); name one as "
                            f"{path}#KEY")
        words = words[key]
    if not isinstance(words, list):
        raise DataError(f"{path}: expected a JSON list of words")
    ids = set()
    for w in words:
        t = renderer.target_ids(str(w))
        if len(t) == 1:
            ids.add(t[0])
    if not ids:
        raise DataError(f"{path}: no word of the vocabulary file is a single token for this tokenizer")
    return sorted(ids)


def build_task(cfg: TaskConfig, renderer: Renderer, labels: LabelSpace | None) -> Task:
    vocab = load_vocab_ids(cfg.vocab_file, renderer) if cfg.type == "probing" and cfg.vocab_file else None
    return TASKS[cfg.type](cfg, renderer, labels, vocab)


def classify_mixed(groups: list[tuple[ClassificationTask, PTuningModel, list[dict]]], batch_size: int,
                   device) -> list[list[dict]]:
    """Rows of several classification tasks over one causal base model, scored in shared model calls: the tasks'
    prompt tables are stacked into one, each row's virtual positions point into its own task's part, and every label
    word of every task is scored from the same pass (the server's mixed batches). Returns each group's predictions,
    the same as its own ``predict``."""
    from .encoder import EmbeddingEncoder

    if any(task.linear_head for task, _, _ in groups):  # no label words to share: those tasks score on their own
        alone = {g for g, (task, _, _) in enumerate(groups) if task.linear_head}
        rest = [group for g, group in enumerate(groups) if g not in alone]
        mixed = iter(classify_mixed(rest, batch_size, device) if rest else [])
        return [task.predict(model, rows, batch_size, device) if g in alone else next(mixed)
                for g, (task, model, rows) in enumerate(groups)]
    base = groups[0][1].base
    if any(m.base is not base or not m.can_score_continuations for _, m, _ in groups):
        raise ValueError("classify_mixed needs causal models over one shared base")
    tables = [m.prompt_table() for _, m, _ in groups]
    stacked = torch.cat(tables)
    combined = PTuningModel(base, EmbeddingEncoder(len(stacked), stacked.shape[1]).to(stacked.device), "causal")
    combined.eval()  # (a new module trains by default, and would run its encoder instead of the stacked table)
    combined.set_prompt_table(stacked)
    words: dict[tuple, int] = {}  # every task's label words (token ids), each scored once per row
    targets = []
    for task, _, _ in groups:
        t = [(li, task.renderer.target_ids(w)) for li, ws in enumerate(task.labels.words) for w in ws]
        targets.append(t)
        for _, ids in t:
            words.setdefault(tuple(ids), len(words))
    scores = [torch.full((len(rows), len(task.labels.labels)), -math.inf) for task, _, rows in groups]
    items, offset = [], 0
    for g, ((task, model, rows), table) in enumerate(zip(groups, tables)):
        alone = []
        for ri, row in enumerate(rows):
            prefix = _shared_prefix([(li, ids, task.renderer.encode(row, ids)) for li, ids in targets[g]])
            if prefix is None:  # truncation made the label inputs differ: this row takes its task's own path
                alone.append(ri)
                continue
            virtual = [v + offset if v >= 0 else -1 for v in prefix.virtual_index]
            items.append((g, ri, Encoded(prefix.input_ids, virtual, prefix.labels, prefix.truncated)))
        if alone:
            scores[g][alone] = task.scores(model, [rows[i] for i in alone], batch_size, device)
        offset += len(table)
    word_list = [list(w) for w in words]
    pad = groups[0][0].renderer.tokenizer.pad_token_id
    for _, chunk in _batches(items, batch_size, key=lambda it: len(it[2])):
        per_word = combined.continuation_logprobs(collate([c[2] for c in chunk], pad, "left", device), word_list)
        for row_in_chunk, (g, ri, _) in enumerate(chunk):
            task = groups[g][0]
            for li, ids in targets[g]:
                logp = per_word[words[tuple(ids)]][row_in_chunk].sum().item()
                s_ = logp / len(ids) if task.cfg.score == "mean" else logp
                scores[g][ri, li] = max(scores[g][ri, li].item(), s_)
    return [task.finish(model, sc, batch_size, device) for (task, model, _), sc in zip(groups, scores)]


def prior_offsets(logp: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Per-label offsets b such that the mean over rows of softmax(logp + b) equals ``shares``: the minimum of the
    convex mean_i logsumexp(logp_i + b) - shares . b (its gradient is the mean prediction minus the shares).
    ``logp``: (rows, labels) log-probabilities; ``shares``: (labels,) positive, summing to 1. Centred to mean 0."""
    logp = logp.double()
    target = shares.double()
    b = torch.zeros(logp.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        value = torch.logsumexp(logp + b, dim=-1).mean() - (target * b).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(objective)
    b = b.detach()
    return (b - b.mean()).float()
