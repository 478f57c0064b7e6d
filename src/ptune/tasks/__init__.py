"""Task types: how rows become training examples, predictions and metrics (one module each), and the one place
that maps ``task.type`` to its class.

For a seq2seq model the target tokens are the decoder's (``Encoded.decoder_labels``); everything else is the same.
"""

from __future__ import annotations

from ..config import TaskConfig
from ..data.labels import LabelSpace
from ..data.render import Renderer
from ..modeling.components import Head, build_head
from .base import Task
from .classification import ClassificationTask
from .generation import GenerationTask
from .probing import ProbingTask, load_vocab_ids

TASKS = {"classification": ClassificationTask, "generation": GenerationTask, "probing": ProbingTask}


def build_task(cfg: TaskConfig, renderer: Renderer, labels: LabelSpace | None, *, objective: str = "lm",
               class_weights: str = "none", head: Head | None = None) -> Task:
    """The task object for ``cfg.type``; ``objective`` and ``class_weights`` are the training config's
    (``train.objective``, ``train.class_weights``); ``head``: the session's (default: ``cfg.head``'s)."""
    vocab = load_vocab_ids(cfg.vocab_file, renderer) if cfg.type == "probing" and cfg.vocab_file else None
    return TASKS[cfg.type](cfg, renderer, labels, vocab, objective, class_weights, head or build_head(cfg.head))
