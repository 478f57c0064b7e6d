"""Score a model on a table: predictions, the task's metrics and the mean loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.render import Encoded
from .data.tables import Table
from .modeling.ptuning import PTuningModel
from .session import Session
from .tasks import Task
from .tasks.ensemble import mean_label_probabilities


@torch.no_grad()
def mean_loss(model: PTuningModel, session: Session, examples: list[Encoded], task: Task | None = None) -> float:
    """Mean target-token NLL (``task.head: linear``: the classifier's mean cross-entropy over rows).

    Args:
        model (`PTuningModel`): the model to score.
        session (`Session`): gives the device, the batch size and (unless ``task`` is given) the task.
        examples (`list[Encoded]`): rendered rows with their targets (``task.train_examples``).
        task (`Task`, *optional*): the task that batches the rows; ``session.task`` if None.

    Returns:
        `float`: the mean over target tokens (over rows for a linear head); 0.0 without any.

    Example:
        >>> examples, _ = session.task.train_examples(dev)  # doctest: +SKIP
        >>> mean_loss(model, session, examples)  # doctest: +SKIP
    """
    task = task or session.task
    model.eval()
    total, count = 0.0, 0
    bs = session.cfg.train.eval_batch_size
    for start in range(0, len(examples), bs):
        batch = task.batch(examples[start:start + bs], session.device)
        if model.classifier is not None:
            logp = F.log_softmax(model.class_logits(batch), dim=-1)  # (B, labels)
            total += -logp.gather(1, batch["label_index"].unsqueeze(1)).sum().item()
            count += len(logp)
            continue
        logp, mask = model.token_logprobs(batch)
        total += -logp.sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def predict(model: PTuningModel, session: Session, rows: list[dict], task: Task | None = None,
            progress=None) -> list[dict]:
    """Predictions for ``rows``, read out by ``task`` (a variant of ``session.task`` with other prediction-time
    settings, say) or by ``session.task``.

    Args:
        model (`PTuningModel`): the model, put in eval mode here.
        session (`Session`): gives the device, the batch size and (unless ``task`` is given) the task.
        rows (`list[dict]`): input rows.
        task (`Task`, *optional*): the task that predicts; ``session.task`` if None.
        progress (`callable`, *optional*): called with the number of rows done as they finish.

    Returns:
        `list[dict]`: one prediction per row (``"prediction"``, and ``"scores"`` for classification).

    Example:
        >>> calibrated = dataclasses.replace(session.task, cfg=dataclasses.replace(  # doctest: +SKIP
        ...     session.task.cfg, calibrate="content_free"))
        >>> predict(model, session, table.rows, task=calibrated)  # doctest: +SKIP
    """
    if task is None:
        return session.predict(model, rows, progress=progress)
    model.eval()
    with torch.inference_mode():
        return task.predict(model, rows, session.cfg.train.eval_batch_size, session.device, progress)


def evaluate(model: PTuningModel, session: Session, table: Table, show_progress: bool = False,
             task: Task | None = None, loss: bool = True) -> dict:
    """Dev/test metrics for ``table``: the task's metrics plus the mean loss where the rows have targets.

    Args:
        model (`PTuningModel`): the model to score.
        session (`Session`): the session the model belongs to.
        table (`Table`): labelled rows.
        show_progress (`bool`): show a progress bar over the rows.
        task (`Task`, *optional*): predict and score with this task (``session.task`` with other prediction-time
            settings, say) instead of ``session.task``.
        loss (`bool`): also the mean loss, a second pass over the rows; False where no one reads it (a search
            ranks by the task's metrics alone).

    Returns:
        `dict`: the task's metrics (``accuracy``, ``macro_f1`` and ``n`` for classification; ``p@1`` for probing;
        exact match for generation) and, with ``loss``, ``loss``.

    Example:
        >>> evaluate(model, session, dev_table)  # doctest: +SKIP
        {'accuracy': ..., 'macro_f1': ..., 'n': ..., 'loss': ...}
    """
    bar = tqdm(total=len(table), desc="evaluate", disable=not show_progress, leave=False)
    preds = predict(model, session, table.rows, task, progress=bar.update)
    bar.close()
    task = task or session.task
    metrics = task.metrics(table.rows, preds)
    examples, _ = task.train_examples(table) if loss else ([], 0)
    if examples:
        metrics["loss"] = mean_loss(model, session, examples, task)
    return metrics


def label_probabilities(session: Session, predictions: list[dict]) -> torch.Tensor:
    """(rows, labels) probabilities from one model's predictions, in ``session``'s label order: the one-member case
    of ``ensemble.mean_label_probabilities``."""
    return mean_label_probabilities([predictions], session.task.labels.labels)
