"""Classification rows of several tasks over one causal base, scored in shared model calls (the server's mixed
batches): the tasks' prompt tables are stacked into one and each row's virtual positions point into its own part."""

from __future__ import annotations

import math

import torch

from ..data.render import Encoded, collate
from ..modeling.encoders import EmbeddingEncoder
from ..modeling.ptuning import PTuningModel
from .base import shared_input, sorted_batches
from .classification import ClassificationTask


def classify_mixed(groups: list[tuple[ClassificationTask, PTuningModel, list[dict]]], batch_size: int,
                   device) -> list[list[dict]]:
    """Rows of several classification tasks over one causal base model, scored in shared model calls: the tasks'
    prompt tables are stacked into one, each row's virtual positions point into its own task's part, and every label
    word of every task is scored from the same pass (the server's mixed batches). Returns each group's predictions,
    the same as its own ``predict``."""
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
            prefix = shared_input([(li, ids, task.renderer.encode(row, ids)) for li, ids in targets[g]])
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
    for _, chunk in sorted_batches(items, batch_size, key=lambda it: len(it[2])):
        per_word = combined.continuation_logprobs(collate([c[2] for c in chunk], pad, "left", device), word_list)
        for row_in_chunk, (g, ri, _) in enumerate(chunk):
            task = groups[g][0]
            for li, ids in targets[g]:
                logp = per_word[words[tuple(ids)]][row_in_chunk].sum().item()
                s_ = logp / len(ids) if task.cfg.score == "mean" else logp
                scores[g][ri, li] = max(scores[g][ri, li].item(), s_)
    return [task.finish(model, sc, batch_size, device) for (task, model, _), sc in zip(groups, scores)]
