import pytest

from ptune.errors import TemplateError
from ptune.template import Field, Target, Text, Virtual, parse_template, residual_form


def test_parse_runs_fields_with_spaces_and_target():
    t = parse_template("[P*20] Tweet text : {Tweet text} Label : [TARGET]")
    assert t.segments == (Virtual(20), Text(" Tweet text : "), Field("Tweet text"), Text(" Label : "), Target())
    assert t.n_virtual == 20 and t.fields == ["Tweet text"] and t.is_prefix


def test_virtual_tokens_among_anchor_words():
    t = parse_template("[P*3] {sub_label} [P*3] [TARGET]")
    assert t.n_virtual == 6 and not t.is_prefix
    assert [type(s).__name__ for s in t.segments] == ["Virtual", "Text", "Field", "Text", "Virtual", "Text", "Target"]


def test_masked_template_and_single_p_and_literal_braces():
    t = parse_template("{sentence} [P] [P*2] It was [MASK] . {{x}}")
    assert t.n_virtual == 3
    assert t.segments[-1] == Text(" . {x}")


@pytest.mark.parametrize("source, message", [
    ("[P*3] {text}", "names no target"),
    ("[P*0] {text} [TARGET]", "must hold 1 to"),
    ("[P*2] {text [TARGET]", "unbalanced"),
    ("[P*2] {} [TARGET]", "empty field"),
    ("[TARGET] {text} [MASK]", "second target"),
])
def test_refusals(source, message):
    with pytest.raises(TemplateError, match=message):
        parse_template(source)


def test_validate_refuses_no_virtual_unknown_column_and_target_not_last():
    with pytest.raises(TemplateError, match="no virtual tokens"):
        parse_template("{text} [TARGET]").validate()
    with pytest.raises(TemplateError, match="no column 'tweet'.*columns present: 'text', 'label'"):
        parse_template("[P*2] {tweet} [TARGET]").validate(columns=["text", "label"])
    with pytest.raises(TemplateError, match="target must come last"):
        parse_template("[P*2] {text} [TARGET] is it").validate(kind="causal")
    parse_template("[P*2] {text} It was [MASK] .").validate(kind="masked")  # fine for a masked LM
    parse_template("[P*2] {t} [TARGET]").validate(columns=["text"], field_map={"t": "text"})


def test_the_manual_prompt_under_a_template_has_its_virtual_runs_and_their_extra_spaces_taken_out():
    from ptune.template import without_virtual

    assert without_virtual("[P*8] Tweet : {Tweet text} [P*8] Complaint ? [TARGET]") == \
        "Tweet : {Tweet text} Complaint ? [TARGET]"
    assert without_virtual("{text}[P*2]Label : [TARGET]") == "{text}Label : [TARGET]"
    assert without_virtual("a {{b}} [P] {x} [MASK] .") == "a {{b}} {x} [TARGET] ."  # literal braces stay escaped
    assert parse_template(without_virtual("[P*3] {sub_label} [P*3] [TARGET]")).n_virtual == 0


def test_residual_form_puts_as_many_virtual_tokens_as_the_anchor_has_tokens():
    class Words:
        def encode(self, text, add_special_tokens=False):
            return text.split()

    assert residual_form("Review : {sentence} Sentiment : [TARGET]", Words()) == (
        "Review : {sentence} [P*2] [TARGET]", " Sentiment :")
    for bad in ("{sentence} [TARGET]", "{sentence} It was [TARGET] .", "no field It was [TARGET]"):
        with pytest.raises(TemplateError, match="anchor words"):
            residual_form(bad, Words())
