"""The built-in search space: what ``ptune search`` tries when the config has no ``search.space``.

Every candidate is a dict of dotted config keys to values, applied over the config itself. The space, in full:

- the linear probe (no virtual tokens, nothing trained but the classifier): ``PROBE_LAYERS`` x ``POOLINGS``;
- prompts started at the manual words (``started_candidates``): the template's anchor text before the target
  becomes as many virtual tokens as it has tokens, each the sum of its word's embedding and a residual LSTM output
  that starts at zero (``encoder.residual``), x ``DEEP_HEADS``; at step 0 such a candidate is exactly the zero-shot
  prompt (label words) or the middle-layer probe (linear head, fitted before training), so the folds choose its
  training only where it helps; at the config's ``train.lr``, on templates with anchor words before a final target;
- input-layer prompts: ``template_candidates`` (the template as written, its runs halved, and the same count of
  virtual tokens placed elsewhere) x ``HEADS`` x ``ENCODERS`` x ``LR_FACTORS`` (times the config's ``train.lr``);
- deep prompts (P-tuning v2: trained keys and values at every layer, ``encoder.deep_tokens``): the manual template
  without ``[P]`` runs x ``DEEP_PROMPTS`` (8 positions as a table started from the label words' keys and values, 16
  through the ``mlp`` reparameterisation) x ``DEEP_HEADS`` (the label words, and a linear head at the middle layer),
  at the config's ``train.lr``; on causal LMs only (a deep prompt lives in the KV cache), and left out where
  ``train.gradient_checkpointing`` is on (which a deep prompt cannot run with).

Each candidate has a kind (``KINDS``: the probe, a prompt started at the manual words, an input-layer prompt read by
the label words, one read by a linear head, a deep prompt), and the candidates are listed round-robin over the
kinds, each kind's best guess first: a budget that scores only the first few candidates has scored one of every
kind. (The search puts the prompt started at the probe before the one started at the zero-shot prompt where the
probe scores higher: ``search.start_from_the_better``.)

``train.epochs`` is not a key of the space: successive halving (``halving.py``) spends epochs as its resource, the
config's own ``train.epochs`` on the last rung. The linear head's layers exist on causal LMs only, so on other
models (and for tasks other than classification) the space keeps the prompts and the label words alone.
"""

from __future__ import annotations

import itertools
import re

from ..errors import TemplateError
from ..template import VIRTUAL_RUN, parse_template, residual_form, without_virtual

# the linear head's layers, by name: "middle" is task.head_layer 0 (depth // 2), "late" three quarters down
PROBE_LAYERS = ("middle", "late")
POOLINGS = ("mean", "last")
# how a prompted candidate reads its label: the label words, or a linear head at the middle or a late layer
HEADS = ({"task.head": "words"},
         {"task.head": "linear", "task.head_layer": "middle", "task.head_pooling": "mean"},
         {"task.head": "linear", "task.head_layer": "late", "task.head_pooling": "last"})
ENCODERS = ("lstm", "mlp")
LR_FACTORS = (1.0, 0.3)  # times the config's train.lr
DERIVED_RUN = 8  # virtual tokens placed when the template has none
# deep prompts (P-tuning v2): keys and values at every layer. First a table started as the keys and values the
# frozen model gives the label words (at step 0, the manual prompt with those words before it: on few-shot SST-2,
# AG News and TREC, ptune bench fewshot's deep_text scored 0.786, 0.719 and 0.657 where the MLP's random start was
# at chance on the first two), then the MLP reparameterisation. Tasks without label words (generation) take the
# MLP's only.
DEEP_PROMPTS = ({"encoder.deep_tokens": 8, "encoder.deep_encoder": "table", "encoder.init": "labels"},
                {"encoder.deep_tokens": 16, "encoder.deep_encoder": "mlp"})
DEEP_HEADS = HEADS[:2]  # the label words, and a linear head at the middle layer

# the kinds of candidate, in the order the round-robin takes them
PROBE, WORDS, LINEAR, DEEP = "linear probe", "prompt, label words", "prompt, linear head", "deep prompt"
PROMPT = "prompt"  # an input-layer prompt of a task without a head to choose (not a classification)
STARTED = "prompt started at the manual words"
KINDS = (PROBE, STARTED, WORDS, LINEAR, PROMPT, DEEP)

_TARGET = re.compile(r"\[(?:TARGET|MASK)\]")


