"""Typed configuration for a whole run: built in Python (keywords or a mapping) or read from YAML, plus
``section.key=value`` overrides.

Each field is documented beside it (each section's docstring sums the fields up); unknown keys, wrong types and
out-of-range values are errors that name the key (and suggest the nearest known one), however the config is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError, TemplateError
from .files import write_atomic
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
    """The frozen base model (the ``model:`` section).

    Args:
        name_or_path (`str`, defaults to the embedded SmolLM2-135M-Instruct): a local folder, hub id, ``.gguf``
            file or ``embedded:SmolLM2-135M-Instruct``.
        gguf_file (`str`, *optional*): a GGUF file inside ``name_or_path``.
        revision (`str`, *optional*): hub revision for hub ids.
        kind (`str`, defaults to ``"auto"``): ``causal``, ``masked``, ``seq2seq`` or ``auto``.
        dtype (`str`, defaults to ``"auto"``): ``auto``, ``float32`` or ``bfloat16``.
        device (`str`, defaults to ``"auto"``): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Example:
        >>> ModelConfig(name_or_path="models/tiny-llama", dtype="float32").device
        'auto'
    """
    name_or_path: str = EMBEDDED_MODEL
    """A local folder, a Hugging Face hub id, a ``.gguf`` file, or ``embedded:SmolLM2-135M-Instruct``."""
    gguf_file: str | None = None
    """File name of a GGUF checkpoint inside ``name_or_path`` (when it is a folder or hub id)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids."""
    kind: str = "auto"
    """``causal``, ``masked``, ``seq2seq`` (T5-style) or ``auto`` (read from the model's config)."""
    dtype: str = "auto"
    """Dtype of the frozen model: ``auto`` (bfloat16 where the hardware runs it fast; float16 on a GPU without
    bfloat16, training then with loss scaling), ``float32`` or ``bfloat16``."""
    device: str = "auto"
    """``auto`` (CUDA when present, else Apple's MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    def __post_init__(self):
        _check_fields(self)
        _choice("model.kind", self.kind, ("auto", "causal", "masked", "seq2seq"))
        _choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16"))


@dataclass
class TaskConfig:
    """What the model is trained to produce, and how the prompt looks (the ``task:`` section).

    Args:
        type (`str`, defaults to ``"classification"``): ``classification``, ``generation`` or ``probing``.
        template (`str`, defaults to ``"[P*8] {text} [TARGET]"``): virtual runs ``[P*n]``, data fields ``{column}``,
            anchor text and one ``[TARGET]``.
        label_column (`str`, defaults to ``"label"``): the column holding the target.
        verbalizer (`dict[str, Any]`, *optional*): label value -> label word(s).
        score (`str`, defaults to ``"sum"``): ``sum`` or ``mean`` of a label word's token log-probabilities.
        vocab_file (`str`, *optional*): probing only, a JSON list of candidate words.
        max_new_tokens (`int`, defaults to 16): generation only, tokens generated per row.
        calibrate (`str`, defaults to ``"none"``): ``none``, ``content_free`` or ``prior``.
        prior_rows (`int`, defaults to 300): unlabeled rows the ``prior`` offsets are fitted on.
        head (`str`, defaults to ``"words"``): ``words`` (rank label words) or ``linear`` (a linear classifier).
        head_layer (`int`, defaults to 0): the layer a linear head reads (0: the middle one).
        head_pooling (`str`, defaults to ``"mean"``): how a linear head pools that layer's states: ``mean`` or
            ``last``.
        top_labels (`int`, *optional*): predictions score only this many best labels (the rest are left out).

    Example:
        >>> TaskConfig(template="[P*4] Review : {review} Sentiment : [TARGET]",
        ...            verbalizer={"pos": "great", "neg": "terrible"}).type
        'classification'
    """
    type: str = "classification"
    """``classification`` (rank label words), ``generation`` (free text) or ``probing`` (one token, P@1)."""
    template: str = "[P*8] {text} [TARGET]"
    """Virtual runs ``[P*n]``, data fields ``{column name}``, fixed anchor text, and one target ``[TARGET]``/``[MASK]``."""
    label_column: str = "label"
    """Column holding the target (label, free text, or object for probing)."""
    verbalizer: dict[str, Any] = field(default_factory=dict)
    """Label value -> word(s) the model should produce; a list gives alternatives. Empty: the training labels' names,
    underscores and hyphens read as spaces (``card_arrival`` -> ``card arrival``, ``data.labels.words_from_name``)."""
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
    layer ``head_layer``, pooled over the row's positions as ``head_pooling`` says (the classification head of
    P-tuning v2 and of PEFT's SEQ_CLS task type); it is fitted by L2-regularised logistic regression before and
    after the prompt is trained, and saved with the encoder. Causal LMs only."""
    head_layer: int = 0
    """``head: linear``: which layer's output is pooled (1 = the first block's); 0 = the middle of the model."""
    head_pooling: str = "mean"
    """``head: linear``: how the row's states at ``head_layer`` become one vector: ``mean`` over its real positions
    (pads left out), or ``last``, the state at its last real position, the only one that has read the whole row in
    a causal model (the last token of the template before ``[TARGET]``)."""
    top_labels: int | None = None
    """Classification only: predictions score exactly the ``top_labels`` best labels and leave the others out of
    their ``scores``. A causal LM's label words are then searched best first through their prefix tree, a prefix
    run only while some word through it can still reach the best ``top_labels`` (a word's log-likelihood only
    falls as tokens are added): fewer places run, in more model calls, so it pays for many labels where calls are
    cheap (docs/benchmarks.md). Not with ``calibrate``, which needs every label's score. Empty: every label."""

    def __post_init__(self):
        _check_fields(self)
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
        _choice("task.head_pooling", self.head_pooling, ("mean", "last"))
        if self.head_layer < 0:
            raise ConfigError(f"task.head_layer must be >= 0 (0: the middle layer), got {self.head_layer}")
        if self.top_labels is not None:
            if self.top_labels < 1:
                raise ConfigError(f"task.top_labels must be >= 1 (empty: every label), got {self.top_labels}")
            if self.type != "classification" or self.calibrate != "none":
                raise ConfigError(f"task.top_labels applies to classification without task.calibrate (task.type "
                                  f"is {self.type!r}, task.calibrate {self.calibrate!r}): calibration needs "
                                  f"every label's score")


@dataclass
class EncoderConfig:
    """The prompt encoder that computes the virtual tokens' embeddings (the ``encoder:`` section).

    Args:
        type (`str`, defaults to ``"lstm"``): ``lstm``, ``mlp`` or ``embedding``.
        hidden_size (`int`, defaults to 128): width of the LSTM (per direction) or MLP.
        num_layers (`int`, defaults to 2): LSTM layers, or hidden layers of the MLP.
        init (`str`, defaults to ``"random"``): ``random``, ``words``, ``text`` or ``labels``.
        init_text (`str`, defaults to ``""``): the words or text whose embeddings start the table.
        residual (`bool`, defaults to False): the prompt is the init embeddings plus the encoder's output, whose
            last layer starts at zero: at step 0 the virtual tokens are exactly ``init_text``'s embeddings.
        deep_tokens (`int`, defaults to 0): a deep prompt's key/value positions at every layer (0: none).
        deep_encoder (`str`, defaults to ``"mlp"``): the deep prompt's encoder, ``mlp`` or ``table``.

    Example:
        >>> EncoderConfig(type="mlp", hidden_size=64).num_layers
        2
    """
    type: str = "lstm"
    """``lstm`` (BiLSTM + MLP, the paper's), ``mlp``, or ``embedding`` (plain prompt tuning)."""
    hidden_size: int = 128
    """Width of the LSTM (per direction) or of the MLP's hidden layers."""
    num_layers: int = 2
    """LSTM layers, or hidden layers of the MLP."""
    init: str = "random"
    """Input table initialisation: ``random``, ``words`` (embeddings of ``init_text``'s tokens, cycled), ``text``, or
    ``labels`` (``text`` with the task's label words as the text, each label's first word, ", "-joined)."""
    init_text: str = ""
    """Words or text whose token embeddings start the input table when ``init`` is ``words`` or ``text``."""
    residual: bool = False
    """Prompt = the init embeddings (fixed, saved with the encoder) + the encoder's output, its last layer zeroed:
    training starts exactly at ``init_text`` (a manual prompt's words) and moves only where the gradient leads."""
    deep_tokens: int = 0
    """Deep prompt (P-tuning v2, causal LMs): this many trained key/value positions before the text at every layer
    of the frozen model, held in its KV cache, beside or instead of the template's ``[P]`` tokens (0: none)."""
    deep_encoder: str = "mlp"
    """The deep prompt's encoder: ``mlp`` (P-tuning v2's reparameterisation: an (n, d) embedding through a
    ``hidden_size`` tanh layer to every layer's keys and values) or ``table`` (the keys and values trained directly;
    with ``init: text``/``words``/``labels`` they start as those the frozen model gives ``init_text``'s tokens, or
    the label words')."""

    def __post_init__(self):
        _check_fields(self)
        _choice("encoder.type", self.type, ("lstm", "mlp", "embedding"))
        _choice("encoder.init", self.init, ("random", "words", "text", "labels"))
        _choice("encoder.deep_encoder", self.deep_encoder, ("mlp", "table"))
        if self.deep_tokens < 0:
            raise ConfigError(f"encoder.deep_tokens must be >= 0 (0: no deep prompt), got {self.deep_tokens}")
        if self.hidden_size < 1:
            raise ConfigError(f"encoder.hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ConfigError(f"encoder.num_layers must be >= 1, got {self.num_layers}")
        if self.init in ("words", "text") and not self.init_text.strip():
            raise ConfigError(f"encoder.init is {self.init!r} but encoder.init_text is empty")
        if self.residual and self.init == "random":
            raise ConfigError("encoder.residual adds the encoder's output to the embeddings of encoder.init_text: "
                              "set encoder.init to words or text (it is random)")


@dataclass
class DataConfig:
    """Where the rows come from (the ``data:`` section). Data are given as files (or ``hf:`` datasets); a
    ``pathlib.Path`` is accepted wherever a path is.

    Args:
        train (`str`, *optional*): training rows, a CSV/TSV/JSONL/Parquet file or ``hf:NAME[:CONFIG]``.
        dev (`str`, *optional*): rows that pick the best epoch.
        test (`str`, *optional*): rows scored after training.
        format (`str`, defaults to ``"auto"``): ``auto``, ``csv``, ``tsv``, ``jsonl`` or ``parquet``.
        columns (`dict[str, str]`, *optional*): template field -> column name, where they differ.
        dev_fraction (`float`, defaults to 0.0): share of the training rows held out as dev without a dev file.
        unlabeled (`str`, *optional*): rows without labels, for self-training, distillation and ``calibrate: prior``.
        optional_fields (`list[str]` or ``"*"``, defaults to ``[]``): template fields whose cells may be empty.
        train_split, dev_split, test_split, unlabeled_split (`str`): ``hf:`` dataset splits.

    Example:
        >>> DataConfig(train="train.csv", dev_fraction=0.2).format
        'auto'
    """
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
    """Rows without labels (e.g. RAFT's test_unlabeled.csv) for self-training (``train.self_train_rows``),
    distillation (``train.distill_teachers``) and ``task.calibrate: prior``."""
    optional_fields: list[str] | str = field(default_factory=list)
    """Template fields whose cells may be empty or missing (``"*"``: every template field); such a cell renders as an
    empty string. Any other empty field is an error naming its file and row. The label column is never optional."""
    train_split: str = "train"
    dev_split: str = "validation"
    test_split: str = "test"
    unlabeled_split: str = "test"

    def __post_init__(self):
        _check_fields(self)
        _choice("data.format", self.format, ("auto", "csv", "tsv", "jsonl", "parquet"))
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if isinstance(self.optional_fields, str) and self.optional_fields != "*":
            raise ConfigError(f"data.optional_fields must be a list of template fields or \"*\" (every field), got "
                              f"{self.optional_fields!r}")

    def optional_columns(self, fields: list[str]) -> set[str]:
        """The data columns, among those read for template ``fields``, whose cells may be empty.

        Args:
            fields (`list[str]`): template field names (``Template.fields``).

        Returns:
            `set[str]`: their columns (``columns`` applied) named by ``optional_fields``.

        Example:
            >>> DataConfig(optional_fields=["Url"]).optional_columns(["Title", "Url"])
            {'Url'}
        """
        every = self.optional_fields == "*"
        return {self.columns.get(f, f) for f in fields if every or f in self.optional_fields}


@dataclass
class TrainConfig:
    """How the prompt encoder is trained, evaluated and cross-validated (the ``train:`` section).

    Args:
        lr (`float`, defaults to 1e-2): AdamW learning rate.
        weight_decay (`float`, defaults to 0.0): AdamW weight decay.
        batch_size (`int`, defaults to 8): rows per batch.
        epochs (`int`, defaults to 10): passes over the training rows.
        max_steps (`int`, defaults to 0): stop after this many optimizer steps (0: all epochs).
        warmup_ratio (`float`, defaults to 0.06): share of steps warming the learning rate up.
        grad_clip (`float`, defaults to 1.0): gradient-norm clip (0: none).
        eval_every (`int`, defaults to 0): evaluate on dev every N steps (0: once per epoch).
        save_every (`int`, defaults to 0): save the resumable state every N steps too (0: per epoch only).
        patience (`int`, defaults to 0): evaluations without improvement before stopping (0: never).
        metric (`str`, defaults to ``"auto"``): ``accuracy``, ``macro_f1``, ``p@1``, ``loss`` or ``auto``.
        seed (`int`, defaults to 42): seed of the encoder, the batches and the splits.
        max_length (`int`, defaults to 256): longest input in tokens.
        eval_batch_size (`int`, defaults to 32): rows per prediction batch.
        cv_folds (`int`, defaults to 5): folds for cross-validation.
        grad_accum (`int`, defaults to 1): batches per optimizer step.
        self_train_rows (`int`, defaults to 0): confident unlabeled rows added for self-training (0: off).
        self_train_pool (`int`, defaults to 400): unlabeled rows scored to choose them from.
        distill_teachers (`int`, defaults to 0): teachers per template whose averaged label probabilities label
            unlabeled rows for the final model (0: off).
        distill_templates (`list[str]`, defaults to ``[]``): the teachers' templates (empty: ``task.template``).
        distill_verbalizers (`list[dict]`, defaults to ``[]``): each teacher template's label words (empty: the
            task's), so that every pattern speaks its labels in its own words.
        distill_rows (`int`, defaults to 400): unlabeled rows (a seeded sample) the teachers label.
        distill_rounds (`int`, defaults to 1): rounds of labelling; each round's students teach the next.
        distill_weight (`float`, defaults to 1.0): a soft-labelled row's weight in the loss (a labelled row's: 1).
        share_prefix (`bool`, defaults to True): run the rows' shared leading tokens once per batch.
        packing (`bool`, defaults to True): causal LMs: pack a batch's rows end to end instead of padding them.
        objective (`str`, defaults to ``"lm"``): ``lm`` or ``classify``.
        class_weights (`str`, defaults to ``"none"``): ``none`` or ``balanced``.
        mixed_precision (`str`, defaults to ``"no"``): ``no``, ``bf16`` or ``fp16``.
        gradient_checkpointing (`bool`, defaults to False): recompute the frozen model's blocks in the backward
            pass instead of keeping their activations.
        compile (`bool`, defaults to False): run the frozen model's forward pass through ``torch.compile`` in
            training.

    Example:
        >>> TrainConfig(lr=3e-3, epochs=4).batch_size
        8
    """
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
    distill_teachers: int = 0
    """Classification: distillation from an ensemble on ``data.unlabeled`` (PET-style). This many teachers per
    template (seeds ``seed``, ``seed + 1``, ...) are trained on the labelled rows; their averaged label
    probabilities label ``distill_rows`` unlabeled rows, and the final model trains on the labelled rows plus those
    soft-labelled rows, with the cross-entropy against each row's distribution (0: off)."""
    distill_templates: list[str] = field(default_factory=list)
    """The teachers' templates, each with every seed of ``distill_teachers`` (different wordings make the ensemble's
    errors differ); empty: ``task.template`` alone. The final model keeps ``task.template``."""
    distill_verbalizers: list[dict[str, Any]] = field(default_factory=list)
    """The label words of each template of ``distill_templates``, in its order (PET's pattern-verbalizer pairs: a
    wording may need its own words, "place" after one question, "location" after another); an empty list, or an
    empty entry, keeps ``task.verbalizer``. Teachers average the probabilities of the labels, so their words may
    differ from the final model's."""
    distill_rows: int = 400
    """How many unlabeled rows (a seeded sample of ``data.unlabeled``) the teachers label."""
    distill_rounds: int = 1
    """Rounds of labelling: in round r + 1 the teachers are retrained on the labelled rows plus round r's
    soft-labelled rows (the students of round r teach round r + 1), then label the same rows again."""
    distill_weight: float = 1.0
    """Each soft-labelled row's weight in the loss, against 1 for a labelled row."""
    share_prefix: bool = True
    """Causal LMs: run the tokens every row of a batch starts with (leading virtual tokens and anchor text) once per
    step instead of once per row; the same loss and gradients, less compute."""
    packing: bool = True
    """Causal LMs whose attention takes a custom mask (``modeling.base.PACKABLE_TYPES``): lay a training batch's rows
    end to end in a few sequences, each row attending only to itself and the shared prefix, so that no pad is
    computed; the same loss and gradients. Not used with ``compile`` or a sliding window shorter than
    ``max_length``."""
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
    gradient_checkpointing: bool = False
    """Keep only each block's input in the forward pass and recompute the block in the backward pass: activation
    memory of one block instead of all of them, for about one more forward pass of compute per step. The loss and
    gradients stay the same; causal LMs then run the shared prefix with every row (``share_prefix`` is not used)."""
    compile: bool = False
    """Run the frozen model's forward pass in training through ``torch.compile`` (dynamic shapes: batches of other
    lengths reuse the compiled code); evaluation and prediction run it as it is. Compiling comes before the first
    step and can take many minutes on a CPU (docs/speed_levers.md)."""

    def __post_init__(self):
        _check_fields(self)
        if not (self.lr > 0 and math.isfinite(self.lr)):  # also refuses .nan and .inf
            raise ConfigError(f"train.lr must be > 0 and finite, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"train.{name} must be >= 0 and finite, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "epochs", "max_length", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "patience", "self_train_rows", "self_train_pool",
                     "distill_teachers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("distill_rows", "distill_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.distill_weight > 0 and math.isfinite(self.distill_weight)):
            raise ConfigError(f"train.distill_weight must be > 0 and finite, got {self.distill_weight}")
        if self.distill_templates and not self.distill_teachers:
            raise ConfigError("train.distill_templates is set but train.distill_teachers is 0: give the teachers "
                              "per template")
        if self.distill_teachers and self.self_train_rows:
            raise ConfigError("train.distill_teachers and train.self_train_rows both label unlabeled rows: choose "
                              "one (self-training is distillation from one teacher with hard labels)")
        for i, template in enumerate(self.distill_templates):
            try:
                parse_template(template)
            except TemplateError as err:
                raise ConfigError(f"train.distill_templates[{i}]: {err}") from None
        if self.distill_verbalizers and len(self.distill_verbalizers) != len(self.distill_templates):
            raise ConfigError(f"train.distill_verbalizers has {len(self.distill_verbalizers)} entries but "
                              f"train.distill_templates has {len(self.distill_templates)}: give one verbalizer per "
                              "teacher template ({} keeps task.verbalizer)")
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
    """A whole run's configuration: five sections, each checked when built. A section may be given as its
    dataclass or as a mapping of its keys; a wrong key, type or value raises ``ConfigError`` naming the key.

    Args:
        model (`ModelConfig` or `dict`, *optional*): the frozen base model.
        task (`TaskConfig` or `dict`, *optional*): template, labels and task type.
        encoder (`EncoderConfig` or `dict`, *optional*): the prompt encoder.
        data (`DataConfig` or `dict`, *optional*): the data files.
        train (`TrainConfig` or `dict`, *optional*): training, evaluation and cross-validation settings.

    Example:
        >>> cfg = Config(task=TaskConfig(template="[P*4] {text} Label : [TARGET]"),
        ...              data={"train": "train.csv"}, train={"epochs": 3})
        >>> faster = cfg.replace({"train.lr": 3e-2})  # a new Config; cfg is unchanged
        >>> (cfg.train.lr, faster.train.lr, faster.data.train)
        (0.01, 0.03, 'train.csv')
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _section(f.name, getattr(self, f.name)))
        for name in ("self_train_rows", "distill_teachers"):
            if getattr(self.train, name) and not self.data.unlabeled:
                raise ConfigError(f"train.{name} is set but data.unlabeled is not: give the unlabeled rows")
        if self.task.calibrate == "prior" and not self.data.unlabeled:
            raise ConfigError("task.calibrate is 'prior' but data.unlabeled is not: the offsets are fitted on "
                              "unlabeled rows of the task")
        for name in ("objective", "class_weights", "self_train_rows", "distill_teachers"):
            if getattr(self.train, name) != TrainConfig.__dataclass_fields__[name].default \
                    and self.task.type != "classification":
                raise ConfigError(f"train.{name} is {getattr(self.train, name)!r} but applies to classification "
                                  f"only (task.type is {self.task.type!r})")
        self._check_teacher_labels()
        if self.task.head == "linear" and self.train.objective != "lm":
            raise ConfigError("train.objective chooses how label words are trained (task.head: words); with "
                              "task.head linear the classifier's cross-entropy is the objective: leave it at 'lm'")
        try:
            template = parse_template(self.task.template)
        except TemplateError:
            return  # reported, with its place, where the template is used
        self._check_optional_fields(template.fields)
        n = template.n_virtual
        if n >= self.train.max_length:
            raise ConfigError(f"task.template has {n} virtual tokens but train.max_length is {self.train.max_length}: "
                              "no room is left for the data and the target")

    def _check_teacher_labels(self) -> None:
        """Each teacher's own verbalizer speaks the task's labels, no more and no fewer (where the task lists
        them; otherwise the labels are checked against the data when the teachers' sessions open)."""
        labels = {str(k) for k in self.task.verbalizer}
        for i, words in enumerate(self.train.distill_verbalizers):
            if words and labels and {str(k) for k in words} != labels:
                raise ConfigError(f"train.distill_verbalizers[{i}] speaks the labels {sorted(map(str, words))} but "
                                  f"task.verbalizer has {sorted(labels)}: a teacher's words must name the same labels")

    def _check_optional_fields(self, fields: list[str]) -> None:
        """Each name in data.optional_fields is a field a template of the run reads, and never the label column."""
        names = self.data.optional_fields
        if names == "*":
            return
        for text in self.train.distill_templates:
            try:
                fields = fields + parse_template(text).fields
            except TemplateError:
                pass  # reported where train.distill_templates is checked
        for name in names:
            if name == self.task.label_column:
                raise ConfigError(f"data.optional_fields names {name!r}, the label column (task.label_column): "
                                  "the target is never optional")
            if name not in fields:
                raise ConfigError(f"data.optional_fields names {name!r}, which task.template does not read; its "
                                  f"fields: {', '.join(map(repr, dict.fromkeys(fields))) or '(none)'}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "Config":
        """A config from a mapping of sections, as a YAML config file holds them.

        Args:
            values (`dict`, *optional*): ``{section: {key: value}}``; missing sections and keys keep their defaults.

        Returns:
            `Config`: the checked config.

        Example:
            >>> Config.from_dict({"train": {"epochs": 3}}).train.epochs
            3
        """
        return config_from_dict(values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> "Config":
        """Read a YAML config file (see ``load_config``).

        Args:
            path (`str` or `Path`): the file; relative data paths in it are taken from its folder.
            overrides (`list[str]`, *optional*): ``section.key=value`` strings applied on top.

        Returns:
            `Config`: the checked config.

        Example:
            >>> cfg = Config.from_yaml("examples/demo_customer_messages.yaml", ["train.epochs=2"])
        """
        return load_config(path, overrides)

    def to_dict(self) -> dict:
        """The config as plain values, ``{section: {key: value}}`` (a copy: changing it changes nothing here).

        Returns:
            `dict`: what ``Config.from_dict`` takes back.

        Example:
            >>> Config().to_dict()["train"]["epochs"]
            10
        """
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text, as ``ptune train --config`` reads it; written to ``path`` when given.

        Args:
            path (`str` or `Path`, *optional*): a file to write. Relative data paths are read from that file's
                folder when it is loaded again.

        Returns:
            `str`: the YAML text.

        Example:
            >>> Config(train={"epochs": 3}).to_yaml("run.yaml").count("epochs: 3")
            1
        """
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            write_atomic(path, text.encode("utf-8"))
        return text

    def replace(self, changes: dict[str, Any] | None = None, /, **sections: Any) -> "Config":
        """A new config with some keys changed; this one is left as it is.

        Args:
            changes (`dict[str, Any]`, *optional*): dotted keys -> new values, e.g. ``{"train.lr": 3e-2}``.
            **sections (`dict` or a section dataclass): keys to change per section, e.g. ``train={"lr": 3e-2}``.

        Returns:
            `Config`: the changed copy, checked like any config (``ConfigError`` names a wrong key).

        Example:
            >>> cfg = Config()
            >>> cfg.replace({"train.lr": 3e-2}, task={"head": "linear"}).task.head, cfg.task.head
            ('linear', 'words')
        """
        values = self.to_dict()
        for name, updates in sections.items():
            if dataclasses.is_dataclass(updates) and not isinstance(updates, type):
                updates = dataclasses.asdict(updates)
            if not isinstance(updates, dict):
                raise ConfigError(f"{name}: expected a mapping of keys to new values, got {type(updates).__name__}")
            values[name] = {**values.get(name, {}), **updates}
        for dotted, value in (changes or {}).items():
            *parents, leaf = str(dotted).split(".")
            node = values
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{dotted}: {part} is not a section")
            node[leaf] = value
        return config_from_dict(values)

    def override(self, *items: str) -> "Config":
        """A new config with ``section.key=value`` strings applied, as ``--set`` applies them on the command line.

        Args:
            *items (`str`): e.g. ``"train.lr=3e-2"``; values are read as YAML (``3e-2``, ``true``, ``[a, b]``).

        Returns:
            `Config`: the changed copy; this one is left as it is.

        Example:
            >>> Config().override("train.lr=3e-2", "train.epochs=4").train.epochs
            4
        """
        return config_from_dict(apply_overrides(self.to_dict(), list(items)))

    @property
    def metric(self) -> str:
        if self.train.metric != "auto":
            return self.train.metric
        return {"classification": "accuracy", "probing": "p@1", "generation": "loss"}[self.task.type]


SECTIONS = {"model": ModelConfig, "task": TaskConfig, "encoder": EncoderConfig, "data": DataConfig,
            "train": TrainConfig}


def _section(name: str, value: Any) -> Any:
    """A section given as its dataclass, or as a mapping built into one (its keys checked)."""
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return _build(cls, value, f"{name}.")
    raise ConfigError(f"{name}: expected a {cls.__name__} or a mapping of its keys, got {type(value).__name__}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_fields(section: Any) -> None:
    """Each field of a section checked against its type, however the section was built (keywords, a mapping, a
    file); numbers become floats where floats are expected, and paths become text."""
    name = type(section).__name__.removesuffix("Config").lower()
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        setattr(section, f.name, _check_type(f"{name}.{f.name}", value, _field_types(type(section))[f.name]))


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
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        # sections are built (and every value type-checked) by the dataclasses themselves
        kwargs[key] = {} if key in SECTIONS and cls is Config and value is None else value
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
    """Read a YAML config (relative data paths resolve against the config's folder) and apply overrides.

    Args:
        path (`str` or `Path`, *optional*): the YAML file; None starts from the defaults.
        overrides (`list[str]`, *optional*): ``section.key=value`` strings, as ``--set`` gives them.

    Returns:
        `Config`: the checked config.

    Example:
        >>> load_config("examples/demo_customer_messages.yaml", ["train.epochs=2"]).train.epochs
        2
    """
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


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with its relative file paths made absolute (from the working directory), so that it means the same
    when written to a file elsewhere."""
    changes = {f"data.{name}": os.path.abspath(value) for name in ("train", "dev", "test", "unlabeled")
               if (value := getattr(cfg.data, name)) and not value.startswith("hf:")}
    if cfg.task.vocab_file:
        changes["task.vocab_file"] = os.path.abspath(cfg.task.vocab_file)
    return cfg.replace(changes)


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
