"""The head and the prompt a session chooses once, and what they allow together: packing, a shared prefix, mixed
batches, PEFT export. Config objects and tiny models: no weights beyond the 2-layer fixtures."""

from types import SimpleNamespace

import pytest
from transformers import BloomConfig, LlamaConfig, OPTConfig

from conftest import tiny_config
from ptune.data.render import Encoded, split_shared_prefix
from ptune.errors import ConfigError
from ptune.modeling.components import InputPrompt, build_head, build_prompt, supports_of
from ptune.session import open_session
from ptune.template import parse_template
from ptune.training.trainer import packing_bins

FIRST = parse_template("[P*3] Tweet : {text} Label : [TARGET]")  # virtual tokens first
INSIDE = parse_template("Tweet : {text} [P*3] Label : [TARGET]")  # virtual tokens after text


def family(config) -> SimpleNamespace:
    """A stand-in for a loaded model: ``packable`` reads only its config."""
    return SimpleNamespace(config=config)


def tiny(config_class, **kw):
    return config_class(vocab_size=64, hidden_size=16, num_attention_heads=2, **kw)


@pytest.mark.parametrize("head, kind, model, template, expected", [
    # (packing, prefix_sharing, mixing, peft_export)
    ("words", "causal", tiny(LlamaConfig), FIRST, (True, True, True, True)),
    ("words", "causal", tiny(LlamaConfig), INSIDE, (True, True, True, False)),
    ("words", "causal", tiny(BloomConfig), FIRST, (False, True, True, True)),  # ALiBi: no packed mask
    ("words", "causal", tiny(OPTConfig, ffn_dim=32), FIRST, (False, True, True, True)),  # positions from the mask
    ("words", "masked", None, FIRST, (False, False, False, False)),
    ("words", "seq2seq", None, FIRST, (False, False, False, False)),
    ("linear", "causal", tiny(LlamaConfig), FIRST, (False, False, False, False)),
])
def test_what_each_head_and_prompt_allow_together(head, kind, model, template, expected):
    prompt = build_prompt(template, kind, None if model is None else family(model))
    supports = supports_of(build_head(head), prompt)
    assert (supports.packing, supports.prefix_sharing, supports.mixing, supports.peft_export) == expected


def test_only_a_task_that_ranks_labels_mixes():
    prompt = InputPrompt(FIRST, "causal", packs=True)
    assert supports_of(build_head("words"), prompt, labels=True).mixing
    assert not supports_of(build_head("words"), prompt, labels=False).mixing  # generation, probing


def test_the_prompt_says_why_peft_cannot_export_it():
    assert "virtual tokens after other text" in InputPrompt(INSIDE, "causal").peft_problem()
    assert "causal LMs only" in InputPrompt(FIRST, "masked").peft_problem()
    assert InputPrompt(FIRST, "causal").peft_problem() is None


def test_a_linear_head_runs_on_causal_models_only(tiny_masked_dir, tiny_data):
    linear = build_head("linear")
    assert linear.check_kind("causal", "m") is None and not linear.needs_virtual and not linear.target_in_input
    assert "task.head linear needs a causal LM; m is a masked LM" in linear.check_kind("masked", "m")
    assert build_head("words").check_kind("masked", "m") is None
    with pytest.raises(ConfigError, match="needs a causal LM"):
        open_session(tiny_config(tiny_masked_dir, tiny_data, task={"head": "linear", "head_layer": 1}),
                     label_values=["complaint", "no complaint"])


def test_the_session_chooses_once_and_the_trainer_asks_it(tiny_causal_dir, tiny_data):
    words = open_session(tiny_config(tiny_causal_dir, tiny_data), label_values=["complaint", "no complaint"])
    assert words.prompt.name == "input" and words.head is words.task.head and words.head.name == "words"
    assert words.supports.packing and words.supports.mixing
    assert packing_bins(words.new_model(), words.cfg.train, words.supports) > 0
    linear = open_session(tiny_config(tiny_causal_dir, tiny_data, task={"head": "linear", "head_layer": 1}),
                          label_values=["complaint", "no complaint"], base=words.base)
    assert linear.head.fits_classifier and not linear.supports.packing and not linear.supports.prefix_sharing
    assert packing_bins(linear.new_model(), linear.cfg.train, linear.supports) == 0


def test_the_shared_prefix_is_cut_off_in_one_place_and_every_row_keeps_a_token():
    rows = [Encoded([1, 2, 3, 4], [0, -1, -1, -1], [-100, -100, -100, 4], label_index=1),
            Encoded([1, 2, 5], [0, -1, -1], [-100, -100, 5])]
    prefix, rest = split_shared_prefix(rows, 3)
    assert (prefix.input_ids, prefix.virtual_index) == ([1, 2], [0, -1])  # the shorter row keeps its last token
    assert [r.input_ids for r in rest] == [[3, 4], [5]] and rest[0].labels == [-100, 4] and rest[0].label_index == 1
    assert split_shared_prefix(rows, 0) == (None, rows)