def layer_number(name: str, depth: int) -> int:
    """``task.head_layer`` for a named layer of a model with ``depth`` blocks (valid layers: 1 to depth)."""
    middle = max(1, depth // 2)
    return middle if name == "middle" else min(depth, max(middle + 1, round(depth * 3 / 4)))


def numbered(head: dict, depth: int | None) -> dict:
    """A head's settings with its named layer (``"middle"``, ``"late"``) as ``task.head_layer``'s number."""
    return {k: layer_number(v, depth) if k == "task.head_layer" else v for k, v in head.items()}


def template_candidates(template: str) -> list[str]:
    """The prompted templates to try: the template as written, with each ``[P*n]`` run halved (at least one token),
    and the same number of virtual tokens in one run elsewhere (before the manual prompt, or before the target if
    the template starts with its virtual tokens). A template without virtual tokens gets ``DERIVED_RUN`` of them
    before it and before its target.

    Args:
        template (`str`): the config's ``task.template``.

    Returns:
        `list[str]`: distinct templates, the one written first when it has virtual tokens.

    Example:
        >>> template_candidates("{text} [P*8] Label : [TARGET]")
        ['{text} [P*8] Label : [TARGET]', '{text} [P*4] Label : [TARGET]', '[P*8] {text} Label : [TARGET]']
    """
    manual = without_virtual(template)
    n = parse_template(template).n_virtual
    before_target = _TARGET.sub(lambda m: f"[P*{n or DERIVED_RUN}] {m.group(0)}", manual, count=1)
    if not n:
        out = [f"[P*{DERIVED_RUN}] {manual}", before_target]
    else:
        halved = VIRTUAL_RUN.sub(lambda m: f"[P*{max(1, int(m.group(1) or 1) // 2)}]", template)
        prefix = f"[P*{n}] {manual}"
        out = [template, halved, before_target if parse_template(template).is_prefix else prefix]
    return list(dict.fromkeys(out))


def builtin_space(values: dict, depth: int | None, tokenizer=None) -> list[dict]:
    """Every candidate of the built-in space for a config, round-robin over the kinds (``builtin_candidates``).

    Args:
        values (`dict`): the config's values (``{section: {key: value}}``), before the candidates' changes.
        depth (`int`, *optional*): the model's number of blocks where a linear head can read them (a causal LM);
            None: no linear head and no probe.
        tokenizer (*optional*): the base model's tokenizer, which counts the anchor's tokens for the prompts
            started at the manual words; None: no such prompts.

    Returns:
        `list[dict]`: one dict of dotted config keys -> values per candidate.

    Example:
        >>> len(builtin_space({"task": {"template": "{text} [P*8] Label : [TARGET]"}}, depth=30))
        44
    """
    return [settings for _, settings in builtin_candidates(values, depth, tokenizer)]


def builtin_candidates(values: dict, depth: int | None, tokenizer=None) -> list[tuple[str, dict]]:
    """Every candidate of the built-in space with its kind: the first of each kind (probe, prompt started at the
    manual words, prompt read by the label words, prompt read by a linear head, deep prompt), then the second of
    each, and so on, so that a budget cut short after k candidates has still scored each kind's best guess.

    Args:
        values (`dict`): the config's values (``{section: {key: value}}``), before the candidates' changes.
        depth (`int`, *optional*): the model's number of blocks where a linear head can read them (a causal LM);
            None: no linear head and no probe.
        tokenizer (*optional*): the base model's tokenizer (``builtin_space``); None: no prompts started at the
            manual words.

    Returns:
        `list[tuple[str, dict]]`: (kind, one of ``KINDS``; dotted config keys -> values) per candidate.

    Example:
        >>> [kind for kind, _ in builtin_candidates({"task": {"template": "{text} [P*8] [TARGET]"}}, depth=30)][:5]
        ['linear probe', 'prompt, label words', 'prompt, linear head', 'deep prompt', 'linear probe']
    """
    task, lr = values.get("task", {}), float(values.get("train", {}).get("lr", 3e-2))
    template = task.get("template", "[P*8] {text} [TARGET]")
    classify = task.get("type", "classification") == "classification"
    heads = [h for h in HEADS if depth or h["task.head"] == "words"] if classify else [{}]
    by_kind: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    if classify and depth:
        manual = without_virtual(template)
        for layer, pooling in itertools.product(PROBE_LAYERS, POOLINGS):
            by_kind[PROBE].append({"task.template": manual, "task.head": "linear",
                                   "task.head_layer": layer_number(layer, depth), "task.head_pooling": pooling})
    # within a kind, templates vary fastest, then encoders, learning rates (and layers for the linear head)
    for factor, encoder, text, head in itertools.product(LR_FACTORS, ENCODERS, template_candidates(template),
                                                         heads):
        kind = {"words": WORDS, "linear": LINEAR}.get(head.get("task.head"), PROMPT)
        head = numbered(head, depth)
        by_kind[kind].append({"task.template": text, **head, "encoder.type": encoder,
                              "train.lr": float(f"{lr * factor:.3g}")})
    if tokenizer is not None:
        by_kind[STARTED] = started_candidates(without_virtual(template), depth, lr, tokenizer, classify)
    if depth and not values.get("train", {}).get("gradient_checkpointing"):
        by_kind[DEEP] = deep_candidates(without_virtual(template), depth, lr, classify)
    distinct = {kind: list({repr(sorted(c.items())): c for c in group}.values())  # tiny depths repeat
                for kind, group in by_kind.items()}
    return round_robin(distinct)


def round_robin(groups: dict[str, list]) -> list[tuple[str, object]]:
    """The first item of each group (in the groups' order), then the second of each, ...; a group that runs out is
    skipped.

    Args:
        groups (`dict[str, list]`): the items of each group, in their own order.

    Returns:
        `list[tuple[str, object]]`: (group name, item), every item once.

    Example:
        >>> round_robin({"a": [1, 2, 3], "b": [4], "c": []})
        [('a', 1), ('b', 4), ('a', 2), ('a', 3)]
    """
    rows = itertools.zip_longest(*([(name, item) for item in items] for name, items in groups.items()))
    return [pair for row in rows for pair in row if pair is not None]


def deep_candidates(manual: str, depth: int, lr: float, classify: bool = True) -> list[dict]:
    """The deep-prompt candidates over the manual template (no ``[P]`` runs): ``DEEP_PROMPTS`` x ``DEEP_HEADS``
    for a classification, the prompts that need no label words alone otherwise.

    Args:
        manual (`str`): the config's template without its virtual tokens.
        depth (`int`): the causal LM's number of blocks (for the linear head's layer).
        lr (`float`): the config's ``train.lr``.
        classify (`bool`): the task is a classification (it has label words and heads to choose).

    Returns:
        `list[dict]`: one dict of dotted config keys -> values per candidate.

    Example:
        >>> deep_candidates("{text} Label : [TARGET]", 30, 3e-2)[0]["encoder.deep_tokens"]
        8
    """
    prompts = [deep for deep in DEEP_PROMPTS if classify or deep.get("encoder.init") != "labels"]
    out = []
    for deep, head in itertools.product(prompts, DEEP_HEADS if classify else ({},)):
        head = numbered(head, depth)
        out.append({"task.template": manual, **head, **deep, "train.lr": float(f"{lr:.3g}")})
    return out


def started_candidates(manual: str, depth: int | None, lr: float, tokenizer, classify: bool = True) -> list[dict]:
    """The prompts started at the manual words: ``manual``'s anchor text before a final target as virtual tokens
    that start at its words' embeddings (``template.residual_form``) plus an LSTM's residual that starts at zero,
    read by each of ``DEEP_HEADS`` (the linear head only where ``depth`` says one can read the model), or by the
    task's own output when it is not a classification. None where the template has no anchor words to start from.

    Args:
        manual (`str`): the config's template without its virtual tokens.
        depth (`int`, *optional*): the causal LM's number of blocks (for the linear head's layer); None: the label
            words only.
        lr (`float`): the config's ``train.lr``.
        tokenizer: the base model's tokenizer (counts the anchor's tokens).
        classify (`bool`): the task is a classification (it has heads to choose).

    Returns:
        `list[dict]`: one dict of dotted config keys -> values per candidate.

    Example:
        >>> started_candidates("Review : {text} Sentiment : [TARGET]", 30, 1e-2, tok)[0]  # doctest: +SKIP
        {'task.template': 'Review : {text} [P*3] [TARGET]', 'task.head': 'words', 'encoder.type': 'lstm', ...}
    """
    try:
        template, init_text = residual_form(manual, tokenizer)
    except TemplateError:
        return []
    start = {"encoder.type": "lstm", "encoder.init": "text", "encoder.init_text": init_text,
             "encoder.residual": True, "train.lr": float(f"{lr:.3g}")}
    heads = [h for h in DEEP_HEADS if depth or h["task.head"] == "words"] if classify else [{}]
    out = []
    for head in heads:
        head = numbered(head, depth)
        out.append({"task.template": template, **head, **start})
    return out
