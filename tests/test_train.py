import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import ctrl_c_at_step, tiny_config
from ptune import checkpoint
from ptune.errors import PtuneError
from ptune.inference import Predictor
from ptune.data.splits import stratified_folds
from ptune.training.prepare import prepare
from ptune.training.run import train
from ptune.training.trainer import fit


def test_short_training_run_loss_falls(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 8, "lr": 3e-2})
    session, tr, _ = prepare(cfg)
    model, prog = fit(session, tr, None, show_progress=False)
    losses = [h["loss"] for h in prog.history if h["kind"] == "train"]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:2]) / 2


def test_base_unchanged_and_absent_from_checkpoint_and_reload_predicts_the_same(tiny_causal_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_causal_dir, tiny_data)
    session, tr, dev = prepare(cfg)
    before = {k: v.clone() for k, v in session.base.model.state_dict().items()}
    model, _ = fit(session, tr, dev, tmp_path / "ckpt", show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in session.base.model.state_dict().items())
    summary = {"dev": __import__("ptune.evaluator", fromlist=["evaluate"]).evaluate(model, session, dev)}
    meta = json.loads((tmp_path / "ckpt" / "ptune.json").read_text())
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    stored = 0
    for path in (tmp_path / "ckpt").glob("*.safetensors"):
        tensors = load_file(path)
        assert not any(n.startswith("base.") for n in tensors)
        stored += sum(t.numel() for t in tensors.values())
    # best encoder + last encoder + two AdamW moments (+ step counters) + the prompt table; nothing of the base
    assert stored <= 4 * n_encoder + 64 + model.encoder.table.numel()
    assert meta["base"]["hidden_size"] == 32 and meta["labels"] == {"complaint": ["complaint"],
                                                                     "no complaint": ["no complaint"]}
    assert (tmp_path / "ckpt" / "metrics.jsonl").is_file() and (tmp_path / "ckpt" / "curves.png").is_file()

    p1 = Predictor.load(tmp_path / "ckpt")
    p2 = Predictor.load(tmp_path / "ckpt")
    rows = [{"text": "my order arrived late"}, {"text": "thanks"}]
    assert p1.predict_rows(rows) == p2.predict_rows(rows)
    assert summary["dev"]["accuracy"] == p1.evaluate_file(tiny_data["dev"], show_progress=False)["accuracy"]
    # the saved prompt table is what the encoder computes
    assert torch.allclose(p1.model.prompt_table(), p1.model.encoder().detach(), atol=1e-6)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_causal_dir, tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 3})
    full = train(cfg, tmp_path / "full", show_progress=False)
    assert full["steps"] == 6
    # Ctrl-C during step 4 (mid-epoch 2): a resumable state is saved, then the run continues with --resume
    with ctrl_c_at_step(monkeypatch, 3), pytest.raises(PtuneError, match="interrupted at step 3.*--resume"):
        train(cfg, tmp_path / "cut", show_progress=False)
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["progress"]["step"] == 3 and state["progress"]["step_in_epoch"] == 1
    train(cfg, tmp_path / "cut", resume=True, show_progress=False)
    _, a, _ = checkpoint.load_model(tmp_path / "full")
    _, b, _ = checkpoint.load_model(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_metrics_file_and_saved_state_hold_the_run_history(tiny_causal_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 2})  # 8 rows in batches of 4: 2 steps an epoch
    session, tr, dev = prepare(cfg)
    _, prog = fit(session, tr, dev, tmp_path / "ckpt", show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert records == prog.history
    assert [r["kind"] for r in records] == ["train", "train", "dev", "train", "train", "dev", "summary"]
    assert list(records[0]) == ["kind", "step", "loss", "lr"]
    assert list(records[2])[:3] == ["step", "epoch", "kind"] and records[2]["epoch"] == 1.0
    assert list(records[-1]) == ["kind", "seconds", "steps", "examples_per_s"]
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())["progress"]
    assert list(state) == ["step", "epoch", "step_in_epoch", "best", "best_step", "bad_evals", "history", "done"]
    assert state["history"] == prog.history[:-1] and state["done"]  # saved before the summary was added


def test_existing_checkpoint_is_not_overwritten(tiny_causal_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 1})
    train(cfg, tmp_path / "c", show_progress=False)
    with pytest.raises(PtuneError, match="already holds a checkpoint"):
        train(cfg, tmp_path / "c", show_progress=False)


def test_stratified_folds_cover_each_row_once():
    labels = ["a"] * 7 + ["b"] * 13
    folds = stratified_folds(labels, 5, seed=1)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(20))
    for f in folds:
        assert sum(labels[i] == "a" for i in f) in (1, 2)
    assert folds != stratified_folds(labels, 5, seed=2)


def test_without_an_output_folder_fit_returns_the_best_dev_model_not_the_last(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 4, "lr": 0.3})
    session, tr, dev = prepare(cfg)
    model, prog = fit(session, tr, dev, None, show_progress=False)
    evals = [h for h in prog.history if h["kind"] == "dev"]
    best = max(evals, key=lambda h: h["accuracy"])  # the first of equals is kept
    assert best is not evals[-1], [h["accuracy"] for h in evals]  # else this test could not tell best from last
    from ptune.evaluator import evaluate

    assert evaluate(model, session, dev)["loss"] == pytest.approx(best["loss"], abs=1e-6)


def test_cv_keeps_each_fold_models_best_epoch_on_dev_rows_outside_its_held_out_fold(tiny_causal_dir, tmp_path,
                                                                                    monkeypatch):
    """Early stopping inside each fold: data.dev_fraction is taken from the fold's training rows, every row is still
    scored once, and a dev file (when given) is every fold's dev."""
    from conftest import ROWS, write_csv
    from ptune.evaluation.cv import cross_validate

    cv_module = importlib.import_module("ptune.evaluation.cv")

    rows = [(f"{text} {i}", label) for i in range(2) for text, label in ROWS]  # 16 distinct rows
    data = {"train": str(write_csv(tmp_path / "train.csv", rows)), "dev_fraction": 0.25}
    calls = []
    real_fit = cv_module.fit

    def recording_fit(session, tr, dev, out_dir=None, **kw):
        model, prog = real_fit(session, tr, dev, out_dir, **kw)
        calls.append(({r["text"] for r in tr.rows}, dev and {r["text"] for r in dev.rows}, prog.history))
        return model, prog

    monkeypatch.setattr(cv_module, "fit", recording_fit)
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 3, "patience": 2})
    summary = cross_validate(cfg, folds=4, seeds=[5], show_progress=False)
    assert sum(r["n"] for r in summary["runs"]) == 16  # no row lost to a dev split made before the folds
    every = {text for text, _ in rows}
    held = [{rows[i][0] for i in fold} for fold in stratified_folds([label for _, label in rows], 4, 5)]
    assert len(calls) == 4
    for (tr, dev, history), held_out in zip(calls, held):
        assert dev and not dev & held_out and not dev & tr and tr | dev | held_out == every
        assert len(dev) == 4  # a quarter of each label's 6 training rows (1.5, rounded to 2), two labels
        assert [h["epoch"] for h in history if h["kind"] == "dev"]  # the best epoch was chosen on them

    calls.clear()
    dev_file = write_csv(tmp_path / "dev.csv", [("a separate dev row", "complaint"), ("another one", "no complaint")])
    cfg = tiny_config(tiny_causal_dir, {"train": data["train"], "dev": str(dev_file)}, train={"epochs": 1})
    cross_validate(cfg, folds=2, seeds=[5], show_progress=False)
    assert [dev for _, dev, _ in calls] == [{"a separate dev row", "another one"}] * 2
