"""``task.head: linear``: a logistic-regression classifier over one block's pooled hidden states, trained with the
prompt. Tiny Llama, CPU, seconds."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_config
from ptune.config import config_from_dict
from ptune.errors import ConfigError, PtuneError
from ptune.modeling.heads import LinearHead
from ptune.inference import Predictor
from ptune.training.prepare import prepare
from ptune.training.run import train
from ptune.training.trainer import fit

HEAD = {"head": "linear", "head_layer": 1}


def test_head_fit_reaches_the_regularised_optimum_and_separates_separable_rows():
    torch.manual_seed(0)
    x = torch.randn(40, 6) * torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 300.0])  # one huge dimension, as in LMs
    y = (x[:, 0] + x[:, 1] > 0).long()
    x[:, 0] += 2.0 * (2 * y - 1)  # a margin: separable by the first two dimensions, whatever the fifth does
    weights = torch.tensor([1.0, 2.0])
    head = LinearHead(6, 2, layer=1)
    head.fit(x, y, weights)
    assert torch.equal(head(x).argmax(-1), y)
    # first-order optimality of the weighted cross-entropy + 1/(2N) |W|^2 the docstring states
    params = [p.detach().clone().requires_grad_(True) for p in (head.linear.weight, head.linear.bias)]
    z = (x - head.mean) / head.scale
    value = F.cross_entropy(F.linear(z, *params), y, weight=weights) + 0.5 / len(x) * params[0].pow(2).sum()
    grads = torch.autograd.grad(value, params)
    assert max(g.abs().max().item() for g in grads) < 1e-4
    assert head.scale[5] > 100 * head.scale[0]  # standardised: the loud dimension does not dominate


def test_pooled_states_are_the_blocks_output_averaged_over_real_positions(tiny_causal_dir, tiny_data):
    session, tr, _ = prepare(tiny_config(tiny_causal_dir, tiny_data, task=HEAD))
    model = session.new_model()
    model.eval()
    examples, _ = session.task.train_examples(tr)
    batch = session.task.batch(examples[:3], "cpu")  # left-padded: rows of different lengths
    assert (batch["attention_mask"] == 0).any()
    calls = []
    top = session.base.model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        pooled = model.pooled_states(batch)
        assert not calls  # the pass stopped after block 1: block 2 never ran
        embeds = model.embed(batch["input_ids"], batch["virtual_index"])
        full = session.base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                  position_ids=batch["position_ids"], output_hidden_states=True)
    top.remove()
    hidden = full.hidden_states[1]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(pooled, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5)
    assert full.logits.shape[:2] == batch["input_ids"].shape  # an ordinary forward still runs every block


def test_inputs_never_contain_the_label_word(tiny_causal_dir, tmp_path):
    from conftest import write_csv

    rows = [("the box was broken", "complaint"), ("the box was broken", "no complaint")]
    data = {"train": str(write_csv(tmp_path / "t.csv", rows))}
    session, tr, _ = prepare(tiny_config(tiny_causal_dir, data, task=HEAD))
    a, b = session.task.train_examples(tr)[0]
    assert a.input_ids == b.input_ids and a.label_index != b.label_index  # the label changes nothing in the input
    assert all(label == -100 for label in a.labels)


def test_trained_checkpoint_holds_the_refitted_head_and_reloads_to_the_same_predictions(tiny_causal_dir, tiny_data,
                                                                                        tmp_path):
    cfg = tiny_config(tiny_causal_dir, tiny_data, task=HEAD, train={"epochs": 3, "class_weights": "balanced"})
    session, tr, dev = prepare(cfg)
    model, prog = fit(session, tr, dev, tmp_path / "ckpt", show_progress=False)
    assert any(h["kind"] == "dev" and "loss" in h for h in prog.history)
    stored = {k for p in (tmp_path / "ckpt").glob("model*.safetensors") for k in load_file(p)}
    stored |= {k for p in (tmp_path / "ckpt").glob("*.safetensors") for k in load_file(p)}
    assert {"classifier.linear.weight", "classifier.mean", "classifier.scale"} <= stored

    loaded = Predictor.load(tmp_path / "ckpt")
    rows = [{"text": "my order arrived late"}, {"text": "thanks"}, {"text": "the app crashes"}]
    got = loaded.predict_rows(rows)
    assert got == session.predict(model, rows)
    assert all(p["prediction"] in ("complaint", "no complaint") for p in got)
    # the saved classifier is the one fitted to the trained prompt's states (refitting changes nothing)
    before = loaded.model.classifier.linear.weight.detach().clone()
    examples, _ = loaded.session.task.train_examples(tr)
    loaded.session.task.fit_head(loaded.model, examples, 4, "cpu")
    assert torch.allclose(loaded.model.classifier.linear.weight, before, atol=1e-4)


def test_resume_gives_the_same_head_as_an_uninterrupted_run(tiny_causal_dir, tiny_data, tmp_path, monkeypatch):
    from conftest import train_interrupted_then_resumed
    from ptune import checkpoint

    cfg = tiny_config(tiny_causal_dir, tiny_data, task=HEAD, train={"epochs": 2})
    train(cfg, tmp_path / "full", show_progress=False)
    train_interrupted_then_resumed(cfg, tmp_path / "cut", monkeypatch, step=2)
    _, a, _ = checkpoint.load_model(tmp_path / "full")
    _, b, _ = checkpoint.load_model(tmp_path / "cut")
    assert set(a) == set(b) and any(k.startswith("classifier.") for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_mixed_serving_scores_a_linear_head_task_on_its_own(tiny_causal_dir, tiny_data, tmp_path):
    from ptune.tasks.mixed import classify_mixed

    train(tiny_config(tiny_causal_dir, tiny_data, task=HEAD, train={"epochs": 1}), tmp_path / "a", show_progress=False)
    train(tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 1}), tmp_path / "b", show_progress=False)
    a = Predictor.load(tmp_path / "a")
    b = Predictor.load(tmp_path / "b", base=a.session.base)
    rows = [{"text": "the box was broken"}, {"text": "great service today"}]
    with torch.inference_mode():
        mixed = classify_mixed([(a.session.task, a.model, rows), (b.session.task, b.model, rows[::-1])], 4, "cpu")
    assert mixed[0] == a.predict_rows(rows)
    assert [m["prediction"] for m in mixed[1]] == [p["prediction"] for p in b.predict_rows(rows[::-1])]


def test_bad_head_settings_are_refused_with_the_reason(tiny_causal_dir, tiny_masked_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="task.head"):
        config_from_dict({"task": {"type": "generation", "head": "linear"}})
    with pytest.raises(ConfigError, match="train.objective"):
        tiny_config(tiny_causal_dir, tiny_data, task=HEAD, train={"objective": "classify"})
    with pytest.raises(ConfigError, match="head_layer is 5 but .* 2 blocks"):
        session, _, _ = prepare(tiny_config(tiny_causal_dir, tiny_data, task={"head": "linear", "head_layer": 5}))
        session.new_model()
    masked = tiny_config(tiny_masked_dir, tiny_data, task=HEAD | {"template": "[P*2] {text} [P*2] Label : [MASK]"})
    with pytest.raises(ConfigError, match="causal LM"):
        prepare(masked)
    from ptune.interop.peft import export_peft

    cfg = tiny_config(tiny_causal_dir, tiny_data, task=HEAD | {"template": "[P*2] Tweet text : {text} Label : [TARGET]"},
                      train={"epochs": 1})
    train(cfg, tmp_path / "ckpt", show_progress=False)
    with pytest.raises(PtuneError, match="linear classifier"):
        export_peft(tmp_path / "ckpt", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
    assert json.loads((tmp_path / "ckpt" / "ptune.json").read_text())["config"]["task"]["head"] == "linear"


def test_baselines_add_the_linear_probe_on_the_same_folds(tiny_causal_dir, tiny_data):
    from ptune.evaluation.baselines import baselines

    cfg = tiny_config(tiny_causal_dir, tiny_data, task=HEAD)
    out = baselines(cfg, "Tweet text : {text} Label : [TARGET]", folds=2, seeds=[0, 1])
    assert set(out) == {"majority", "zero_shot", "sentence_embedding", "linear_probe"}
    for name in set(out) - {"sentence_embedding"}:  # that one: tests/test_baselines_embed.py
        assert len(out[name]["runs"]) == 4 and 0 <= out[name]["macro_f1"]["mean"] <= 1
    words = tiny_config(tiny_causal_dir, tiny_data)
    assert set(baselines(words, "Tweet text : {text} Label : [TARGET]", folds=2, seeds=[0])) == {
        "majority", "zero_shot", "sentence_embedding"}


def test_a_linear_head_without_virtual_tokens_is_the_probe_and_checkpoints_like_any_model(tiny_causal_dir, tiny_data,
                                                                                          tmp_path):
    from ptune.evaluation.baselines import linear_probe
    from ptune.errors import TemplateError

    probe = HEAD | {"template": "Tweet text : {text} Label : [TARGET]"}
    cfg = tiny_config(tiny_causal_dir, tiny_data, task=probe)
    summary = train(cfg, tmp_path / "probe", show_progress=False)
    assert summary["steps"] == 0  # nothing but the classifier is fitted
    loaded = Predictor.load(tmp_path / "probe")
    assert loaded.model.encoder.n_virtual == 0
    rows = [{"text": "my order arrived late"}, {"text": "thanks"}]
    assert all(p["prediction"] in ("complaint", "no complaint") for p in loaded.predict_rows(rows))
    # cv of the probe config is the probe baseline, fold for fold
    from ptune.evaluation.cv import cross_validate

    cv = cross_validate(cfg, folds=2, seeds=[3], show_progress=False)
    session, table, _ = prepare(cfg)
    base = linear_probe(cfg, probe["template"], table, 2, [3], base=session.base)
    assert [r["macro_f1"] for r in cv["runs"]] == pytest.approx([r["macro_f1"] for r in base["runs"]])
    with pytest.raises(TemplateError, match="no virtual tokens"):  # the words head still needs a prompt to train
        prepare(tiny_config(tiny_causal_dir, tiny_data, task={"template": probe["template"]}))


def test_last_pooling_reads_the_state_at_each_rows_last_real_position(tiny_causal_dir, tiny_data):
    """``task.head_pooling: last``: the block's output at the row's last real token, wherever the pads are; the
    default stays the mean."""
    assert tiny_config(tiny_causal_dir, tiny_data, task=HEAD).task.head_pooling == "mean"
    session, tr, _ = prepare(tiny_config(tiny_causal_dir, tiny_data, task=HEAD | {"head_pooling": "last"}))
    model = session.new_model().eval()
    assert model.classifier.pooling == "last"
    examples, _ = session.task.train_examples(tr)
    batch = session.task.batch(examples[:3], "cpu")
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        pooled = model.pooled_states(batch)
        embeds = model.embed(batch["input_ids"], batch["virtual_index"])
        hidden = session.base.model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch["position_ids"],
                                    output_hidden_states=True).hidden_states[1]
    for row in range(3):
        last = mask[row].nonzero().max().item()
        assert torch.allclose(pooled[row], hidden[row, last], atol=1e-5)
    averaged = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    assert not torch.allclose(pooled, averaged, atol=1e-3)
    head = LinearHead(4, 2, layer=1, pooling="last")  # pads on the right are skipped too
    states = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(head.pool(states, torch.tensor([[1, 1, 0], [0, 1, 1]])), states[[0, 1], [1, 2]])
    with pytest.raises(ConfigError, match="task.head_pooling"):
        tiny_config(tiny_causal_dir, tiny_data, task=HEAD | {"head_pooling": "max"})
