"""Score a model on a table: predictions, the task's metrics and the mean loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.render import Encoded
from ..data.tables import Table
from ..modeling.ptuning import PTuningModel
from ..session import Session
from .ensemble import mean_label_probabilities


@torch.no_grad()
def mean_loss(model: PTuningModel, session: Session, examples: list[Encoded]) -> float:
    """Mean target-token NLL (``task.head: linear``: the classifier's mean cross-entropy over rows)."""
    model.eval()
    total, count = 0.0, 0
    bs = session.cfg.train.eval_batch_size
    for start in range(0, len(examples), bs):
        batch = session.task.batch(examples[start:start + bs], session.device)
        if model.classifier is not None:
            logp = F.log_softmax(model.class_logits(batch), dim=-1)
            total += -logp.gather(1, batch["label_index"].unsqueeze(1)).sum().item()
            count += len(logp)
            continue
        logp, mask = model.token_logprobs(batch)
        total += -logp.sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def evaluate(model: PTuningModel, session: Session, table: Table, show_progress: bool = False) -> dict:
    """Dev/test metrics for ``table`` (accuracy, macro-F1, P@1 or exact match, plus loss)."""
    bar = tqdm(total=len(table), desc="evaluate", disable=not show_progress, leave=False)
    preds = session.predict(model, table.rows, progress=bar.update)
    bar.close()
    metrics = session.task.metrics(table.rows, preds)
    examples, _ = session.task.train_examples(table)
    if examples:
        metrics["loss"] = mean_loss(model, session, examples)
    return metrics


def label_probabilities(session: Session, predictions: list[dict]) -> torch.Tensor:
    """(rows, labels) probabilities from one model's predictions, in ``session``'s label order: the one-member case
    of ``ensemble.mean_label_probabilities``."""
    return mean_label_probabilities([predictions], session.task.labels.labels)
