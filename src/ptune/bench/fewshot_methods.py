"""The fixed recipes of the few-shot methods that train from the manual prompt the k rows prefer:

- ``residual``: P-tuning started at that prompt's words (``fewshot_choice.residual_encoder``), the ``unlabeled``
  method's student without the soft rows;
- ``deep``: a deep prompt (P-tuning v2, ``encoder.deep_tokens``: trained keys and values at every layer of a causal
  LM) over the task's manual template, read by its label words;
- ``deep_text``: the same, its keys and values a plain table started as those the frozen model gives the prompt's
  label words (``encoder.deep_encoder: table``, ``init: labels``): at step 0 the model reads the manual prompt with
  its label words written before it, not a random prefix;
- ``unlabeled``: PET-style distillation (``train.distill_*``): teachers, residual P-tuning started at the manual
  prompts' words, trained on the k rows, label a sample of the task's other training rows with their labels
  removed, and the student (the residual form of the manual prompt) trains on the k rows plus those soft labels;
- ``deep_unlabeled``: the same distillation with ``deep_text``'s recipe for teachers and student;
- ``deep_pvp``: ``deep_unlabeled`` taught by every manual prompt of the task, each read by its own label words
  (PET's pattern-verbalizer pairs), not only by those that share the student's words;
- ``deep_pet``: ``deep_pvp`` with three teachers (seeds) per manual prompt, as PET trains three models per pattern.

The recipes are fixed here, once, before any of their figures was seen; ``fewshot.FewshotRun`` runs them.
"""

from __future__ import annotations

from ..data.tables import Table
from ..template import parse_template, residual_form
from .fewshot_choice import DEEP_TEXT_RECIPE, residual_encoder

# the deep prompt: 8 positions through the mlp reparameterisation (the built-in search space's first deep candidate
# when the method was written), at 1e-2 for 6 epochs. Fixed before any figure of the method was seen.
DEEP_ENCODER: dict = {"deep_tokens": 8, "deep_encoder": "mlp"}
DEEP_LR, DEEP_EPOCHS = 1e-2, 6
# the deep prompt started from text (``fewshot_choice.deep_text_encoder``, also a candidate of the choice): 8
# positions, a table of keys and values started as the frozen model's for the label words (``encoder.init:
# labels``: ", "-joined, cycled or cut to 8 tokens), at 1e-2 for 6 epochs. Fixed before any figure was seen.
DEEP_TEXT_LR, DEEP_TEXT_EPOCHS = DEEP_TEXT_RECIPE
# distillation on unlabeled rows: one teacher per template, 400 rows labelled, one round, a soft row weighing as a
# labelled one; teachers and student residual P-tuning at 1e-2 for 6 epochs. Fixed before any figure was seen.
DISTILL: dict = {"train.distill_teachers": 1, "train.distill_rows": 400, "train.distill_rounds": 1,
                 "train.distill_weight": 1.0}
DISTILL_LR, DISTILL_EPOCHS = 1e-2, 6
# ``deep_unlabeled``: DISTILL with deep_text's encoder and recipe for teachers and student, nothing of its own to
# choose; written after deep_text's and unlabeled's figures had been seen, before any of its own.
# ``deep_pvp``: deep_unlabeled with one teacher per manual prompt, each with its own words (SST-2, TREC and AG News
# have two prompts whose words differ, so deep_unlabeled had one teacher there); nothing else of its own. Written
# after deep_unlabeled's TREC and AG News figures had been seen, before any of its own.
# ``deep_pet``: deep_pvp with PET's three teachers (seeds) per pattern-verbalizer pair, nothing else of its own; a
# teacher trains on the k rows alone, each cheaper than the student on the k rows plus the soft ones. Written after
# deep_pvp's TREC and SST-2 figures had been seen (a run seed moves TREC by up to 0.16), before any of its own.
PET_TEACHERS = 3


def deep_encoder() -> dict:
    """The ``encoder`` section of the ``deep`` method: no input-layer virtual tokens, a deep prompt of
    ``DEEP_ENCODER``.

    Returns:
        `dict`: encoder keys (``deep_tokens``, ``deep_encoder`` and the input encoder's unused defaults).

    Example:
        >>> deep_encoder()["deep_tokens"], deep_encoder()["deep_encoder"]
        (8, 'mlp')
    """
    return {"type": "lstm", "hidden_size": 128, **DEEP_ENCODER}


