"""The tasks a server holds: each checkpoint is a ``Predictor`` over one shared frozen base model (a prompt table of
a few kilobytes per task), named by the client in every request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PtuneError
from ..inference import Predictor
from .protocol import NAME_RE


@dataclass
class ServedTask:
    """One checkpoint being served under ``name``.

    Args:
        name (str): what clients call it (``task`` in native requests, ``model`` in OpenAI ones).
        folder (str): the checkpoint directory it was loaded from.
        predictor (Predictor): the loaded checkpoint, over the server's base model.

    Example:
        >>> task = ServedTask("topics", "runs/topics", Predictor.load("runs/topics"))  # doctest: +SKIP
        >>> task.columns  # doctest: +SKIP
        ['text']
    """

    name: str
    folder: str
    predictor: Predictor
    created: int = field(default_factory=lambda: int(time.time()))
    """When it was loaded (Unix seconds; OpenAI's model ``created``)."""

    @property
    def type(self) -> str:
        return self.predictor.session.cfg.task.type

    @property
    def columns(self) -> list[str]:
        """Row keys the template needs (template fields mapped through data.columns)."""
        cfg = self.predictor.session.cfg
        return [cfg.data.columns.get(f, f) for f in self.predictor.session.template.fields]

    @property
    def labels(self) -> list[str] | None:
        labels = self.predictor.session.task.labels
        return labels.labels if labels else None

    @property
    def default_max_new_tokens(self) -> int:
        """The checkpoint's ``task.max_new_tokens``: what a generation request gets when it names no budget."""
        return self.predictor.session.cfg.task.max_new_tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text under the base model's tokenizer (no special tokens). Run it on the model thread:
        the tokenizer is not shared across threads."""
        tok = self.predictor.session.tokenizer
        return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def describe(self) -> dict:
        return {"name": self.name, "type": self.type, "template": self.predictor.meta["template"],
                "fields": self.columns, "labels": self.labels,
                "max_new_tokens": self.default_max_new_tokens if self.type == "generation" else None}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PtuneError(f"serve: task name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def load_tasks(checkpoints: dict[str, str | Path], device: str | None = None) -> dict[str, ServedTask]:
    """One Predictor per checkpoint, all over the base model the first one loads (others must match it).

    Args:
        checkpoints (dict[str, str | Path]): task name -> checkpoint directory.
        device (str | None): overrides the checkpoints' ``model.device``.

    Returns:
        dict[str, ServedTask]: the loaded tasks, in the given order.

    Example:
        >>> tasks = load_tasks({"topics": "runs/topics", "sentiment": "runs/sst2"})  # doctest: +SKIP
    """
    if not checkpoints:
        raise PtuneError("serve: give at least one checkpoint directory")
    tasks: dict[str, ServedTask] = {}
    base = None
    for name, folder in checkpoints.items():
        check_name(name)
        predictor = Predictor.load(folder, base=base, device=device)
        base = base or predictor.session.base
        tasks[name] = ServedTask(name, str(folder), predictor)
    return tasks


def parse_checkpoint_args(args: list[str]) -> dict[str, str]:
    """``DIR`` (named after the folder) or ``NAME=DIR``; names must be unique.

    Args:
        args (list[str]): the command line's checkpoint arguments.

    Returns:
        dict[str, str]: task name -> checkpoint directory.

    Example:
        >>> parse_checkpoint_args(["a=/x/ckpt", "/y/other"])
        {'a': '/x/ckpt', 'other': '/y/other'}
    """
    out: dict[str, str] = {}
    for arg in args:
        if "=" in arg and not Path(arg).exists():
            name, folder = arg.split("=", 1)
        else:
            name, folder = Path(arg).resolve().name, arg
        if name in out:
            raise PtuneError(f"serve: two checkpoints are named {name!r}; name them with NAME=DIR")
        out[name] = folder
    return out
