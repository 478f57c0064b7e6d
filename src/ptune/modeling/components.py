"""The parts of a run chosen once, when its session opens, and what they allow: the head (what is scored and how it
trains) and the prompt (where the trained vectors enter the frozen model). The trainer, the packer, the scorers, the
server and the PEFT export ask these objects (``Supports``) instead of comparing config strings.

    head     LabelWordsHead     label words scored by the LM head (the paper's way): every fast path applies
             LinearClassifier   a classifier over one block's pooled states: no label words to share, pack or export
    prompt   InputPrompt        virtual tokens spliced into the input embeddings (P-tuning)
             DeepPrompt         and/or trained keys and values before the text at every layer (P-tuning v2,
                                ``encoder.deep_tokens``): prefix sharing and packing, no mixing

A new prompt kind is one more ``Prompt`` subclass here, with its own answers, chosen in ``build_prompt``, plus its
part of the model's forward pass; the callers only ask.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..template import Template
from .base import packable


@dataclass(frozen=True)
class Supports:
    """What a run's head and prompt allow together, over its base model.

    Args:
        packing (`bool`): training rows laid end to end in bins, no padding (``data.packing``).
        prefix_sharing (`bool`): the tokens every row opens with (special tokens, virtual tokens, anchor text) run
            once per batch, and their keys and values are reused (``Task.batch(share_prefix=True)``, label scoring).
        mixing (`bool`): rows of several tasks scored in one model call (``tasks.mixed``, the server's batches).
        peft_export (`bool`): a PEFT prompt-tuning adapter reproduces the model (``interop.peft``).

    Example:
        >>> supports_of(build_head("linear"), InputPrompt(template, "causal", packs=True)).packing
        False
    """
    packing: bool
    prefix_sharing: bool
    mixing: bool
    peft_export: bool


class Head:
    """What a run scores and trains (``task.head``). Subclasses set the class attributes.

    Attributes:
        name (`str`): its ``task.head`` value.
        model_kinds (`tuple[str, ...]`): the base model kinds it runs on.
        fits_classifier (`bool`): a classifier of its own (``LinearHead``) is fitted over pooled hidden states and
            trained by cross-entropy; else the label words are scored by the LM head and trained by their likelihood.
        needs_virtual (`bool`): the template must hold virtual tokens (a classifier may stand alone: a linear probe).
        target_in_input (`bool`): training rows hold the gold label's word after the input.
        packing, prefix_sharing, mixing, peft_export (`bool`): its part of ``Supports``.
    """
    name = ""
    model_kinds: tuple[str, ...] = ("causal", "masked", "seq2seq")
    fits_classifier = False
    needs_virtual = True
    target_in_input = True
    packing = prefix_sharing = mixing = peft_export = True

    def check_kind(self, kind: str, model_name: str) -> str | None:
        """Why this head cannot run on a ``kind`` LM named ``model_name`` (None: it can)."""
        if kind in self.model_kinds:
            return None
        return (f"task.head {self.name} needs a {' or '.join(self.model_kinds)} LM; {model_name} is a {kind} LM "
                "(use task.head words)")


class LabelWordsHead(Head):
    """``task.head: words``: every label's words scored by the base's own LM head after the input."""
    name = "words"


class LinearClassifier(Head):
    """``task.head: linear``: a linear classifier over one block's pooled hidden states (``heads.LinearHead``).
    It reads the input alone, every position of it, so no label word is shared, packed, mixed or exported."""
    name = "linear"
    model_kinds = ("causal",)
    fits_classifier = True
    needs_virtual = False
    target_in_input = False
    packing = prefix_sharing = mixing = peft_export = False


HEADS: dict[str, Head] = {h.name: h for h in (LabelWordsHead(), LinearClassifier())}


def build_head(name: str) -> Head:
    """The head for ``task.head`` (validated by the config: ``words`` or ``linear``).

    Example:
        >>> build_head("linear").fits_classifier
        True
    """
    return HEADS[name]


class Prompt:
    """Where the trained vectors enter the frozen model, and which fast paths that leaves open. Subclasses answer.

    Attributes:
        name (`str`): the prompt kind.
    """
    name = ""

    @property
    def packing(self) -> bool:
        raise NotImplementedError

    @property
    def prefix_sharing(self) -> bool:
        raise NotImplementedError

    @property
    def mixing(self) -> bool:
        raise NotImplementedError

    def peft_problem(self) -> str | None:
        """Why a PEFT prompt-tuning adapter could not reproduce this prompt (None: it could)."""
        raise NotImplementedError

    @property
    def peft_export(self) -> bool:
        return self.peft_problem() is None


class InputPrompt(Prompt):
    """Input-layer virtual tokens (P-tuning): the encoder's table replaces the embeddings at the template's ``[P]``
    positions (``PTuningModel.embed``); the frozen model runs as it is.

    Args:
        template (`Template`): the parsed ``task.template``.
        kind (`str`): the base model's kind (``causal``, ``masked`` or ``seq2seq``).
        packs (`bool`): the base model's family takes a packed batch's custom mask (``modeling.base.packable``).

    Example:
        >>> InputPrompt(parse_template("[P*4] {text} [TARGET]"), "causal", packs=True).peft_export
        True
    """
    name = "input"

    def __init__(self, template: Template, kind: str, packs: bool = False):
        self.template = template
        self.kind = kind
        self.packs = packs

    @property
    def packing(self) -> bool:
        return self.kind == "causal" and self.packs

    @property
    def prefix_sharing(self) -> bool:
        # the KV cache of the text before the rows' fields, virtual tokens included: causal models only
        return self.kind == "causal"

    @property
    def mixing(self) -> bool:
        # each row's virtual positions point into its own task's part of a stacked table
        return self.kind == "causal"

    def peft_problem(self) -> str | None:
        if not self.template.is_prefix:
            return (f"template {self.template.source!r} has virtual tokens after other text; PEFT's prompt learning "
                    "only prepends them, so it could not reproduce this template (use a template whose [P*n] runs "
                    "all come first)")
        if self.kind != "causal":
            return (f"the base model is a {self.kind} LM; the PEFT interop supports causal LMs only (PEFT's prompt "
                    "learning has no masked-LM task type)")
        return None


class DeepPrompt(InputPrompt):
    """A deep prompt (P-tuning v2, ``encoder.deep_tokens``): n trained keys and values before the text at every
    layer, held in the KV cache (``modeling.deep``), beside the template's ``[P]`` tokens if it has any.

    What it allows: prefix sharing yes (a shared prefix runs once behind the deep prompt, its keys and values after
    the deep ones; the label words' prefix tree runs on that cache); packing where the input prompt's allows it (a
    packed bin's custom mask gains the deep prompt's n columns, every place seeing them, and its cache holds them);
    mixing no (a mixed batch stacks input tables only: the task's rows are scored on their own). A PEFT prefix-tuning adapter holds the same keys and
    values, so it can reproduce a template without ``[P]`` tokens on a causal LM.

    Args:
        template, kind: see ``InputPrompt``.
        deep_tokens (`int`): the deep prompt's positions per layer.
        packs (`bool`): see ``InputPrompt``.

    Example:
        >>> DeepPrompt(parse_template("{text} Label : [TARGET]"), "causal", 8).mixing
        False
    """
    name = "deep"

    def __init__(self, template: Template, kind: str, deep_tokens: int, packs: bool = False):
        super().__init__(template, kind, packs)
        self.deep_tokens = deep_tokens

    @property
    def mixing(self) -> bool:
        return False

    def peft_problem(self) -> str | None:
        if self.template.n_virtual:
            return (f"template {self.template.source!r} has [P] tokens beside the deep prompt; PEFT's prefix tuning "
                    "holds the per-layer keys and values alone, so it could not reproduce them (use a template "
                    "without [P] tokens)")
        if self.kind != "causal":
            return f"the base model is a {self.kind} LM; deep prompts run on causal LMs only"
        return None


def build_prompt(template: Template, kind: str, base_model=None, deep_tokens: int = 0) -> Prompt:
    """The prompt for a run: input-layer virtual tokens, and with ``encoder.deep_tokens`` a deep prompt.

    Args:
        template (`Template`): the parsed ``task.template``.
        kind (`str`): the base model's kind.
        base_model (`transformers.PreTrainedModel`, *optional*): the loaded frozen model, whose family and attention
            decide packing (None: not loaded, so no packing).
        deep_tokens (`int`, defaults to 0): ``encoder.deep_tokens`` (0: no deep prompt).

    Returns:
        `Prompt`: an ``InputPrompt``, or a ``DeepPrompt`` where ``deep_tokens`` > 0.

    Example:
        >>> build_prompt(session.template, session.base.kind, session.base.model).packing  # doctest: +SKIP
        True
    """
    packs = base_model is not None and packable(base_model)
    if deep_tokens:
        return DeepPrompt(template, kind, deep_tokens, packs)
    return InputPrompt(template, kind, packs)


def supports_of(head: Head, prompt: Prompt, *, labels: bool = True) -> Supports:
    """What ``head`` and ``prompt`` allow together. ``labels``: the task ranks labels (classification), the only
    kind whose rows can share a call with other tasks' rows.

    Example:
        >>> supports_of(build_head("words"), InputPrompt(template, "masked")).prefix_sharing
        False
    """
    return Supports(packing=head.packing and prompt.packing,
                    prefix_sharing=head.prefix_sharing and prompt.prefix_sharing,
                    mixing=labels and head.mixing and prompt.mixing,
                    peft_export=head.peft_export and prompt.peft_export)
