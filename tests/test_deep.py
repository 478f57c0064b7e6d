"""Deep prompts (``encoder.deep_tokens``) beyond the architecture checks: the config keys, the flat table's order (the
one PEFT's prefix tuning reshapes), what the prompt component allows, and a whole run on disk: training resumed
mid-run and prediction from the saved table. The per-family checks are in test_architectures.py."""

from __future__ import annotations

import pytest
import torch

from conftest import ROWS, ctrl_c_at_step, tiny_config
from ptune import checkpoint
from ptune.errors import ConfigError, PtuneError
from ptune.inference import Predictor
from ptune.modeling.components import DeepPrompt, InputPrompt, build_prompt
from ptune.modeling.deep import DeepPromptEncoder, KVLayout, deep_keys_values, flat_table
from ptune.session import open_session
from ptune.template import parse_template
from ptune.training.run import train

DEEP = {"deep_tokens": 3, "deep_encoder": "table"}
TEMPLATE = "Tweet text : {text} Label : [TARGET]"


@pytest.mark.parametrize("values, key", [({"deep_tokens": -1}, "encoder.deep_tokens"),
                                         ({"deep_encoder": "lstm"}, "encoder.deep_encoder"),
                                         ({"deep_tokens": "4"}, "encoder.deep_tokens")])
def test_deep_prompt_config_errors_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        tiny_config("model", encoder=values)


def test_the_flat_table_is_in_peft_order_layer_then_keys_or_values_then_head():
    """``flat.view(n, 2L, H, D)``: index 2l holds layer l's keys, 2l+1 its values (PEFT's ``get_prompt`` reshape)."""
    layout = KVLayout(layers=3, heads=2, head_dim=4)
    flat = torch.arange(5 * layout.width, dtype=torch.float32).view(5, layout.width)
    kv = deep_keys_values(flat, layout)
    parts = flat.view(5, 6, 2, 4)
    for layer, (keys, values) in enumerate(kv):
        assert keys.shape == values.shape == (1, 2, 5, 4)
        assert torch.equal(keys[0], parts[:, 2 * layer].permute(1, 0, 2))
        assert torch.equal(values[0], parts[:, 2 * layer + 1].permute(1, 0, 2))
    assert torch.equal(flat_table(kv), flat)
    # PEFT: past_key_values = view(B, n, 2L, H, D).permute(2, 0, 3, 1, 4).split(2)
    peft = flat[None].view(1, 5, 6, 2, 4).permute(2, 0, 3, 1, 4).split(2)
    assert all(torch.equal(k, p[0]) and torch.equal(v, p[1]) for (k, v), p in zip(kv, peft))


def test_deep_encoders_give_the_flat_width():
    layout = KVLayout(2, 2, 8)
    for kind in ("mlp", "table"):
        assert DeepPromptEncoder(4, 32, layout, kind, hidden_size=16)().shape == (4, 64)


def test_a_deep_prompt_allows_prefix_sharing_and_packing_but_no_mixing(tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    deep = build_prompt(parse_template(TEMPLATE), "causal", deep_tokens=4)
    assert isinstance(deep, DeepPrompt) and deep.prefix_sharing and not deep.mixing
    assert not deep.packing  # no base model given: nothing says its family takes a packed batch's mask
    llama = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    assert build_prompt(parse_template(TEMPLATE), "causal", llama, deep_tokens=4).packing
    assert deep.peft_problem() is None
    beside = build_prompt(parse_template("[P*2] " + TEMPLATE), "causal", deep_tokens=4)
    assert "[P] tokens beside the deep prompt" in beside.peft_problem()
    assert type(build_prompt(parse_template("[P*2] " + TEMPLATE), "causal")) is InputPrompt


def test_deep_prompt_with_gradient_checkpointing_is_refused(tiny_causal_dir):
    cfg = tiny_config(tiny_causal_dir, encoder=DEEP, task={"template": TEMPLATE},
                      train={"gradient_checkpointing": True})
    with pytest.raises(ConfigError, match="deep prompt's cache a second time"):
        open_session(cfg, label_values=["complaint", "no complaint"])


def test_deep_prompt_resumes_exactly_and_predicts_from_its_checkpoint(tiny_causal_dir, tiny_data, tmp_path,
                                                                      monkeypatch):
    """A template without [P]: the deep prompt alone trains, resumes bit for bit after Ctrl-C, and the checkpoint
    holds its table, which the loaded model serves from."""
    cfg = tiny_config(tiny_causal_dir, tiny_data, encoder=DEEP, task={"template": TEMPLATE}, train={"epochs": 3})
    assert train(cfg, tmp_path / "full", show_progress=False)["steps"] == 6
    with ctrl_c_at_step(monkeypatch, 3), pytest.raises(PtuneError, match="interrupted at step 3.*--resume"):
        train(cfg, tmp_path / "cut", show_progress=False)
    train(cfg, tmp_path / "cut", resume=True, show_progress=False)
    meta, a, _, deep = checkpoint.load_tables(tmp_path / "full")
    _, b, _, deep_b = checkpoint.load_tables(tmp_path / "cut")
    assert set(a) == {"encoder.table", "deep.table"} and a["encoder.table"].numel() == 0  # no [P]: an empty table
    assert torch.equal(a["deep.table"], b["deep.table"]) and torch.equal(deep, deep_b)
    assert meta["deep_tokens"] == 3 and deep.shape == (3, 2 * 2 * 2 * 8)  # 2 layers x k, v x 2 kv heads x 8
    predictor = Predictor.load(tmp_path / "full")
    assert torch.equal(predictor.model.deep_table(), deep)
    rows = [{"text": t} for t, _ in ROWS]
    assert [p["prediction"] for p in predictor.predict_rows(rows)] == [
        p["prediction"] for p in Predictor.load(tmp_path / "cut").predict_rows(rows)]


def test_a_served_deep_prompt_streams_the_text_its_predictor_writes(tiny_causal_dir, tmp_path):
    """A stream cannot decode a deep-prompt task in slices (its cache would lack the deep keys and values): the
    task's own greedy loop writes the text, the same as ``Predictor.predict_rows``."""
    from serve_helpers import make_checkpoint

    from ptune.serving.stream_jobs import decodes_in_slices
    from ptune.serving.streaming import stream_generation
    from ptune.serving.tasks import TaskStore

    folder = make_checkpoint(tiny_causal_dir, tmp_path / "reply", "{text} Label : [TARGET]", task_type="generation",
                             encoder={"type": "mlp", "hidden_size": 16, "deep_tokens": 3}, seed=4)
    task = TaskStore().load("reply", folder)
    assert not decodes_in_slices(task.model)
    for text, _ in ROWS[:3]:
        pieces: list[str] = []
        result = stream_generation(task, {"text": text}, 5, pieces.append)
        assert "".join(pieces) == result.text == Predictor.load(folder).predict_rows([{"text": text}])[0]["prediction"]