def distill_plan(prompts: list[tuple[str, dict]], tokenizer) -> tuple[str, str, list[str]]:
    """The student's template and start text, and the teachers' templates, from the task's manual prompts.

    Every teacher shares the student's label words and encoder section (``distillation.teacher_sessions`` changes
    only the template), so a prompt teaches only where its verbalizer and its anchor words equal the first
    (manual) prompt's; the others are left out rather than started at words not their own.

    Args:
        prompts (`list[tuple[str, dict]]`): the task's manual prompts, (template, verbalizer), the student's first.
        tokenizer: the base model's tokenizer (the residual forms' token counts).

    Returns:
        `tuple[str, str, list[str]]`: (student template, ``encoder.init_text``, teacher templates).

    Example:
        >>> distill_plan([("{text} Topic : [TARGET]", {"a": "world"})], tok)  # doctest: +SKIP
        ('{text} [P*2] [TARGET]', ' Topic :', ['{text} [P*2] [TARGET]'])
    """
    (manual, verbalizer), teachers = prompts[0], []
    student, init_text = residual_form(manual, tokenizer)
    for template, words in prompts:
        form, start = residual_form(template, tokenizer)
        if words == verbalizer and start == init_text and form not in teachers:
            teachers.append(form)
    return student, init_text, teachers


def deep_text_plan(prompts: list[tuple[str, dict]]) -> tuple[str, list[str]]:
    """The ``deep_unlabeled`` method's student template and teachers' templates: the manual templates as they are
    (a deep prompt needs no virtual tokens in them). A teacher starts its deep table from the label words, so only
    the templates that share the first (manual) prompt's verbalizer teach.

    Example:
        >>> deep_text_plan([("{t} Topic : [TARGET]", {"a": "world"}), ("{t} It is about [TARGET]", {"a": "world"}),
        ...                 ("{t} News : [TARGET]", {"a": "politics"})])
        ('{t} Topic : [TARGET]', ['{t} Topic : [TARGET]', '{t} It is about [TARGET]'])
    """
    (student, verbalizer), teachers = prompts[0], []
    for template, words in prompts:
        if words == verbalizer and template not in teachers:
            teachers.append(template)
    return student, teachers


def deep_pvp_plan(prompts: list[tuple[str, dict]]) -> tuple[str, list[tuple[str, dict]]]:
    """The ``deep_pvp`` method's student template and teachers: every manual prompt as it is, with its own label
    words (a teacher's deep table starts from its own words), the student's (the first) first.

    Example:
        >>> student, teachers = deep_pvp_plan([("{t} Topic : [TARGET]", {"a": "world"}),
        ...                                    ("News : {t} Topic : [TARGET]", {"a": "globe"})])
        >>> student, [words for _, words in teachers]
        ('{t} Topic : [TARGET]', [{'a': 'world'}, {'a': 'globe'}])
    """
    teachers = []
    for prompt in prompts:
        if prompt not in teachers:
            teachers.append(prompt)
    return prompts[0][0], teachers


def distill_settings(teachers: list[tuple[str, dict]], source: str, per_prompt: int = 1) -> dict:
    """The ``train.distill_*`` keys of the distilling methods and ``data.unlabeled`` (``source``: where the rows,
    already read, come from), dotted for ``Config.replace``; ``teachers``: (template, label words) each, every one
    trained with ``per_prompt`` seeds.

    Example:
        >>> distill_settings([("{t} Topic : [TARGET]", {"a": "world"})], "pool", per_prompt=3)["train.distill_teachers"]
        3
    """
    return {"data.unlabeled": source, "train.distill_templates": [t for t, _ in teachers],
            "train.distill_verbalizers": [words for _, words in teachers],
            **DISTILL, "train.distill_teachers": per_prompt}


def unlabeled_rows(pool: Table, train: Table, eval_table: Table, template: str, label_column: str) -> Table:
    """The rows a seed's teachers may label: the train pool without the seed's k rows and without any row whose
    input equals an evaluation row's (by the template's fields), every one with its label column removed.

    Args:
        pool (`Table`): the task's labelled train pool.
        train (`Table`): the seed's k training rows (drawn from ``pool``).
        eval_table (`Table`): the rows scored; none of them may be labelled by a teacher.
        template (`str`): the task's manual template (its fields say what makes two rows the same input).
        label_column (`str`): the column removed.

    Returns:
        `Table`: the unlabeled rows, in the pool's order.

    Example:
        >>> rows = unlabeled_rows(pool, k_rows, dev, "{sentence} It was [TARGET]", "label")  # doctest: +SKIP
        >>> "label" in rows.columns  # doctest: +SKIP
        False
    """
    fields = parse_template(template).fields

    def key(row: dict) -> tuple:
        return tuple(str(row.get(f, "")) for f in fields)

    banned = {key(row) for table in (train, eval_table) for row in table.rows}
    rows = [{c: v for c, v in row.items() if c != label_column} for row in pool.rows if key(row) not in banned]
    return Table(f"{pool.source} (without the k rows, the evaluation rows and the labels)",
                 [c for c in pool.columns if c != label_column], rows)
