"""Classification rows of several tasks over one causal base, scored in shared model calls (the server's mixed
batches): the tasks' prompt tables are stacked into one and each row's virtual positions point into its own part."""

from __future__ import annotations

import torch

from ..data.render import Encoded
from ..modeling.encoders import EmbeddingEncoder
from ..modeling.ptuning import PTuningModel, build_ptuning_model
from .base import sorted_batches
from .classification import ClassificationTask
from .label_scoring import LabelScores, continuation_scores, label_word_ids, score_candidates, split_shared_inputs

Group = tuple[ClassificationTask, PTuningModel, list[dict]]


def stacked_model(base, tables: list[torch.Tensor]) -> PTuningModel:
    """A causal model over ``base`` serving the tables (n_i, d) stacked into one (sum n_i, d), in evaluation mode."""
    stacked = torch.cat(tables)
    encoder = EmbeddingEncoder(len(stacked), stacked.shape[1]).to(stacked.device)
    combined = build_ptuning_model(base, encoder, "causal")
    combined.eval()  # (a new module trains by default, and would run its encoder instead of the stacked table)
    combined.set_prompt_table(stacked)
    return combined


def shifted(prefix: Encoded, offset: int) -> Encoded:
    """``prefix`` with its virtual positions pointing ``offset`` rows further into the stacked table."""
    virtual = [v + offset if v >= 0 else -1 for v in prefix.virtual_index]
    return Encoded(prefix.input_ids, virtual, prefix.labels, prefix.truncated)


def classify_mixed(groups: list[Group], batch_size: int, device) -> list[list[dict]]:
    """Rows of several classification tasks over one causal base model, scored in shared model calls: the tasks'
    prompt tables are stacked into one, each row's virtual positions point into its own task's part, and every label
    word of every task is scored from the same pass (the server's mixed batches).

    Args:
        groups (`list[tuple[ClassificationTask, PTuningModel, list[dict]]]`): each task, its model and its rows.
        batch_size (`int`), device: for scoring.

    Returns:
        `list[list[dict]]`: each group's predictions, the same as its own ``predict``.
    """
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
    targets = [label_word_ids(task) for task, _, _ in groups]
    words: dict[tuple, int] = {}  # every task's label words (token ids), each scored once per row
    for group_targets in targets:
        for _, ids in group_targets:
            words.setdefault(tuple(ids), len(words))
    scores = [LabelScores(len(rows), len(task.labels.labels), task.cfg.score == "mean") for task, _, rows in groups]
    items, offset = [], 0
    for g, ((task, model, rows), table) in enumerate(zip(groups, tables)):
        shared, candidates = split_shared_inputs(task, rows, targets[g], can_share=True)
        items += [(g, ri, shifted(prefix, offset)) for ri, prefix in shared]
        # rows whose truncation made the label inputs differ take their task's own per-candidate path
        score_candidates(task, model, candidates, scores[g], batch_size, device)
        offset += len(table)
    combined = stacked_model(base, tables)
    word_list = [list(w) for w in words]
    pad = groups[0][0].renderer.tokenizer.pad_token_id
    for _, chunk in sorted_batches(items, batch_size, key=lambda it: len(it[2])):
        per_word = continuation_scores(combined, [c[2] for c in chunk], word_list, pad, device)
        totals = [logp.sum(-1).tolist() for logp in per_word]  # per word, each row's log-likelihood
        for b, (g, ri, _) in enumerate(chunk):
            for li, ids in targets[g]:
                scores[g].record(ri, li, totals[words[tuple(ids)]][b], len(ids))
    return [task.finish(model, sc.values, batch_size, device) for (task, model, _), sc in zip(groups, scores)]
