"""A prompt that starts exactly where a manual prompt stands (``encoder.residual``), and the learning-rate warm-up."""

from __future__ import annotations

import pytest
import torch

from conftest import FamilyZoo, tiny_config, train_interrupted_then_resumed
from ptune import checkpoint
from ptune.config import EncoderConfig
from ptune.errors import ConfigError
from ptune.inference import Predictor
from ptune.modeling.encoders import MLPEncoder, build_encoder
from ptune.session import open_session
from ptune.training.run import train
from ptune.training.trainer import lr_factor

TYPES = ("lstm", "mlp", "embedding")
MANUAL = "Tweet text : {text} Label : [TARGET]"
VIRTUAL = "Tweet text : {text} [P*2] [TARGET]"
# the anchor text as the manual template has it: the space before it belongs to it (see Renderer.pieces)
STARTS = {"text": " Label :", "words": "Label :"}
ROWS = [{"text": t} for t in ("my order arrived late and the box was broken", "thanks for the quick delivery",
                              "great service today", "hello world")]


def residual(kind: str, init: str = "text", **encoder) -> dict:
    return {"type": kind, "hidden_size": 8, "init": init, "init_text": STARTS[init], "residual": True, **encoder}


def label_scores(session, model) -> torch.Tensor:
    with torch.inference_mode():
        return session.task.scores(model.eval(), ROWS, 8, "cpu")


def manual_and_virtual(model_dir, encoder: dict, base=None):
    """(manual-prompt session, its scores, session with the virtual template over the same base)."""
    manual = open_session(tiny_config(model_dir, task={"template": MANUAL}), label_values=["complaint", "no complaint"],
                          base=base, allow_no_virtual=True)
    virtual = open_session(tiny_config(model_dir, task={"template": VIRTUAL}, encoder=encoder),
                           label_values=["complaint", "no complaint"], base=manual.base)
    return manual, label_scores(manual, manual.new_model()), virtual


@pytest.mark.parametrize("kind", TYPES)
def test_residual_encoder_starts_at_its_init_and_moves_with_training(kind):
    init = torch.randn(3, 12)
    encoder = build_encoder(EncoderConfig(**residual(kind)), 3, 12, init)
    assert torch.equal(encoder(), init)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-2)
    for _ in range(2):  # the zero last layer moves first; the layers before it follow a step later
        optimizer.zero_grad()
        (encoder() * torch.linspace(-1, 1, 12)).sum().backward()
        optimizer.step()
    assert not torch.allclose(encoder(), init, atol=1e-4)
    assert torch.equal(encoder.start, init)  # the start itself never trains
    assert all(n != "start" for n, _ in encoder.named_parameters())


def test_residual_needs_words_to_start_from():
    with pytest.raises(ConfigError, match="encoder.residual.*encoder.init"):
        EncoderConfig(type="lstm", residual=True)
    with pytest.raises(ValueError, match="start table"):
        MLPEncoder(2, 8, hidden_size=4, num_layers=1, residual=True)


