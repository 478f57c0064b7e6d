"""Probing: one target token; prediction is the top token over the vocabulary (or a given word list): P@1."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.render import Renderer
from ..errors import DataError
from .base import Task, sorted_batches
from .metrics import precision_at_1


@dataclass
class ProbingTask(Task):
    """Rows whose object (``task.label_column``) is one token; the prediction is the most likely token at the
    target position, over the whole vocabulary or over ``vocab_ids`` (LAMA's word lists). Rows whose object is
    several tokens are skipped in training and counted apart in the metrics.

    Args:
        cfg (`TaskConfig`), renderer (`Renderer`): see ``Task``.
        vocab_ids (`list[int]`, *optional*): the candidate tokens (``task.vocab_file``); None: every token.

    Example:
        >>> task = build_task(cfg.task, renderer, None)  # cfg.task.type == "probing"
        >>> task.metrics(rows, task.predict(model, rows, 32, "cpu"))["p@1"]
    """
    vocab_set: frozenset[int] = field(init=False, repr=False)  # vocab_ids as a set, for training's membership test

    def __post_init__(self):
        super().__post_init__()
        self.vocab_set = frozenset(self.vocab_ids or [])

    def _target(self, obj: str) -> list[int] | None:
        ids = self.renderer.target_ids(obj)
        return ids if len(ids) == 1 else None

    def train_examples(self, table):
        out, skipped = [], 0
        for row in table.rows:
            ids = self._target(row[self.label_column])
            if ids is None or (self.vocab_ids is not None and ids[0] not in self.vocab_set):
                skipped += 1
                continue
            out.append(self.renderer.encode(row, ids))
        return out, skipped

    def predict(self, model, rows, batch_size, device, progress=None):
        tok = self.renderer.tokenizer
        # a one-token placeholder marks the target column; for a causal LM the logit that predicts it comes from
        # the position before, which never sees the placeholder (seq2seq: the decoder's first logit, from its start)
        placeholder = [tok.mask_token_id if self.renderer.kind == "masked" else tok.pad_token_id]
        encoded = [self.renderer.encode(row, placeholder) for row in rows]
        vocab = torch.tensor(self.vocab_ids, device=device) if self.vocab_ids is not None else None
        preds: list[str] = [""] * len(rows)
        for idx, chunk in sorted_batches(encoded, batch_size):
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
