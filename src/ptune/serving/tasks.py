"""The tasks a server holds, possibly a thousand over one frozen base model, so each keeps only what answering needs:
its prompt table (n, d), a linear head's weights or calibration offsets where it has them, and the ``Session``
(template, renderer, labels) that it shares with every task of the same serving config. The encoder's weights are
checked against the config and dropped (answers read the saved table only).

Tasks that load the same checkpoint (the same prompt table, by its file's SHA-256) share one copy of the table on
the device. Models over the base are built when a task is used and kept for the most recently used tasks only
(``TaskStore.max_models``): each holds its shared-prefix KV cache (layers x 2 x P x d_kv numbers), which a rarely
used task would otherwise keep for nothing. Classification rows of several tasks collected together need no model
of their own (``tasks.mixed.MixedScorer`` splices the tables they bring).
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import MANIFEST
from ..errors import CheckpointError, PtuneError
from ..inference import Predictor, SavedCheckpoint, read_checkpoint
from ..modeling.base import FrozenBase
from ..modeling.deep import DeepPromptEncoder, kv_layout
from ..modeling.encoders import EmbeddingEncoder
from ..modeling.heads import LinearHead
from ..modeling.ptuning import PTuningModel, build_ptuning_model
from ..modeling.scoring import cache_argument
from ..session import Session, head_layer, open_session
from ..tasks.mixed import MixedScorer
from .paths import check_inside, confined_vocab
from .protocol import NAME_RULE, valid_name

INFERENCE_TRAIN_KEYS = ("max_length", "eval_batch_size", "objective", "class_weights")
"""The ``train`` keys that prediction reads (how rows are cut and batched, what the task is built with)."""


def serving_key(saved: SavedCheckpoint) -> str:
    """What decides how a checkpoint answers apart from its trained tensors: the task, base model, column map,
    the train keys prediction reads, the encoder section (its saved weights are checked against it) and the
    labels. Checkpoints with the same key share one ``Session``.

    Args:
        saved (SavedCheckpoint): a checkpoint as read.

    Returns:
        str: a canonical JSON text.

    Example:
        >>> serving_key(read_checkpoint("runs/seed-1")) == serving_key(read_checkpoint("runs/seed-2"))  # doctest: +SKIP
        True
    """
    cfg = saved.cfg.to_dict()
    return json.dumps({"task": cfg["task"], "model": cfg["model"], "encoder": cfg["encoder"],
                       "columns": cfg["data"]["columns"], "labels": saved.meta.get("labels"),
                       "train": {k: cfg["train"][k] for k in INFERENCE_TRAIN_KEYS}}, sort_keys=True)


@dataclass(eq=False)  # tasks are told apart by identity: a task removed and added again is a new one
class ServedTask:
    """One checkpoint being served under ``name``: its prompt table and whatever else it alone needs.

    Args:
        name (str): what clients call it (``task`` in native requests, ``model`` in OpenAI ones).
        folder (str): the checkpoint directory it was loaded from.
        session (Session): the config, base model, template and task, shared with every task of the same serving
            config.
        table (torch.Tensor): (n, d) the prompt table.
        store (TaskStore): where its model is built and kept while it is used.
        head (dict[str, torch.Tensor]): ``task.head: linear``'s classifier weights (``classifier.*``), else empty.
        label_offsets (torch.Tensor | None): (labels,) ``task.calibrate: prior``'s offsets.
        deep (torch.Tensor | None): (n_deep, L*2*H*D) a deep prompt's keys and values (``encoder.deep_tokens``).

    Example:
        >>> task = TaskStore().load("topics", "runs/topics")  # doctest: +SKIP
        >>> task.columns, task.table.shape  # doctest: +SKIP
        (['text'], torch.Size([8, 576]))
    """

    name: str
    folder: str
    session: Session
    table: torch.Tensor
    store: TaskStore = field(repr=False)
    head: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    label_offsets: torch.Tensor | None = None
    deep: torch.Tensor | None = field(default=None, repr=False)
    created: int = field(default_factory=lambda: int(time.time()))
    """When it was loaded (Unix seconds; OpenAI's model ``created``)."""

    @property
    def type(self) -> str:
        return self.session.cfg.task.type

    @property
    def template(self) -> str:
        return self.session.cfg.task.template

    @property
    def columns(self) -> list[str]:
        """Row keys the template needs (template fields mapped through data.columns)."""
        columns = self.session.cfg.data.columns
        return [columns.get(f, f) for f in self.session.template.fields]

    @property
    def optional_columns(self) -> set[str]:
        """Row keys a request may leave out or send empty (``data.optional_fields``)."""
        return self.session.cfg.data.optional_columns(self.session.template.fields)

    @property
    def labels(self) -> list[str] | None:
        labels = self.session.task.labels
        return labels.labels if labels else None

    @property
    def default_max_new_tokens(self) -> int:
        """The checkpoint's ``task.max_new_tokens``: what a generation request gets when it names no budget."""
        return self.session.cfg.task.max_new_tokens

    @property
    def mixable(self) -> bool:
        """Whether its rows can share model calls with other tasks' rows: its session allows it (classification by
        label words through an input prompt over a causal base, ``Session.supports``) and the base scores
        continuations."""
        return self.session.supports.mixing and self.store.scores_continuations

    @property
    def model(self) -> PTuningModel:
        """Its model over the base (evaluation mode), built on first use and kept while it is recently used. Use it
        on the model thread."""
        return self.store.model(self)

    @property
    def predictor(self) -> Predictor:
        """A ``Predictor`` over its model (built as ``model`` says)."""
        return Predictor(self.session, self.model, {"template": self.template})

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text under the base model's tokenizer (no special tokens). Run it on the model thread:
        the tokenizer is not shared across threads."""
        tok = self.session.tokenizer
        return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def describe(self) -> dict:
        return {"name": self.name, "type": self.type, "template": self.template, "fields": self.columns,
                "labels": self.labels,
                "max_new_tokens": self.default_max_new_tokens if self.type == "generation" else None}


class TaskStore:
    """The parts tasks share: one base model, one ``Session`` per serving config, the models of the most recently
    used tasks (each with its prefix cache) and the scorer of mixed-task batches.

    Args:
        device (str | None): overrides the checkpoints' ``model.device``.
        base (FrozenBase | None): the base model (else the first checkpoint's, loaded once).
        max_models (int): how many tasks' models are kept at once.

    Example:
        >>> store = TaskStore(max_models=16)  # doctest: +SKIP
        >>> tasks = {name: store.load(name, folder) for name, folder in [("a", "runs/a"), ("b", "runs/b")]}  # doctest: +SKIP
    """

    def __init__(self, device: str | None = None, base: FrozenBase | None = None, max_models: int = 32):
        if max_models < 1:
            raise PtuneError("serve: keep at least one task model")
        self.device = device
        self.base = base
        self.max_models = max_models
        self.sessions: dict[str, tuple[Session, dict[str, tuple]]] = {}  # key -> (session, trained tensor shapes)
        # "sha256@device" of a prompts file -> its table on the device, while some task holds it
        self.tables: weakref.WeakValueDictionary[str, torch.Tensor] = weakref.WeakValueDictionary()
        self.models: OrderedDict[ServedTask, PTuningModel] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()
        self.scores_continuations = False
        self.mixer: MixedScorer | None = None

    def load(self, name: str, folder: str | Path, root: Path | None = None) -> ServedTask:
        """Read the checkpoint in ``folder`` and serve it as ``name`` (its base model must be this store's):
        ``read`` then ``serve``.

        Args:
            name (str): the task's name.
            folder (str | Path): the checkpoint directory.
            root (Path | None): if given (resolved), every file of the checkpoint must lie inside it.

        Returns:
            ServedTask: the task; its model is built when first used.
        """
        check_name(name)
        return self.serve(name, self.read(folder, root))

    def read(self, folder: str | Path, root: Path | None = None) -> SavedCheckpoint:
        """The checkpoint in ``folder``, read and verified: files only, no model and no device, so it may run on any
        thread (the server reads added tasks off its model thread).

        Args:
            folder (str | Path): the checkpoint directory.
            root (Path | None): if given (resolved), the manifest, tensor files and vocabulary file must lie inside
                it, symlinks resolved (CheckpointError naming the file otherwise).

        Returns:
            SavedCheckpoint: its parts, for ``serve``.

        Example:
            >>> saved = TaskStore().read("runs/tasks/topics", root=Path("runs/tasks").resolve())  # doctest: +SKIP
        """
        if root is None:
            return read_checkpoint(folder, device=self.device)
        saved = read_checkpoint(folder, device=self.device, check_file=lambda path: check_inside(root, path))
        saved.cfg = confined_vocab(saved.cfg, Path(folder), root)
        return saved

    def serve(self, name: str, saved: SavedCheckpoint) -> ServedTask:
        """``saved`` as the task ``name``, over this store's base model: its session (opened once per serving
        config) and its prompt table on the device (one copy per prompts file). Run it on the model thread.

        Args:
            name (str): the task's name.
            saved (SavedCheckpoint): from ``read``.

        Returns:
            ServedTask: the task; its model is built when first used.
        """
        if self.base is not None:
            saved.check_base(self.base.identity)
        session, shapes = self.session_for(saved)
        got = {k: tuple(v.shape) for k, v in saved.encoder_state.items()}
        if got != shapes:  # what Predictor.load refuses (its encoder weights do not fit the manifest's config)
            raise CheckpointError(f"{saved.folder}: the encoder weights do not fit the manifest's config "
                                  f"(expected {sorted(shapes)})")
        names = session.task.labels.labels if session.task.labels else []
        head = {k: v.to(session.device) for k, v in saved.encoder_state.items() if k.startswith("classifier.")}
        deep = None if saved.deep is None else saved.deep.to(session.device, torch.float32)
        task = ServedTask(name, str(saved.folder), session, self.shared_table(saved, session.device), self, head,
                          saved.label_offsets(names), deep)
        if self.mixer is None:  # the first task: what the base can do, and the mixed-batch scorer over it
            self.scores_continuations = task.model.can_score_continuations
            self.mixer = MixedScorer(self.base.model) if self.scores_continuations else None
        return task

    def shared_table(self, saved: SavedCheckpoint, device: torch.device) -> torch.Tensor:
        """``saved``'s prompt table on ``device`` in float32: the copy another task of the same prompts file holds,
        else a new one (its own storage, not the file's bytes). Nothing writes into a served table."""
        key = f"{saved.meta['files']['prompts']['sha256']}@{device}"  # verified against the file by the reader
        table = self.tables.get(key)
        if table is None:
            table = saved.prompts.to(device, torch.float32, copy=True)
            self.tables[key] = table
        return table

    def session_for(self, saved: SavedCheckpoint) -> tuple[Session, dict[str, tuple]]:
        """The session for ``saved``'s serving config (opened once, over this store's base) and the shapes of
        the trained tensors a checkpoint of that config holds."""
        key = serving_key(saved)
        if key not in self.sessions:
            # a search may save the zero-shot manual prompt as its choice: a checkpoint with no virtual token
            session = open_session(saved.cfg, labels=saved.labels, base=self.base, check_identity=saved.check_base,
                                   allow_no_virtual=True)
            self.base = self.base or session.base
            shapes = {k: tuple(v.shape) for k, v in session.new_model().trainable_state().items()}
            self.sessions[key] = (session, shapes)
        return self.sessions[key]

    def keeps(self, task: ServedTask) -> bool:
        """Whether ``task``'s model is built and kept now."""
        with self.lock:
            return task in self.models

    def model(self, task: ServedTask) -> PTuningModel:
        """``task``'s model (evaluation mode): the kept one, or a new one that replaces the least recently used."""
        with self.lock:
            if task in self.models:
                self.models.move_to_end(task)
                return self.models[task]
        model = self.build_model(task)
        with self.lock:
            self.models[task] = model
            while len(self.models) > self.max_models:
                self.models.popitem(last=False)  # its prefix cache goes with it
        return model

    def build_model(self, task: ServedTask) -> PTuningModel:
        """A model over the base serving ``task``'s saved table (the encoder is never run)."""
        session, table = task.session, task.table
        dim = session.base.model.get_input_embeddings().weight.shape[1]
        encoder = EmbeddingEncoder(len(table), dim, init=table).to(session.device)
        classifier = None
        if task.head:
            classifier = LinearHead(dim, len(task.labels), head_layer(session),
                                    session.cfg.task.head_pooling).to(session.device)
        deep, deep_state = None, {}
        if task.deep is not None:  # its saved keys and values, as a plain table
            base = session.base.model
            deep = DeepPromptEncoder(len(task.deep), dim, kv_layout(base, cache_argument(base)), "table",
                                     init=task.deep).to(session.device)
            deep_state = {"deep.table": task.deep}
        model = build_ptuning_model(session.base.model, encoder, session.base.kind, classifier, deep)
        model.load_trainable_state({"encoder.table": table, **task.head, **deep_state})
        model.set_prompt_table(table)
        if task.deep is not None:
            model.set_deep_table(task.deep)
        model.label_offsets = task.label_offsets
        return model.eval()


def check_name(name: str) -> str:
    """``name`` if it is a task name (``protocol.valid_name``), else a PtuneError saying what a name may hold."""
    if not valid_name(name):
        raise PtuneError(f"serve: task name {name!r} must be {NAME_RULE} (name a checkpoint with NAME=DIR)")
    return name


def load_tasks(checkpoints: dict[str, str | Path], device: str | None = None,
               store: TaskStore | None = None, root: Path | None = None) -> dict[str, ServedTask]:
    """Every checkpoint as a task of one store, over the base model the first one loads (others must match it).

    Args:
        checkpoints (dict[str, str | Path]): task name -> checkpoint directory.
        device (str | None): overrides the checkpoints' ``model.device``.
        store (TaskStore | None): the store to load into (default: a new one).
        root (Path | None): the tasks directory, resolved: a checkpoint inside it must keep every file inside it,
            as a task added while serving must (checkpoints elsewhere were named by the operator and load as they are).

    Returns:
        dict[str, ServedTask]: the loaded tasks, in the given order.

    Example:
        >>> tasks = load_tasks({"topics": "runs/topics", "sentiment": "runs/sst2"})  # doctest: +SKIP
    """
    if not checkpoints:
        raise PtuneError("serve: give at least one checkpoint directory")
    store = store or TaskStore(device)
    def confined_to(folder) -> Path | None:
        return root if root is not None and Path(folder).resolve().is_relative_to(root) else None

    return {name: store.load(name, folder, confined_to(folder)) for name, folder in checkpoints.items()}


def checkpoints_in(folder: Path) -> dict[str, str]:
    """The checkpoints directly inside ``folder`` (subfolders holding a manifest), named after their subfolders, in
    name order.

    Args:
        folder (Path): a folder of checkpoint directories.

    Returns:
        dict[str, str]: task name -> checkpoint directory (empty if there are none).

    Example:
        >>> checkpoints_in(Path("runs/tasks"))  # doctest: +SKIP
        {'task-0000': 'runs/tasks/task-0000', 'task-0001': 'runs/tasks/task-0001'}
    """
    return {sub.name: str(sub) for sub in sorted(folder.iterdir()) if (sub / MANIFEST).is_file()}


def checkpoints_to_serve(root: Path) -> tuple[dict[str, str], list[str]]:
    """What ``ptune serve --tasks-dir DIR`` serves when given no checkpoint: the checkpoints directly inside ``root``,
    each named after its subfolder. A subfolder whose name is not a task name, or a symlink that leads outside
    ``root``, is skipped (and said why), not fatal: the other tasks are served.

    Args:
        root (Path): the tasks directory.

    Returns:
        tuple[dict[str, str], list[str]]: task name -> checkpoint directory in name order (empty if there are
        none), and one line per subfolder skipped.

    Example:
        >>> checkpoints_to_serve(Path("runs/tasks"))  # doctest: +SKIP
        ({'topics': 'runs/tasks/topics'}, ["runs/tasks/my topics: task name 'my topics' must be ..."])
    """
    if not root.is_dir():
        raise PtuneError(f"serve: the tasks directory {root} is not a directory")
    found: dict[str, str] = {}
    skipped: list[str] = []
    for name, folder in checkpoints_in(root).items():
        if not Path(folder).resolve().is_relative_to(root.resolve()):
            skipped.append(f"{folder}: a symlink that leads outside the tasks directory")
            continue
        try:
            found[check_name(name)] = folder
        except PtuneError as err:
            skipped.append(f"{folder}: {str(err).removeprefix('serve: ')}")
    return found, skipped


def parse_checkpoint_args(args: list[str]) -> dict[str, str]:
    """``DIR`` (named after the folder), ``NAME=DIR``, or a folder of checkpoint directories (each named after its
    subfolder); names must be unique.

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
            found = {name: folder}
        elif Path(arg).is_dir() and not (Path(arg) / MANIFEST).exists() and checkpoints_in(Path(arg)):
            found = checkpoints_in(Path(arg))
        else:
            found = {Path(arg).resolve().name: arg}
        for name, folder in found.items():
            check_name(name)  # before any model loads
            if name in out:
                raise PtuneError(f"serve: two checkpoints are named {name!r}; name them with NAME=DIR")
            out[name] = folder
    return out