@pytest.mark.parametrize("init", ("text", "words"))
@pytest.mark.parametrize("kind", TYPES)
def test_virtual_tokens_started_from_the_manual_words_score_like_the_manual_prompt(tiny_causal_dir, kind, init):
    manual, expected, virtual = manual_and_virtual(tiny_causal_dir, residual(kind, init))
    model = virtual.new_model(seed=3)
    embeddings = virtual.base.model.get_input_embeddings()
    words = manual.tokenizer(" Label :", add_special_tokens=False)["input_ids"]
    assert len(words) == 2  # [P*2]: one virtual token per word of the manual prompt
    with torch.no_grad():
        assert torch.equal(model.prompt_table(), embeddings(torch.tensor(words)))
    assert torch.allclose(label_scores(virtual, model), expected, atol=1e-5)
    # without the residual form a reparameterised encoder does not start at its init words
    if kind != "embedding":
        plain = open_session(tiny_config(tiny_causal_dir, task={"template": VIRTUAL},
                                         encoder={**residual(kind, init), "residual": False}),
                             label_values=["complaint", "no complaint"], base=manual.base)
        assert not torch.allclose(label_scores(plain, plain.new_model(seed=3)), expected, atol=1e-3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("family", ("gemma", "gemma3_text"))
def test_scaled_embeddings_start_at_the_manual_prompt_too(zoo, family):
    """Gemma multiplies token embeddings by sqrt(d) (inside the embedding module in Gemma 3, in the model's forward
    before): the start is what the embedding module gives for the words, so spliced it reads as the words."""
    manual, expected, virtual = manual_and_virtual(zoo.folder(family), residual("lstm"))
    assert torch.allclose(label_scores(virtual, virtual.new_model(seed=3)), expected, atol=1e-5)


def test_checkpoint_and_resume_keep_the_start(tiny_causal_dir, tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_causal_dir, tiny_data, task={"template": VIRTUAL}, encoder=residual("lstm"),
                      train={"epochs": 2})
    train(cfg, tmp_path / "full", show_progress=False)
    _, state, prompts = checkpoint.load_model(tmp_path / "full")
    loaded = Predictor.load(tmp_path / "full")
    with torch.no_grad():
        start = loaded.session.base.model.get_input_embeddings()(
            torch.tensor(loaded.session.tokenizer(" Label :", add_special_tokens=False)["input_ids"]))
        assert torch.equal(state["encoder.start"], start)
        assert not torch.allclose(prompts, start, atol=1e-4)  # training moved the prompt off the manual words
        # inference splices the saved table; the reloaded encoder (start included) recomputes the same table
        assert torch.equal(loaded.model.prompt_table(), prompts)
        assert torch.allclose(loaded.model.encoder(), prompts, atol=1e-6)
    train_interrupted_then_resumed(cfg, tmp_path / "cut", monkeypatch, step=2)
    _, resumed, resumed_prompts = checkpoint.load_model(tmp_path / "cut")
    assert set(resumed) == set(state)
    for k in state:
        assert torch.equal(resumed[k], state[k]), k
    assert torch.equal(resumed_prompts, prompts)


def test_warmup_rises_linearly_then_decays_to_zero():
    assert [lr_factor(s, 10, 4) for s in range(10)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert [lr_factor(s, 4, 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_training_warms_up_over_the_configured_share_of_steps(tiny_causal_dir, tiny_data, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("ptune.training.trainer")
    seen = []

    def record(step, total, warmup):
        seen.append((step, total, warmup))
        return lr_factor(step, total, warmup)

    monkeypatch.setattr(module, "lr_factor", record)
    train(tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 4, "warmup_ratio": 0.5}), tmp_path / "run",
          show_progress=False)
    assert [s for s, _, _ in seen] == list(range(8)) and {(t, w) for _, t, w in seen} == {(8, 4)}


def test_the_benchmark_draws_balanced_seeded_rows(tmp_path):
    import csv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from prompt_start import balanced_sample

    source = tmp_path / "train.tsv"
    source.write_text("sentence\tlabel\n" + "".join(f"row {i} \t{i % 2}\n" for i in range(40)), encoding="utf-8")

    def draw(seed):
        with open(balanced_sample(source, 4, seed, tmp_path / f"{seed}.csv"), newline="", encoding="utf-8") as f:
            return [(r["sentence"], r["label"]) for r in csv.DictReader(f)]

    rows = draw(1)
    assert len(rows) == 8 and sorted(label for _, label in rows) == ["0"] * 4 + ["1"] * 4
    assert draw(1) == rows and draw(2) != rows


def test_init_labels_starts_both_tables_from_the_label_words(tiny_causal_dir):
    words = {"complaint": "no", "no complaint": "yes"}
    sessions = {init: open_session(tiny_config(tiny_causal_dir, task={"template": VIRTUAL, "verbalizer": words},
                                               encoder={"init": init, "init_text": "no, yes" if init == "text" else "",
                                                        "residual": True, "deep_tokens": 3, "deep_encoder": "table"}))
                for init in ("labels", "text")}
    assert sessions["labels"].start_config.init_text == "no, yes"  # each label's word, in the verbalizer's order
    by_labels, by_text = (s.new_model(0) for s in sessions.values())
    assert torch.equal(by_labels.deep_table(), by_text.deep_table())
    assert torch.equal(by_labels.prompt_table(), by_text.prompt_table())
    other = open_session(tiny_config(tiny_causal_dir, task={"template": VIRTUAL, "verbalizer": {"a": "yes", "b": "no"}},
                                     encoder={"init": "labels", "residual": True}))
    assert not torch.equal(other.new_model(0).prompt_table(), by_labels.prompt_table())


def test_init_labels_needs_label_words(tiny_causal_dir):
    cfg = tiny_config(tiny_causal_dir, task={"type": "generation", "template": "[P*2] {text} [TARGET]",
                                             "label_column": "label"}, encoder={"init": "labels"})
    with pytest.raises(ConfigError, match="init: labels.*classification"):
        open_session(cfg).new_model(0)
