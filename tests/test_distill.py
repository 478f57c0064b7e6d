"""Distillation from an ensemble on unlabeled rows (train.distill_*): the soft-target loss, the teachers' averaged
probabilities, what the final model and each round's teachers train on, and that a cross-validation fold's held-out
rows never teach or get taught."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import ROWS, tiny_config, write_csv
from ptune.data.tables import Table
from ptune.errors import ConfigError, PtuneError
from ptune.evaluation import cv, search
from ptune.evaluation.cv import cross_validate
from ptune.modeling.base import packed_bin_tokens
from ptune.tasks.ensemble import mean_label_probabilities
from ptune.training import distillation, trainer
from ptune.training.prepare import prepare
from ptune.training.run import train

UNLABELED = [("where is my parcel",), ("love it",), ("broken again",), ("thanks a lot",), ("app crashed",),
             ("great",), ("refund please",), ("hello",)]
TEACHER_TEMPLATE = "[P*2] Message : {text} [P*1] Answer : [TARGET]"


def _data(tmp_path, unlabeled=UNLABELED) -> dict:
    return {"train": str(write_csv(tmp_path / "t.csv", ROWS)),
            "unlabeled": str(write_csv(tmp_path / "u.csv", unlabeled, header=("text",)))}


def _row_logp(session, model, examples) -> torch.Tensor:
    """(rows, labels): the log-probabilities over the labels that the objective trains, one labelled row at a time."""
    task = session.task
    if task.linear_head:
        return torch.cat([F.log_softmax(model.class_logits(task.batch([e], "cpu")), -1) for e in examples])
    firsts = torch.tensor(task.label_tokens())
    return torch.cat([model.label_choice_logprobs(task.batch([e], "cpu"), firsts) for e in examples])


@pytest.mark.parametrize("settings", [{"train": {"objective": "lm"}}, {"train": {"objective": "classify"}},
                                      {"task": {"head": "linear"}}], ids=["lm", "classify", "linear"])
def test_soft_loss_is_cross_entropy_against_the_distribution_and_one_hot_gives_the_hard_loss(
        tiny_causal_dir, tmp_path, settings):
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), **settings)
    session, tr, _ = prepare(cfg, hold_out_dev=False)
    task, model = session.task, session.new_model(0).eval()
    hard, _ = task.train_examples(tr)
    loss = task.make_loss(hard)
    rows = [{"text": r["text"]} for r in tr.rows]
    one_hot = F.one_hot(torch.tensor([e.label_index for e in hard]), 2).float()
    with torch.no_grad():
        total, weight = loss(model, task.batch(hard, "cpu"))
        soft_total, soft_weight = loss(model, task.batch(task.soft_examples(rows, one_hot, 0.5), "cpu"))
        assert torch.allclose(soft_total / soft_weight, total / weight, atol=1e-5)
        assert torch.isclose(soft_weight, 0.5 * weight)
        if task.objective == "lm" and not task.linear_head:  # packed batches carry the weights too
            packed = task.batch(task.soft_examples(rows, one_hot, 0.5), "cpu", pack=packed_bin_tokens(
                session.base.model.config))
            assert torch.allclose(packed["row_weight"], torch.full((len(rows),), 0.5))
            assert torch.allclose(loss(model, packed)[0] / loss(model, packed)[1], total / weight, atol=1e-4)
            return
        # any distribution: weight w times each row's cross-entropy against it, over the labels' scores
        probs = torch.softmax(torch.randn(len(rows), 2, generator=torch.Generator().manual_seed(0)), -1)
        soft_total, soft_weight = loss(model, task.batch(task.soft_examples(rows, probs, 0.5), "cpu"))
        expected = -(probs * _row_logp(session, model, hard)).sum(-1)  # (rows,)
    assert torch.isclose(soft_total, 0.5 * expected.sum(), atol=1e-4)
    assert torch.isclose(soft_weight, torch.tensor(0.5 * len(rows)))


ONE_TOKEN_WORDS = {"verbalizer": {"complaint": "no", "no complaint": "yes"}}


@pytest.mark.parametrize("settings", [{"task": ONE_TOKEN_WORDS}, {"train": {"objective": "classify"}},
                                      {"task": {"head": "linear"}}], ids=["lm", "classify", "linear"])
def test_a_soft_row_in_one_pass_has_the_loss_of_one_example_per_label(tiny_causal_dir, tmp_path, settings,
                                                                       monkeypatch):
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), **settings)
    session, tr, _ = prepare(cfg, hold_out_dev=False)
    task, model = session.task, session.new_model(0).eval()
    assert task.soft_in_one_pass
    hard, _ = task.train_examples(tr)
    rows = [{"text": u[0]} for u in UNLABELED]
    probs = torch.softmax(torch.randn(len(rows), 2, generator=torch.Generator().manual_seed(1)), -1)
    once = task.soft_examples(rows, probs, 0.5)
    assert len(once) == len(rows) and all(e.weight == 0.5 for e in once)
    monkeypatch.setattr(type(task), "soft_in_one_pass", property(lambda self: False))
    per_label = task.soft_examples(rows, probs, 0.5)
    assert len(per_label) == 2 * len(rows)
    loss = task.make_loss(hard + once)
    bins = packed_bin_tokens(session.base.model.config)
    with torch.no_grad():
        want = [a + b for a, b in zip(loss(model, task.batch(hard, "cpu")),
                                      loss(model, task.batch(per_label, "cpu")))]
        # hard and soft rows in one batch, in every layout the head trains with
        layouts = [{}] if task.linear_head else [{}, {"share_prefix": True}, {"pack": bins}]
        for kwargs in layouts:
            got = loss(model, task.batch(hard + once, "cpu", **kwargs))
            assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got[1], want[1]), kwargs


def test_the_ensembles_probabilities_are_the_mean_of_the_teachers(tiny_causal_dir, tmp_path):
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), train={"distill_teachers": 2})
    session, _, _ = prepare(cfg, hold_out_dev=False)
    pool = [{"text": u[0]} for u in UNLABELED]
    teachers = [(session, session.new_model(seed).eval()) for seed in (1, 2)]
    got = distillation.soft_labels(teachers, pool)
    with torch.no_grad():
        each = [torch.softmax(session.task.scores(m, pool, 8, "cpu"), -1) for _, m in teachers]
    assert got.shape == (len(pool), 2)
    assert torch.allclose(got, (each[0] + each[1]) / 2, atol=1e-3)  # scores are rounded to 4 places
    assert torch.allclose(got.sum(-1), torch.ones(len(pool)))
    assert torch.equal(got, mean_label_probabilities([s.predict(m, pool) for s, m in teachers], ["complaint",
                                                                                                 "no complaint"]))


def test_teachers_label_soft_rows_in_rounds_and_the_final_model_trains_on_both(tiny_causal_dir, tmp_path,
                                                                               monkeypatch):
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), train={
        "epochs": 1, "distill_teachers": 2, "distill_rounds": 2, "distill_rows": 3, "distill_weight": 0.5,
        "distill_templates": [TEACHER_TEMPLATE, "[P*2] Tweet text : {text} [P*2] Label : [TARGET]"]})
    session, tr, _ = prepare(cfg, hold_out_dev=False)
    built = []

    class Spy(trainer.Trainer):
        def setup(self, resume=False):
            super().setup(resume)
            built.append({"template": self.session.cfg.task.template, "seed": self.seed,
                          "train": [r["text"] for r in self.train_table.rows], "soft": self.soft,
                          "examples": len(self.examples)})

    monkeypatch.setattr(trainer, "Trainer", Spy)
    trainer.fit(session, tr, None, show_progress=False)
    assert len(built) == 2 * 2 * 2 + 1  # 2 rounds of 2 templates x 2 seeds, then the final model
    teachers, final = built[:-1], built[-1]
    assert [(t["template"], t["seed"]) for t in teachers[:4]] == [
        (TEACHER_TEMPLATE, 0), (TEACHER_TEMPLATE, 1), (cfg.task.template, 0), (cfg.task.template, 1)]
    assert all(t["soft"] is None for t in teachers[:4])  # round 1: the labelled rows only
    assert all(t["soft"] is not None and len(t["soft"].rows) == 3 for t in teachers[4:])  # round 2: + round 1's
    assert all(t["train"] == [r[0] for r in ROWS] for t in built)
    soft = final["soft"]
    assert final["template"] == cfg.task.template and final["seed"] == cfg.train.seed
    assert len(soft.rows) == 3 and {r["text"] for r in soft.rows} <= {u[0] for u in UNLABELED}
    assert soft.weight == 0.5 and torch.allclose(soft.probs.sum(-1), torch.ones(3))
    assert not torch.equal(soft.probs, teachers[4]["soft"].probs)  # round 2's teachers relabelled the rows
    assert final["examples"] == len(ROWS) + 3 * 2  # each soft row once per label, weighted by its probability


def test_each_teacher_reads_its_own_label_words_in_the_tasks_label_order(tiny_causal_dir, tmp_path):
    own = {"no complaint": "fine", "complaint": "bad"}  # listed in the other order than the task's labels
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), encoder={"init": "labels"}, train={
        "distill_teachers": 1, "distill_templates": [TEACHER_TEMPLATE, TEACHER_TEMPLATE],
        "distill_verbalizers": [own, {}]})
    session, _, _ = prepare(cfg, hold_out_dev=False)
    first, second = distillation.teacher_sessions(session)
    assert first.task.labels.labels == second.task.labels.labels == session.task.labels.labels
    assert first.task.labels.to_dict() == {"complaint": ["bad"], "no complaint": ["fine"]}
    assert second.task.labels.to_dict() == session.task.labels.to_dict()
    assert first.start_config.init_text == "bad, fine"  # started from its own words
    # what the teacher scores is what a task spoken in those words scores, not the final model's words
    alone, _, _ = prepare(cfg.replace({"task.template": TEACHER_TEMPLATE, "task.verbalizer": own,
                                       "train.distill_teachers": 0, "train.distill_templates": [],
                                       "train.distill_verbalizers": []}), hold_out_dev=False)
    pool = [{"text": u[0]} for u in UNLABELED]
    model = first.new_model(3).eval()
    with torch.no_grad():
        mine = first.task.scores(model, pool, 8, "cpu")
        theirs = alone.task.scores(model, pool, 8, "cpu")
        student_words = second.task.scores(model, pool, 8, "cpu")
    order = [alone.task.labels.labels.index(label) for label in first.task.labels.labels]
    assert torch.allclose(mine, theirs[:, order], atol=1e-5)
    assert not torch.allclose(mine, student_words, atol=1e-3)


def _spy_on_folds_teachers_and_labels(monkeypatch) -> list[tuple]:
    """Events in order: ("fold", held-out texts, training texts) as each fold starts, ("teach", texts) for each
    teacher's training rows, ("label", texts) for each pool the teachers label, ("retrain",) before a search
    retrains its winner on every row."""
    events = []
    folds, teach, label, retrain = cv.seeded_folds, trainer.train_teacher, distillation.soft_labels, \
        search.retrain_winner

    def seeded_folds(*args):
        for seed, fold, train, held in folds(*args):
            events.append(("fold", {r["text"] for r in held.rows}, {r["text"] for r in train.rows}))
            yield seed, fold, train, held

    def train_teacher(session, train, soft, seed, show_progress=False):
        events.append(("teach", {r["text"] for r in train.rows}))
        return teach(session, train, soft, seed, show_progress)

    def soft_labels(teachers, pool):
        events.append(("label", {r["text"] for r in pool}))
        return label(teachers, pool)

    def retrain_winner(*args, **kwargs):
        events.append(("retrain",))
        return retrain(*args, **kwargs)

    monkeypatch.setattr(cv, "seeded_folds", seeded_folds)
    monkeypatch.setattr(trainer, "train_teacher", train_teacher)
    monkeypatch.setattr(distillation, "soft_labels", soft_labels)
    monkeypatch.setattr(search, "retrain_winner", retrain_winner)
    return events


def _check_no_held_out_row_teaches_or_is_labelled(events: list[tuple], labelled: bool, folds: int = 2) -> None:
    if ("retrain",) in events:
        events = events[:events.index(("retrain",))]
    held = fold_train = None
    for kind, *texts in events:
        if kind == "fold":
            held, fold_train = texts
        elif kind == "teach":
            assert texts[0] == fold_train  # the fold's training rows only
        else:  # every training row of the fold is labelled, no held-out one
            assert texts[0] == fold_train and not texts[0] & held
    kinds = [e[0] for e in events]
    assert kinds.count("fold") == folds and kinds.count("teach") == 2
    assert kinds.count("label") == (2 if labelled else 0)


@pytest.mark.parametrize("settings", [{"distill_teachers": 1, "distill_rows": 100},
                                      {"self_train_rows": 2, "self_train_pool": 100}], ids=["distill", "self_train"])
def test_in_cv_held_out_rows_never_teach_nor_are_labelled(tiny_causal_dir, tmp_path, monkeypatch, settings):
    # data.unlabeled is the training file itself: its held-out rows must be taken out of every fold's pool
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS))}
    data["unlabeled"] = data["train"]
    events = _spy_on_folds_teachers_and_labels(monkeypatch)
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1, **settings})
    cross_validate(cfg, folds=2, seeds=[3], show_progress=False)
    _check_no_held_out_row_teaches_or_is_labelled(events, "distill_teachers" in settings)


def test_in_search_held_out_rows_never_teach_nor_are_labelled(tiny_causal_dir, tmp_path, monkeypatch):
    write_csv(tmp_path / "train.csv", ROWS)
    cfg = tiny_config(tiny_causal_dir, {"train": "train.csv", "unlabeled": "train.csv"},
                      train={"epochs": 1, "distill_teachers": 1, "distill_rows": 100}).to_dict()
    cfg["search"] = {"folds": 2, "seeds": [3], "space": {"train.lr": [3e-2]}, "prefer_simpler": 0}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    events = _spy_on_folds_teachers_and_labels(monkeypatch)
    search.run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert ("retrain",) in events
    # 2 folds of the trained candidate, then the same 2 for the zero-shot prompt (nothing trained, no teacher)
    _check_no_held_out_row_teaches_or_is_labelled(events, True, folds=4)


def test_the_pool_is_the_seeded_sample_self_training_always_drew_when_nothing_is_excluded(tiny_causal_dir, tmp_path):
    import random

    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), train={"self_train_rows": 2})
    session, tr, _ = prepare(cfg, hold_out_dev=False)
    before = list(session.unlabeled.rows)
    random.Random(5).shuffle(before)
    assert distillation.unlabeled_pool(session, 6, 5) == before[:6]  # so self-training's choices are unchanged
    assert distillation.unlabeled_pool(session, 6, 5, [None, tr]) == before[:6]  # no overlap, nothing taken out
    held = Table("held", ["text", "label"], [{"text": "love it", "label": "no complaint"}])
    assert {"text": "love it"} not in distillation.unlabeled_pool(session, 100, 5, [held])


def test_a_pool_of_held_out_rows_only_is_an_error_naming_the_key(tiny_causal_dir, tmp_path):
    # ptune train with data.test: no test row is labelled, so a pool of test rows only leaves nothing
    data = {"train": str(write_csv(tmp_path / "t.csv", ROWS)), "test": str(write_csv(tmp_path / "u.csv", ROWS[:2]))}
    data["unlabeled"] = data["test"]
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1, "distill_teachers": 1})
    with pytest.raises(PtuneError, match="train.distill_teachers.*data.unlabeled"):
        train(cfg, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("train, data, match", [
    ({"distill_teachers": 2}, {}, "train.distill_teachers is set but data.unlabeled"),
    ({"distill_teachers": -1}, None, "train.distill_teachers must be >= 0"),
    ({"distill_teachers": 1, "distill_rows": 0}, None, "train.distill_rows must be >= 1"),
    ({"distill_teachers": 1, "distill_rounds": 0}, None, "train.distill_rounds must be >= 1"),
    ({"distill_teachers": 1, "distill_weight": 0}, None, "train.distill_weight must be > 0"),
    ({"distill_templates": [TEACHER_TEMPLATE]}, None, "train.distill_templates is set but train.distill_teachers"),
    ({"distill_teachers": 1, "distill_templates": ["[P*2] {text"]}, None, r"train.distill_templates\[0\]"),
    ({"distill_teachers": 1, "distill_templates": "one"}, None, "train.distill_templates: expected"),
    ({"distill_teachers": 1, "self_train_rows": 4}, None, "choose one"),
    ({"distill_teachers": 1, "distill_templates": [TEACHER_TEMPLATE], "distill_verbalizers": [{}, {}]}, None,
     r"distill_verbalizers has 2 entries but train.distill_templates has 1"),
    ({"distill_teachers": 1, "distill_templates": [TEACHER_TEMPLATE], "distill_verbalizers": ["yes"]}, None,
     r"train.distill_verbalizers\[0\]: expected"),
])
def test_config_errors_name_the_key(tiny_causal_dir, tmp_path, train, data, match):
    data = _data(tmp_path) if data is None else {"train": _data(tmp_path)["train"]}
    with pytest.raises(ConfigError, match=match):
        tiny_config(tiny_causal_dir, data, train=train)


def test_a_teacher_verbalizer_must_name_the_tasks_labels(tiny_causal_dir, tmp_path):
    teachers = {"distill_teachers": 1, "distill_templates": [TEACHER_TEMPLATE],
                "distill_verbalizers": [{"complaint": "bad", "other": "fine"}]}
    with pytest.raises(ConfigError, match=r"distill_verbalizers\[0\] speaks the labels \['complaint', 'other'\]"):
        tiny_config(tiny_causal_dir, _data(tmp_path), train=teachers,
                    task={"verbalizer": {"complaint": "bad", "no complaint": "fine"}})
    # labels named by the data alone (no task.verbalizer): refused when the teachers' sessions open
    session, _, _ = prepare(tiny_config(tiny_causal_dir, _data(tmp_path), train=teachers), hold_out_dev=False)
    with pytest.raises(PtuneError, match=r"distill_verbalizers\[0\] speaks the labels"):
        distillation.teacher_sessions(session)


def test_a_teacher_template_reading_a_missing_column_is_refused_before_the_model_loads(tiny_causal_dir, tmp_path):
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path),
                      train={"distill_teachers": 1, "distill_templates": ["[P*2] {title} : [TARGET]"]})
    with pytest.raises(Exception, match=r"train.distill_templates\[0\].*title"):
        prepare(cfg)
    with pytest.raises(ConfigError, match="classification only"):
        tiny_config(tiny_causal_dir, _data(tmp_path), task={"type": "generation"}, train={"distill_teachers": 1})


def test_a_teacher_template_needs_virtual_tokens_only_where_nothing_else_trains(tiny_causal_dir, tmp_path):
    manual = "Message : {text} Answer : [TARGET]"  # no virtual tokens: the deep prompt's keys and values train
    deep = {"template": manual}
    teachers = {"distill_teachers": 1, "distill_templates": [manual]}
    cfg = tiny_config(tiny_causal_dir, _data(tmp_path), task=deep, train=teachers,
                      encoder={"deep_tokens": 2, "deep_encoder": "table"})
    session, _, _ = prepare(cfg, hold_out_dev=False)
    assert [s.cfg.task.template for s in distillation.teacher_sessions(session)] == [manual]
    shallow = tiny_config(tiny_causal_dir, _data(tmp_path), train=teachers)
    with pytest.raises(Exception, match=r"train.distill_templates\[0\].*has no virtual tokens"):
        prepare(shallow, hold_out_dev=False)
