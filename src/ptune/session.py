"""A Session: everything a run needs, built once from a config: data tables, the frozen base model, the renderer,
the task. Training, cross-validation, evaluation and prediction all start from one."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace
from functools import cached_property

import torch

from .config import Config, EncoderConfig
from .data.labels import LabelSpace
from .data.render import Renderer
from .data.tables import Table, check_table, read_table
from .errors import ConfigError, DataError
from .modeling.base import FrozenBase, attention_window, load_base
from .modeling.components import Head, Prompt, Supports, build_head, build_prompt, supports_of
from .modeling.deep import DeepPromptEncoder, deep_start, kv_layout
from .modeling.encoders import EmbeddingEncoder, build_encoder, init_table, text_ids
from .modeling.heads import LinearHead, decoder_layers
from .modeling.ptuning import PTuningModel, build_ptuning_model
from .modeling.scoring import cache_argument
from .tasks import Task, build_task
from .template import Template, parse_template


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def read_split(cfg: Config, name: str) -> Table | None:
    source = getattr(cfg.data, name)
    if not source:
        return None
    return read_table(source, cfg.data.format, getattr(cfg.data, f"{name}_split"))


EMPTY_HINT = ("; if this field may be empty, list it in data.optional_fields (or give \"*\" for every template "
              "field): an empty cell then reads as an empty string")


def needs_virtual_tokens(cfg: Config) -> bool:
    """Whether the run's templates must hold virtual tokens: not where something else trains (a deep prompt's keys
    and values) or a classifier may stand alone (a linear head: the linear probe, a baseline and a candidate
    ``ptune search`` can weigh)."""
    return build_head(cfg.task.head).needs_virtual and not cfg.encoder.deep_tokens


def check_inputs(cfg: Config, template: Template, table: Table, *, labelled: bool,
                 allow_no_virtual: bool = False) -> None:
    """Columns the template and task need, present and non-empty in every row (before any model is loaded);
    ``allow_no_virtual`` where nothing is trained (a checkpoint predicting: it may be a zero-shot prompt)."""
    template.validate(kind=None, needs_virtual=not allow_no_virtual and needs_virtual_tokens(cfg),
                      columns=table.columns,
                      field_map=cfg.data.columns,
                      where=f"task.template (checked against {table.source})")
    needed = [cfg.data.columns.get(f, f) for f in template.fields]
    check_table(table, needed, optional=cfg.data.optional_columns(template.fields), empty_hint=EMPTY_HINT)
    if labelled:
        check_table(table, [cfg.task.label_column])


@dataclass
class Session:
    """Everything a run needs, built once from a config by ``open_session``: the frozen base model, the template,
    the task (with its renderer, labels and head), the prompt and the device; models over the base come from
    ``new_model``. What the head and prompt allow (packing, a shared prefix, mixed batches, PEFT export) is
    ``supports``: callers ask it rather than comparing config strings.

    Args:
        cfg (`Config`): the run's configuration.
        base (`FrozenBase`): the frozen model, its tokenizer, kind and identity.
        template (`Template`): the parsed ``task.template``.
        task (`Task`): the task object for ``task.type``.
        device (`torch.device`): where the base model's weights are.
        unlabeled (`Table`, *optional*): see below.
        prompt (`Prompt`, *optional*): where the trained vectors enter the model (default: ``build_prompt``'s).

    Example:
        >>> session = open_session(cfg, label_values=["complaint", "no complaint"])
        >>> session.supports.mixing, session.head.fits_classifier
        (True, False)
        >>> model = session.new_model(seed=1)
        >>> session.predict(model, [{"text": "my order arrived late"}])[0]["prediction"]
    """
    cfg: Config
    base: FrozenBase
    template: Template
    task: Task
    device: torch.device
    unlabeled: Table | None = None
    """Unlabeled rows for self-training and prior calibration (``data.unlabeled``), read and checked by
    ``training.prepare``."""
    prompt: Prompt | None = None

    def __post_init__(self):
        if self.prompt is None:
            self.prompt = build_prompt(self.template, self.base.kind, self.base.model, self.cfg.encoder.deep_tokens)

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def head(self) -> Head:
        """The task's head (``task.head``): label words or a linear classifier."""
        return self.task.head

    @cached_property
    def supports(self) -> Supports:
        """What this run's head and prompt allow over its base model (``modeling.components.Supports``)."""
        return supports_of(self.head, self.prompt, labels=self.task.labels is not None)

    def new_model(self, seed: int | None = None) -> PTuningModel:
        """A fresh P-tuning model over the shared frozen base: a new prompt encoder (and, with ``task.head:
        linear``, a new classifier) initialised from ``seed`` (default ``train.seed``).

        Args:
            seed (`int`, *optional*): seeds the encoder's (and classifier's) initial weights.

        Returns:
            `PTuningModel`: the model for the base's kind, in training mode.
        """
        seed_everything(self.cfg.train.seed if seed is None else seed)
        embeddings = self.base.model.get_input_embeddings()
        n, dim = self.template.n_virtual, embeddings.weight.shape[1]
        init = init_table(self.start_config, n, embeddings, self.tokenizer) if n else None
        # a template without virtual tokens (a manual-prompt baseline) gets an empty table
        encoder = (build_encoder(self.cfg.encoder, n, dim, init) if n else EmbeddingEncoder(0, dim)).to(self.device)
        classifier = None
        if self.head.fits_classifier:
            classifier = LinearHead(dim, len(self.task.labels.labels), head_layer(self),
                                    self.cfg.task.head_pooling).to(self.device)
        return build_ptuning_model(self.base.model, encoder, self.base.kind, classifier, self.new_deep_prompt())

    @property
    def start_config(self) -> EncoderConfig:
        """The ``encoder`` section with ``init: labels`` spelled out: ``init: text`` over the task's label words
        (each label's first word, in label order, ", "-joined), so the tables start as those words."""
        enc = self.cfg.encoder
        if enc.init != "labels":
            return enc
        if self.task.labels is None:
            raise ConfigError("encoder.init: labels starts the prompt from the label words, which only a "
                              "classification task has; use init: text with encoder.init_text")
        text = ", ".join(dict.fromkeys(alternatives[0] for alternatives in self.task.labels.words))
        return replace(enc, init="text", init_text=text)

    def new_deep_prompt(self) -> DeepPromptEncoder | None:
        """A fresh deep prompt (``encoder.deep_tokens``, None without one): random, or with ``encoder.deep_encoder:
        table`` and ``encoder.init`` words, text or labels, the keys and values the frozen model gives that text."""
        enc, base = self.start_config, self.base.model
        if not enc.deep_tokens:
            return None
        cache_arg = cache_argument(base)
        init = None
        if enc.deep_encoder == "table" and enc.init != "random":
            init = deep_start(enc.deep_tokens, base, cache_arg, text_ids(enc, self.tokenizer))
        return DeepPromptEncoder(enc.deep_tokens, base.get_input_embeddings().weight.shape[1],
                                 kv_layout(base, cache_arg), enc.deep_encoder, enc.hidden_size, init).to(self.device)

    def predict(self, model: PTuningModel, rows: list[dict], progress=None) -> list[dict]:
        """The task's predictions for ``rows`` (model in evaluation mode, no autograd), ``train.eval_batch_size``
        rows at a time."""
        model.eval()
        with torch.inference_mode():
            return self.task.predict(model, rows, self.cfg.train.eval_batch_size, self.device, progress)


def open_session(cfg: Config, *, label_values: list[str] | None = None, labels: LabelSpace | None = None,
                 base: FrozenBase | None = None, check_identity=None, allow_no_virtual: bool = False,
                 device: torch.device | None = None, unlabeled: Table | None = None) -> Session:
    """Load (or reuse) the base model and build the template, renderer and task. ``device`` overrides
    ``model.device`` (a distributed run puts each process's copy on its own GPU); ``unlabeled``: rows for
    self-training and prior calibration (``data.unlabeled``), already read and checked."""
    template = parse_template(cfg.task.template)
    if base is None:
        base = load_base(cfg.model, device=device, check=check_identity)
    head = build_head(cfg.task.head)
    template.validate(kind=base.kind, needs_virtual=not allow_no_virtual and needs_virtual_tokens(cfg))
    problem = head.check_kind(base.kind, cfg.model.name_or_path) or deep_problem(cfg, base)
    if problem:
        raise ConfigError(problem)
    if cfg.task.type == "generation" and base.kind == "masked":
        raise ConfigError(f"task.type generation needs a causal or seq2seq LM; {cfg.model.name_or_path} is a masked "
                          f"LM (model type {base.identity.get('model_type')!r}): it fills a fixed number of [MASK] "
                          "slots and cannot write free text (use task.type classification or probing)")
    if labels is None and cfg.task.type == "classification":
        labels = LabelSpace.build(cfg.task.verbalizer, label_values)
    # a deep prompt's n places come before every row: its positions count from n
    context = model_context(base) - cfg.encoder.deep_tokens
    renderer = Renderer(template, base.tokenizer, base.kind, min(cfg.train.max_length, context),
                        dict(cfg.data.columns), frozenset(cfg.data.optional_columns(template.fields)))
    task = build_task(cfg.task, renderer, labels, objective=cfg.train.objective, class_weights=cfg.train.class_weights,
                      head=head)
    device = next(base.model.parameters()).device
    return Session(cfg, base, template, task, device, unlabeled,
                   build_prompt(template, base.kind, base.model, cfg.encoder.deep_tokens))


def deep_problem(cfg: Config, base: FrozenBase) -> str | None:
    """Why ``encoder.deep_tokens`` cannot run on this base model with this config (None: it can, or it is 0)."""
    n, model = cfg.encoder.deep_tokens, f"{cfg.model.name_or_path} (model type {base.identity.get('model_type')!r})"
    if not n:
        return None
    if base.kind != "causal":
        return (f"encoder.deep_tokens: {model} is a {base.kind} LM; a deep prompt is keys and values held in a "
                "decoder-only model's KV cache, and transformers' masked LMs take no past keys and values, nor do "
                "T5's or BART's encoders (use encoder.deep_tokens: 0)")
    if cache_argument(base.model) is None:
        return f"encoder.deep_tokens: {model} takes no KV cache to hold a deep prompt (use encoder.deep_tokens: 0)"
    if n >= model_context(base):
        return (f"encoder.deep_tokens is {n} but {model} takes {model_context(base)} positions at most: no room is "
                "left for the rows")
    window = attention_window(base.model.config)
    reach = n + cfg.train.max_length + (cfg.task.max_new_tokens if cfg.task.type == "generation" else 0)
    if window is not None and reach >= window:
        return (f"encoder.deep_tokens: {model} attends within a sliding window of {window} places, which counts "
                f"pads: {n} deep positions + train.max_length {cfg.train.max_length}"
                + (f" + task.max_new_tokens {cfg.task.max_new_tokens}" if cfg.task.type == "generation" else "")
                + " could reach past it, and a row would see more or less of the deep prompt depending on its "
                "batch; keep them below the window (or use encoder.deep_tokens: 0)")
    if cfg.train.gradient_checkpointing:
        return ("encoder.deep_tokens with train.gradient_checkpointing: a block run again in the backward pass would "
                "add its keys to the deep prompt's cache a second time; set train.gradient_checkpointing: false")
    try:
        kv_layout(base.model, cache_argument(base.model))
    except ValueError as err:
        return f"encoder.deep_tokens: {model}: {err}"
    return None


def head_layer(session: Session) -> int:
    """``task.head_layer``, checked against the model's depth (0: the middle block)."""
    try:
        depth = len(decoder_layers(session.base.model))
    except ValueError as err:
        raise ConfigError(f"task.head linear: {err}") from None
    layer = session.cfg.task.head_layer or depth // 2
    if layer > depth:
        raise ConfigError(f"task.head_layer is {layer} but {session.cfg.model.name_or_path} has {depth} blocks")
    return layer


def model_context(base: FrozenBase) -> int:
    """The most positions the base model takes: a row longer than this has its data fields cut, like one longer
    than train.max_length (past it, BERT-style models fail and RoPE models degrade)."""
    limits = [getattr(base.model.config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(base.tokenizer, "model_max_length", None))  # 512 for RoBERTa, whose config says 514
    return min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=1_000_000)


def report_truncated(session: Session, table: Table, what: str = "rows") -> int:
    """Print (to stderr) how many rows of ``table`` have data fields cut to fit, placed with the longest target
    the task puts in them; return the count."""
    renderer, labels = session.task.renderer, session.task.labels
    if labels is not None:
        longest = max(len(renderer.target_ids(w)) for words in labels.words for w in words)
    else:  # probing scores one token; generation predicts from an input without the target (masked: one slot)
        longest = 1 if session.cfg.task.type == "probing" or renderer.kind == "masked" else 0
    n = sum(renderer.encode(row, [0] * longest).truncated for row in table.rows)
    if n:
        print(f"note: {n} of {len(table)} {what} in {table.source} have data fields truncated to fit "
              f"{renderer.max_length} tokens (virtual tokens and the target are kept)", file=sys.stderr)
    return n


def load_training_tables(cfg: Config) -> tuple[Table, Table | None]:
    """Read and check train and dev before anything is loaded or written."""
    if not cfg.data.train:
        raise DataError("data.train is not set: give a training file (or --set data.train=PATH)")
    train = read_split(cfg, "train")
    dev = read_split(cfg, "dev")
    return train, dev
