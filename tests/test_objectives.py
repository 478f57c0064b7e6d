"""Training objectives (lm / classify, class weights), content-free calibration, and prediction-time variants scored
on the same cross-validation fold models."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import ROWS, tiny_config, write_csv
from ptune.data.tables import Table
from ptune.errors import ConfigError, PtuneError
from ptune.inference import Predictor
from ptune.evaluation.search import run_search, split_space
from ptune.data.splits import stratified_folds
from ptune.evaluation.cv import cross_validate
from ptune.evaluator import label_probabilities
from ptune.training.prepare import prepare
from ptune.training.trainer import fit

VERBALIZER = {"complaint": "terrible thing", "no complaint": "great"}  # a two-token word and a one-token word


def _full_logits(session, model, row, word_ids):
    """Plain forward of one unpadded row with the target appended: logits at every position."""
    enc = session.task.renderer.encode(row, word_ids)
    embeds = model.embed(torch.tensor([enc.input_ids]), torch.tensor([enc.virtual_index]))
    return session.base.model(inputs_embeds=embeds).logits[0].float(), enc


def test_classify_objective_is_cross_entropy_over_the_labels_first_tokens(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, task={"verbalizer": VERBALIZER}, train={"objective": "classify"})
    session, tr, _ = prepare(cfg)
    model = session.new_model(0)
    model.eval()
    examples, _ = session.task.train_examples(tr)
    firsts = session.task.label_tokens()
    assert len(set(firsts)) == 2
    loss_fn = session.task.make_loss(examples)
    batch = session.task.batch(examples[:4], session.device)  # targets of 1 and 2 tokens: left padding differs
    total, weight = loss_fn(model, batch)
    expected = []
    for enc, row in zip(examples[:4], tr.rows[:4]):
        gold_ids = [t for t in enc.labels if t != -100]
        logits, _ = _full_logits(session, model, row, gold_ids)
        at = len(enc) - len(gold_ids) - 1  # the position that predicts the first target token
        expected.append(-F.log_softmax(logits[at, firsts], -1)[enc.label_index])
    assert weight.item() == 4
    assert total.item() == pytest.approx(torch.stack(expected).sum().item(), rel=1e-5)


def test_balanced_class_weights_count_each_class_alike(tiny_causal_dir, tmp_path):
    rows = ROWS + [("another broken order", "complaint"), ("the box was late", "complaint")]
    data = {"train": str(write_csv(tmp_path / "t.csv", rows))}
    for objective in ("lm", "classify"):
        cfg = tiny_config(tiny_causal_dir, data, train={"objective": objective, "class_weights": "balanced"})
        session, tr, _ = prepare(cfg)
        model = session.new_model(0)
        model.eval()
        examples, _ = session.task.train_examples(tr)
        gold = [e.label_index for e in examples]
        counts = [gold.count(i) for i in range(2)]
        assert counts[0] != counts[1]
        batch = session.task.batch(examples, session.device)
        total, weight = session.task.make_loss(examples)(model, batch)
        plain_total, _ = type(session.task).__mro__[1].make_loss(session.task, examples)(model, batch) \
            if objective == "lm" else (None, None)
        w = [len(gold) / (2 * counts[g]) for g in gold]
        if objective == "classify":
            assert weight.item() == pytest.approx(sum(w))  # one weight per row; classes sum to the same mass
            assert sum(x for x, g in zip(w, gold) if g == 0) == pytest.approx(sum(x for x, g in zip(w, gold) if g == 1))
        else:  # per target token, each row's tokens weighted by its class weight
            logp, mask = model.token_logprobs(batch)
            per_row = -(logp.sum(1))
            expect = sum(wi * r for wi, r in zip(w, per_row.tolist()))
            assert total.item() == pytest.approx(expect, rel=1e-5)
            assert total.item() != pytest.approx(plain_total.item(), rel=1e-3)


def test_classify_refuses_labels_whose_words_start_alike_and_non_classification_tasks(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, task={"verbalizer": {"complaint": "great service",
                                                                        "no complaint": "great"}},
                      train={"objective": "classify"})
    session, tr, _ = prepare(cfg)
    examples, _ = session.task.train_examples(tr)
    with pytest.raises(ConfigError, match="'great service'.*'great'.*both start with"):
        session.task.make_loss(examples)
    with pytest.raises(ConfigError, match="train.objective.*classification only"):
        tiny_config(tiny_causal_dir, tiny_data, task={"type": "generation"}, train={"objective": "classify"})
    with pytest.raises(ConfigError, match="task.calibrate.*classification only"):
        tiny_config(tiny_causal_dir, tiny_data, task={"type": "generation", "calibrate": "content_free"})


def test_classify_objective_trains(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 8, "lr": 3e-2, "objective": "classify",
                                                         "class_weights": "balanced"})
    session, tr, _ = prepare(cfg)
    _, prog = fit(session, tr, None, show_progress=False)
    losses = [h["loss"] for h in prog.history if h["kind"] == "train"]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:2]) / 2


def test_content_free_calibration_divides_by_the_content_free_probabilities(tiny_causal_dir, tiny_data):
    cfg = tiny_config(tiny_causal_dir, tiny_data, task={"verbalizer": VERBALIZER})
    session, tr, _ = prepare(cfg)
    model = session.new_model(3)
    model.eval()
    rows = [{"text": r[0]} for r in ROWS]
    with torch.inference_mode():
        raw = session.task.scores(model, rows, 8, session.device)
        free = session.task.scores(model, [{"text": "N/A"}, {"text": ""}], 8, session.device)
        session.task.cfg.calibrate = "content_free"
        preds = session.predict(model, rows)
    prior = torch.softmax(free, -1).mean(0)
    expected = torch.log_softmax(raw, -1) - prior.log()
    for p, e in zip(preds, expected):
        got = torch.tensor([p["scores"][label] for label in session.task.labels.labels])
        assert torch.allclose(got, e, atol=1e-3)
        assert p["prediction"] == session.task.labels.labels[int(e.argmax())]
    # an input as empty as the content-free ones comes out (near) indifferent between the labels
    with torch.inference_mode():
        neutral = session.predict(model, [{"text": "N/A"}])[0]["scores"]
    assert abs(neutral["complaint"] - neutral["no complaint"]) < abs(math.log(prior[0] / prior[1])) + 1e-6


def test_cv_variants_share_the_fold_models(tiny_causal_dir, tmp_path):
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS * 2))}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1})
    plain = cross_validate(cfg, folds=2, seeds=[1], show_progress=False)
    both = cross_validate(cfg, folds=2, seeds=[1], show_progress=False,
                          variants=[{}, {"calibrate": "content_free"}])
    assert [v["settings"] for v in both["variants"]] == [{}, {"calibrate": "content_free"}]
    assert both["variants"][0]["runs"] == plain["runs"]  # the same models: the uncalibrated figures are equal
    assert both["accuracy"] == plain["accuracy"]
    assert len(both["variants"][1]["runs"]) == 2


def test_cv_variants_leave_the_session_task_alone_and_every_fold_trains_under_it(tiny_causal_dir, tmp_path,
                                                                                monkeypatch):
    """Variants are scored by copies of the task: the session's own task, which every fold model trains (and would
    stop early) under, keeps its settings from the first fold to the last."""
    import importlib

    cv_module = importlib.import_module("ptune.evaluation.cv")
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS * 2))}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1})
    session, table, _ = prepare(cfg)
    task_cfg = session.task.cfg
    seen = []
    real_fit = cv_module.fit

    def recording_fit(session_, *args, **kw):
        seen.append(session_.task.cfg.calibrate)
        return real_fit(session_, *args, **kw)

    monkeypatch.setattr(cv_module, "fit", recording_fit)
    both = cross_validate(cfg, folds=3, seeds=[1], show_progress=False, session=session, train_table=table,
                          variants=[{}, {"calibrate": "content_free"}])
    assert seen == ["none"] * 3
    assert session.task.cfg is task_cfg and task_cfg.calibrate == "none"
    assert [len(v["runs"]) for v in both["variants"]] == [3, 3]


def test_ensemble_averages_each_members_label_probabilities():
    from ptune.tasks.ensemble import ensemble_predictions, mean_label_probabilities

    # scores are log-probabilities, normalised over the labels here: member b's second row is softmax(-1, 1)
    a = [{"scores": {"x": math.log(0.9), "y": math.log(0.1)}}, {"scores": {"x": 0.0, "y": 0.0}}]
    b = [{"scores": {"x": math.log(0.2), "y": math.log(0.8)}}, {"scores": {"x": -1.0, "y": 1.0}}]
    low = math.exp(-1) / (math.exp(-1) + math.exp(1))
    mean = mean_label_probabilities([a, b], ["y", "x"])  # columns in the order asked for
    assert mean.shape == (2, 2)
    assert mean.tolist() == [pytest.approx([0.45, 0.55]), pytest.approx([(0.5 + 1 - low) / 2, (0.5 + low) / 2])]
    assert mean_label_probabilities([a], ["x", "y"]).tolist() == [pytest.approx([0.9, 0.1]), pytest.approx([0.5, 0.5])]
    preds = ensemble_predictions([a, b], ["x", "y"])
    assert [p["prediction"] for p in preds] == ["x", "y"]
    assert preds[0]["scores"] == {"x": round(math.log(0.55), 4), "y": round(math.log(0.45), 4)}


def test_cv_ensemble_averages_member_probabilities(tiny_causal_dir, tmp_path):
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS * 2))}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1})
    session, table, _ = prepare(cfg)
    plain = cross_validate(cfg, folds=2, seeds=[1], show_progress=False, session=session, train_table=table)
    ens = cross_validate(cfg, folds=2, seeds=[1], show_progress=False, session=session, train_table=table,
                         ensemble=2)
    members = ens["members"]["runs"]
    assert [(r["fold"], r["member"]) for r in members] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # member 1 is trained with the fold's own seed: the single-model run, figure for figure
    assert [{k: r[k] for k in ("accuracy", "macro_f1")} for r in members if r["member"] == 1] == [
        {k: r[k] for k in ("accuracy", "macro_f1")} for r in plain["runs"]]
    # the ensemble's figures are those of the averaged probabilities, recomputed here by hand
    labels = session.task.labels.labels
    rows = table.rows
    for f, held in enumerate(stratified_folds([r["label"] for r in rows], 2, 1)):
        tr = Table("t", table.columns, [r for i, r in enumerate(rows) if i not in held])
        te = [rows[i] for i in held]
        mean = sum(label_probabilities(session, session.predict(fit(session, tr, None, None, seed=1 + 100 * m)[0], te))
                   for m in range(2)) / 2
        gold = [r["label"] for r in te]
        hits = sum(labels[int(i)] == g for i, g in zip(mean.argmax(-1), gold))
        assert ens["runs"][f]["accuracy"] == pytest.approx(hits / len(te))
    with pytest.raises(PtuneError, match="ensemble must be at least 1"):
        cross_validate(cfg, folds=2, seeds=[1], show_progress=False, session=session, train_table=table, ensemble=0)


def test_search_scores_prediction_settings_without_retraining_and_keeps_the_winner(tiny_causal_dir, tmp_path):
    assert split_space({"train.lr": [1], "task.calibrate": ["none", "content_free"]}) == (
        {"train.lr": [1]}, [{"calibrate": "none"}, {"calibrate": "content_free"}])
    write_csv(tmp_path / "train.csv", ROWS * 2)
    cfg = {
        "model": {"name_or_path": str(tiny_causal_dir), "dtype": "float32", "device": "cpu"},
        "task": {"template": "[P*2] {text} Label : [TARGET]", "label_column": "label"},
        "encoder": {"type": "embedding"},
        "data": {"train": "train.csv"},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 64},
        "search": {"folds": 2, "seeds": [1], "zero_shot": False,  # trained candidates only: the manual prompt
                   # (scored under each prediction setting too) is tested in test_search.py
                   "space": {"train.objective": ["lm", "classify"],
                             "task.calibrate": ["none", "content_free"]}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    rows = report["candidates"]
    assert [(r["settings"]["train.objective"], r["settings"]["task.calibrate"]) for r in rows] == [
        ("lm", "none"), ("lm", "content_free"), ("classify", "none"), ("classify", "content_free")]
    assert rows[0]["seconds"] == rows[1]["seconds"]  # one cross-validation run scored both ways
    best = rows[report["best"]]["settings"]
    saved = Predictor.load(tmp_path / "out").session.cfg
    assert (saved.train.objective, saved.task.calibrate) == (best["train.objective"], best["task.calibrate"])


def test_self_training_adds_confident_unlabeled_rows_in_the_label_shares(tiny_causal_dir, tmp_path):
    from ptune.training.trainer import with_pseudo_labels

    rows = ROWS + [("another broken order", "complaint"), ("the box was late", "complaint")]
    unlabeled = [("where is my parcel",), ("love it",), ("broken again",), ("thanks a lot",), ("app crashed",),
                 ("great",), ("refund please",), ("hello",)]
    data = {"train": str(write_csv(tmp_path / "t.csv", rows)),
            "unlabeled": str(write_csv(tmp_path / "u.csv", unlabeled, header=("text",)))}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1, "self_train_rows": 5, "self_train_pool": 6})
    session, tr, _ = prepare(cfg)
    assert len(session.unlabeled) == 8
    grown = with_pseudo_labels(session, tr, seed=1)
    added = grown.rows[len(tr):]
    share = sum(r["label"] == "complaint" for r in tr.rows) / len(tr)
    assert grown.rows[:len(tr)] == tr.rows
    assert 1 <= len(added) <= 5 and len({r["text"] for r in added}) == len(added)
    assert {r["text"] for r in added} <= {u[0] for u in unlabeled}
    assert sum(r["label"] == "complaint" for r in added) <= round(5 * share)
    assert sum(r["label"] == "no complaint" for r in added) <= round(5 * (1 - share))
    assert with_pseudo_labels(session, tr, seed=1).rows == grown.rows  # deterministic
    summary = cross_validate(cfg, folds=2, seeds=[1], show_progress=False, session=session, train_table=tr)
    assert len(summary["runs"]) == 2
    with pytest.raises(ConfigError, match="data.unlabeled"):
        tiny_config(tiny_causal_dir, {"train": data["train"]}, train={"self_train_rows": 5})


def test_prior_offsets_make_the_mean_prediction_equal_the_shares():
    from ptune.tasks.calibration import prior_offsets

    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(50, 3) * 2 + torch.tensor([2.0, 0.0, -1.0]), -1)  # biased to label 0
    shares = torch.tensor([0.2, 0.3, 0.5])
    b = prior_offsets(logp, shares)
    assert torch.allclose(torch.softmax(logp + b, -1).mean(0), shares, atol=1e-5)
    assert abs(float(b.sum())) < 1e-5
    # shares the model already meets need no offsets
    met = torch.softmax(logp, -1).mean(0)
    assert torch.allclose(prior_offsets(logp, met), torch.zeros(3), atol=1e-4)


def test_prior_calibration_is_fitted_on_unlabeled_rows_saved_and_reloaded(tiny_causal_dir, tmp_path):
    from ptune.training.trainer import fit_label_offsets

    unlabeled = [(t,) for t in ("where is my parcel", "love it", "broken again", "thanks a lot", "app crashed",
                                "great", "refund please", "hello")]
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS * 2)),
            "unlabeled": str(write_csv(tmp_path / "u.csv", unlabeled, header=("text",)))}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1}, task={"calibrate": "prior", "prior_rows": 6})
    session, tr, _ = prepare(cfg)
    model, _ = fit(session, tr, None, tmp_path / "out", show_progress=False)
    assert model.label_offsets is not None
    # on the unlabeled sample, the calibrated mean label distribution is the training rows' (smoothed) shares
    pool = [{"text": t[0]} for t in unlabeled]
    import random
    random.Random(cfg.train.seed).shuffle(pool)
    labels = session.task.labels.labels
    shares = torch.tensor([sum(r["label"] == l for r in tr.rows) + 0.5 for l in labels])
    raw = session.task.raw_scores(model, pool[:6], 8, session.device)
    assert torch.allclose(torch.softmax(raw + model.label_offsets, -1).mean(0), shares / shares.sum(), atol=1e-4)
    # predictions add the offsets to the label log-probabilities, and a reloaded checkpoint does the same
    rows = [{"text": r[0]} for r in ROWS]
    preds = session.predict(model, rows)
    expected = session.task.raw_scores(model, rows, 8, session.device) + model.label_offsets
    assert [p["prediction"] for p in preds] == [labels[int(e.argmax())] for e in expected]
    loaded = Predictor.load(tmp_path / "out")
    assert torch.allclose(loaded.model.label_offsets, model.label_offsets)
    assert [p["prediction"] for p in loaded.predict_rows(rows)] == [p["prediction"] for p in preds]
    # a prediction-time variant in cross-validation fits them for each fold model
    plain_cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1})
    both = cross_validate(plain_cfg, folds=2, seeds=[1], show_progress=False,
                          variants=[{}, {"calibrate": "prior"}])
    assert [v["settings"] for v in both["variants"]] == [{}, {"calibrate": "prior"}]
    # without the offsets, or without unlabeled rows, it says what is missing
    bare = session.new_model(1)
    with pytest.raises(PtuneError, match="no fitted label offsets"):
        session.predict(bare, rows)
    with pytest.raises(ConfigError, match="data.unlabeled"):
        tiny_config(tiny_causal_dir, {"train": data["train"]}, task={"calibrate": "prior"})
    session.unlabeled = None
    with pytest.raises(PtuneError, match="unlabeled"):
        fit_label_offsets(session, bare, tr, 1)
