"""Typed configuration for a whole run, loaded from YAML plus ``--set section.key=value`` overrides.

Each field is documented once, beside it; unknown keys, wrong types and out-of-range values are errors that name
the key (and suggest the nearest known one).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError, TemplateError
from .template import parse_template

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (``yes``/``no`` stay words: they are common label words),
    and ``3e-2`` is a float."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.inf|\.nan)$"),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED_MODEL
    """A local folder, a Hugging Face hub id, a ``.gguf`` file, or ``embedded:SmolLM2-135M-Instruct``."""
    gguf_file: str | None = None
    """File name of a GGUF checkpoint inside ``name_or_path`` (when it is a folder or hub id)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids."""
    kind: str = "auto"
    """``causal``, ``masked``, ``seq2seq`` (T5-style) or ``auto`` (read from the model's config)."""
    dtype: str = "auto"
    """Dtype of the frozen model: ``auto`` (bfloat16 where the hardware runs it fast), ``float32`` or ``bfloat16``."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self):
        _choice("model.kind", self.kind, ("auto", "causal", "masked", "seq2seq"))
        _choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16"))


@dataclass
class TaskConfig:
    type: str = "classification"
    """``classification`` (rank label words), ``generation`` (free text) or ``probing`` (one token, P@1)."""
    template: str = "[P*8] {text} [TARGET]"
    """Virtual runs ``[P*n]``, data fields ``{column name}``, fixed anchor text, and one target ``[TARGET]``/``[MASK]``."""
    label_column: str = "label"
    """Column holding the target (label, free text, or object for probing)."""
    verbalizer: dict[str, Any] = field(default_factory=dict)
    """Label value -> word(s) the model should produce; a list gives alternatives. Empty: the label values themselves."""
    score: str = "sum"
    """How a multi-token label word is scored: ``sum`` or ``mean`` of its token log-probabilities."""
    vocab_file: str | None = None
    """Probing only: a JSON list of words; P@1 is taken over their tokens only."""
    max_new_tokens: int = 16
    """Generation only: the most tokens generated per row."""
    calibrate: str = "none"
    """Classification only: ``content_free`` divides each label's probability by its probability for inputs whose
    data fields say nothing ("N/A", empty), so that the model's prior for a label word does not outvote the
    evidence (Zhao et al., 2021); ``prior`` adds per-label offsets, fitted after training on ``data.unlabeled``
    rows, that make the mean predicted label distribution there equal the training rows' label shares (they are
    saved in the checkpoint); ``none`` ranks the raw scores."""
    prior_rows: int = 300
    """``calibrate: prior``: how many unlabeled rows (a seeded sample) the offsets are fitted on."""
    head: str = "words"
    """Classification only: how a row's label is read off the model. ``words`` ranks the label words (the verbalizer)
    by the LM head's log-likelihood, the paper's way. ``linear``: a linear classifier over the hidden states of
    layer ``head_layer``, averaged over the row's positions (the classification head of P-tuning v2 and of PEFT's
    SEQ_CLS task type); it is fitted by L2-regularised logistic regression before and after the prompt is trained,
    and saved with the encoder. Causal LMs only."""
    head_layer: int = 0
    """``head: linear``: which layer's output is pooled (1 = the first block's); 0 = the middle of the model."""

    def __post_init__(self):
        _choice("task.type", self.type, ("classification", "generation", "probing"))
        _choice("task.score", self.score, ("sum", "mean"))
        _choice("task.calibrate", self.calibrate, ("none", "content_free", "prior"))
        if self.prior_rows < 1:
            raise ConfigError(f"task.prior_rows must be >= 1, got {self.prior_rows}")
        if self.calibrate != "none" and self.type != "classification":
            raise ConfigError(f"task.calibrate is {self.calibrate!r} but applies to classification only "
                              f"(task.type is {self.type!r})")
        if self.max_new_tokens < 1:
            raise ConfigError(f"task.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _choice("task.head", self.head, ("words", "linear"))
        if self.head != "words" and self.type != "classification":
            raise ConfigError(f"task.head is {self.head!r} but applies to classification only "
                              f"(task.type is {self.type!r})")
        if self.head_layer < 0:
            raise ConfigError(f"task.head_layer must be >= 0 (0: the middle layer), got {self.head_layer}")


@dataclass
class EncoderConfig:
    type: str = "lstm"
    """``lstm`` (BiLSTM + MLP, the paper's), ``mlp``, or ``embedding`` (plain prompt tuning)."""
    hidden_size: int = 128
    """Width of the LSTM (per direction) or of the MLP's hidden layers."""
    num_layers: int = 2
    """LSTM layers, or hidden layers of the MLP."""
    init: str = "random"
    """Input table initialisation: ``random``, ``words`` (embeddings of ``init_text``'s tokens, cycled) or ``text``."""
    init_text: str = ""
    """Words or text whose token embeddings start the input table when ``init`` is ``words`` or ``text``."""

    def __post_init__(self):
        _choice("encoder.type", self.type, ("lstm", "mlp", "embedding"))
        _choice("encoder.init", self.init, ("random", "words", "text"))
        if self.hidden_size < 1:
            raise ConfigError(f"encoder.hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ConfigError(f"encoder.num_layers must be >= 1, got {self.num_layers}")
        if self.init != "random" and not self.init_text.strip():
            raise ConfigError(f"encoder.init is {self.init!r} but encoder.init_text is empty")


@dataclass
class DataConfig:
    train: str | None = None
    """Training rows: a CSV/TSV/JSONL/Parquet file, or ``hf:NAME[:CONFIG]`` with ``train_split``."""
    dev: str | None = None
    """Held-out rows evaluated during training; if absent, ``dev_fraction`` of train is held out (or none)."""
    test: str | None = None
    """Rows scored after training (labels optional)."""
    format: str = "auto"
    """``auto`` (from the file suffix), ``csv``, ``tsv``, ``jsonl``, ``parquet``."""
    columns: dict[str, str] = field(default_factory=dict)
    """Template field -> column name in the data, where they differ."""
    dev_fraction: float = 0.0
    """Share of the training rows held out as dev when no dev file is given (stratified for classification)."""
    unlabeled: str | None = None
    """Rows without labels (e.g. RAFT's test_unlabeled.csv) for self-training (``train.self_train_rows``)."""
    train_split: str = "train"
    dev_split: str = "validation"
    test_split: str = "test"
    unlabeled_split: str = "test"

    def __post_init__(self):
        _choice("data.format", self.format, ("auto", "csv", "tsv", "jsonl", "parquet"))
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be in [0, 1), got {self.dev_fraction}")


@dataclass
class TrainConfig:
    lr: float = 1e-2
    """AdamW learning rate for the prompt encoder (the base model is frozen)."""
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 10
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    warmup_ratio: float = 0.06
    """Share of the steps spent warming the learning rate up; it then decays linearly to zero."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    eval_every: int = 0
    """Evaluate on dev every N steps (0: once per epoch)."""
    save_every: int = 0
    """Save the resumable state every N steps as well as after each epoch (0: per epoch only)."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0: never stop early)."""
    metric: str = "auto"
    """Dev metric that picks the best checkpoint: ``accuracy``, ``macro_f1``, ``p@1``, ``loss`` or ``auto``."""
    seed: int = 42
    max_length: int = 256
    """Longest input in tokens; data fields are truncated to fit, never virtual tokens or the target."""
    eval_batch_size: int = 32
    cv_folds: int = 5
    """Folds for ``ptune cv`` (stratified k-fold over the training rows)."""
    grad_accum: int = 1
    """Gradient accumulation: batches of ``batch_size`` rows per optimizer step (through Accelerate)."""
    self_train_rows: int = 0
    """Classification: train once, label this many of the most confident ``data.unlabeled`` rows (each label in
    its share of the training rows), then train afresh on both (0: off)."""
    self_train_pool: int = 400
    """How many unlabeled rows (a seeded sample) are scored to choose from."""
    share_prefix: bool = True
    """Causal LMs: run the tokens every row of a batch starts with (leading virtual tokens and anchor text) once per
    step instead of once per row; the same loss and gradients, less compute."""
    objective: str = "lm"
    """Classification: ``lm`` maximises the gold label word's likelihood (PEFT's loss); ``classify`` is
    cross-entropy over the labels' first tokens only, so training spends nothing on how likely the words are in
    general. Other task types always use ``lm``."""
    class_weights: str = "none"
    """Classification: ``balanced`` weighs each row by n_rows / (n_labels * rows with its label), so a minority
    class counts as much as the majority (macro-F1 is what such a task is judged by); ``none``: every row alike."""
    mixed_precision: str = "no"
    """Autocast for the encoder and the loss, through Accelerate: ``no``, ``bf16`` or ``fp16`` (with loss scaling on a
    GPU). The frozen model's own dtype is ``model.dtype``."""

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):  # also refuses .nan and .inf
            raise ConfigError(f"train.lr must be > 0 and finite, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"train.{name} must be >= 0 and finite, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "epochs", "max_length", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "patience", "self_train_rows", "self_train_pool"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.cv_folds < 2:
            raise ConfigError(f"train.cv_folds must be >= 2, got {self.cv_folds}")
        _choice("train.metric", self.metric, ("auto", "accuracy", "macro_f1", "p@1", "loss"))
        _choice("train.mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        _choice("train.objective", self.objective, ("lm", "classify"))
        _choice("train.class_weights", self.class_weights, ("none", "balanced"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.self_train_rows and not self.data.unlabeled:
            raise ConfigError("train.self_train_rows is set but data.unlabeled is not: give the unlabeled rows")
        if self.task.calibrate == "prior" and not self.data.unlabeled:
            raise ConfigError("task.calibrate is 'prior' but data.unlabeled is not: the offsets are fitted on "
                              "unlabeled rows of the task")
        for name in ("objective", "class_weights", "self_train_rows"):
            if getattr(self.train, name) != TrainConfig.__dataclass_fields__[name].default \
                    and self.task.type != "classification":
                raise ConfigError(f"train.{name} is {getattr(self.train, name)!r} but applies to classification "
                                  f"only (task.type is {self.task.type!r})")
        if self.task.head == "linear" and self.train.objective != "lm":
            raise ConfigError("train.objective chooses how label words are trained (task.head: words); with "
                              "task.head linear the classifier's cross-entropy is the objective: leave it at 'lm'")
        try:
            n = parse_template(self.task.template).n_virtual
        except TemplateError:
            return  # reported, with its place, where the template is used
        if n >= self.train.max_length:
            raise ConfigError(f"task.template has {n} virtual tokens but train.max_length is {self.train.max_length}: "
                              "no room is left for the data and the target")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def metric(self) -> str:
        if self.train.metric != "auto":
            return self.train.metric
        return {"classification": "accuracy", "probing": "p@1", "generation": "loss"}[self.task.type]


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_name(hint)}, got {type(value).__name__} {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is Any:
        return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-2 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            kt, vt = typing.get_args(hint)
            return {_check_type(f"{key}.{k}", k, kt): _check_type(f"{key}.{k}", v, vt) for k, v in value.items()}
    elif origin is list:
        if isinstance(value, list):
            (it,) = typing.get_args(hint)
            return [_check_type(f"{key}[{i}]", v, it) for i, v in enumerate(value)]
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: expected {_name(hint)}, got {type(value).__name__} {value!r}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{path}.")
        else:
            kwargs[key] = _check_type(path, value, hint)
    return cls(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    return _build(Config, values or {}, "")


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3e-2``, ``true``, ``[a, b]``), or kept as
    text where they are not YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            # not YAML: a plain string, such as a template "[P*3] {text} [TARGET]" (the key's type is checked next)
            node[parts[-1]] = raw
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (relative data paths resolve against the config's folder) and apply overrides."""
    values = read_config_file(path) if path is not None else {}
    values = apply_overrides(values, list(overrides))
    cfg = config_from_dict(values)
    if path is not None:
        resolve_paths(cfg, Path(path).parent)
    return cfg


def read_config_file(path: str | Path) -> dict:
    """A config file's mapping of sections, or a one-line ``ConfigError`` naming the file (missing, unreadable,
    not YAML, not a mapping). Search configs are read here too, so they fail the same way."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def resolve_paths(cfg: Config, base: Path) -> None:
    """Data paths in a config file are relative to that file, so a config runs from any working directory."""
    for name in ("train", "dev", "test", "unlabeled"):
        value = getattr(cfg.data, name)
        if value and not value.startswith("hf:") and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists() or not Path(value).exists():
                setattr(cfg.data, name, str(candidate))
    if cfg.task.vocab_file and not Path(cfg.task.vocab_file).is_absolute():
        file, sep, key = cfg.task.vocab_file.partition("#")  # FILE#KEY picks one list of a JSON mapping
        if (base / file).exists():
            cfg.task.vocab_file = str(base / file) + sep + key
