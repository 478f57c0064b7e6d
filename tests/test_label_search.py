"""Label words searched best first (``task.top_labels``): each row's best labels and their scores are those of
scoring every word, while words that cannot reach them are never run."""

import math

import pytest
import torch

from conftest import ROWS, tiny_config
from ptune.config import TaskConfig
from ptune.errors import ConfigError
from ptune.session import open_session
from ptune.tasks.ensemble import ensemble_predictions
from ptune.tasks.label_scoring import best_only
from ptune.training.distillation import teacher_sessions
from test_label_trie import places_run, random_verbalizer, zoo  # noqa: F401 (zoo: a fixture)


def alternatives(seed: int) -> dict:
    """A verbalizer whose labels have one or two words each, words opening alike."""
    words = list(random_verbalizer(seed, 10).values())
    return {f"label{i}": words[i:i + 2] if i % 3 == 0 else words[i] for i in range(0, 9)}


def assert_same_best(searched: torch.Tensor, every: torch.Tensor, keep: int) -> None:
    want = best_only(every, keep)
    assert torch.equal(searched.isinf(), want.isinf())
    torch.testing.assert_close(searched[~want.isinf()], want[~want.isinf()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("score, keep", [("sum", 1), ("sum", 3), ("mean", 1), ("mean", 2)])
def test_best_labels_equal_those_of_every_word(tiny_causal_dir, score, keep):
    s = open_session(tiny_config(tiny_causal_dir, task={"verbalizer": alternatives(keep), "score": score}))
    model = s.new_model(seed=keep).eval()
    rows = [{"text": t} for t, _ in ROWS] * 2
    with torch.inference_mode():
        every = s.task.scores(model, rows, 5, "cpu")
        searched = s.task.scores(model, rows, 5, "cpu", keep=keep)
    assert_same_best(searched, every, keep)


@pytest.mark.parametrize("family, encoder", [
    ("gpt2", {}),  # learned absolute positions
    ("qwen3", {"deep_tokens": 3, "deep_encoder": "mlp"}),  # a deep prompt behind the virtual tokens
])
def test_best_labels_across_families(zoo, family, encoder):  # noqa: F811
    verbalizer = random_verbalizer(8)
    s = zoo.session(family, labels=list(verbalizer), encoder=encoder, verbalizer=verbalizer)
    model = s.new_model(seed=2).eval()
    rows = [{"text": t} for t, _ in ROWS[:5]]
    with torch.inference_mode():
        every = s.task.scores(model, rows, 5, "cpu")
        searched = s.task.scores(model, rows, 5, "cpu", keep=2)
    assert_same_best(searched, every, 2)


def test_words_that_cannot_reach_the_best_label_are_not_run(tiny_causal_dir, monkeypatch):
    """One-token words score first; longer words whose opening already scores below them are left unrun."""
    verbalizer = random_verbalizer(11, 12)
    s = open_session(tiny_config(tiny_causal_dir, task={"verbalizer": verbalizer}))
    model = s.new_model(seed=1).eval()
    model.use_prefix_cache = False  # every call after the rows' own runs label-word places
    words = [s.task.renderer.target_ids(w[0]) for w in s.task.labels.words]
    rows = [{"text": t} for t, _ in ROWS[:6]]
    seen = places_run(model, monkeypatch)
    with torch.inference_mode():
        every = s.task.scores(model, rows, 6, "cpu")
        whole_tree = sum(seen[1:])
        seen.clear()
        searched = s.task.scores(model, rows, 6, "cpu", keep=1)
    proper_prefixes = {tuple(w[:k]) for w in words for k in range(1, len(w))}
    assert whole_tree == len(rows) * len(proper_prefixes)
    assert sum(seen[1:]) < whole_tree / 2
    assert_same_best(searched, every, 1)


def test_predictions_keep_the_best_labels_only(tiny_causal_dir):
    verbalizer = random_verbalizer(12, 8)
    every = open_session(tiny_config(tiny_causal_dir, task={"verbalizer": verbalizer}))
    best = open_session(tiny_config(tiny_causal_dir, task={"verbalizer": verbalizer, "top_labels": 3}),
                        base=every.base)
    model = every.new_model(seed=3).eval()
    rows = [{"text": t} for t, _ in ROWS]
    with torch.inference_mode():
        full, top = every.task.predict(model, rows, 4, "cpu"), best.task.predict(model, rows, 4, "cpu")
    for f, t in zip(full, top):
        ranked = sorted(f["scores"].items(), key=lambda kv: -kv[1])[:3]
        assert t["prediction"] == f["prediction"] and len(t["scores"]) == 3
        assert t["scores"] == pytest.approx(dict(ranked), abs=2e-4)
    averaged = ensemble_predictions([top, top], best.task.labels.labels)  # unscored labels: probability 0
    assert [a["prediction"] for a in averaged] == [t["prediction"] for t in top]
    assert all(len(a["scores"]) == 3 and max(a["scores"].values()) < 0 for a in averaged)


@pytest.mark.parametrize("settings, message", [
    ({"top_labels": 0}, "must be >= 1"),
    ({"top_labels": 2, "calibrate": "content_free"}, "calibration needs every label"),
    ({"top_labels": 2, "type": "generation"}, "applies to classification"),
])
def test_top_labels_is_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        TaskConfig(**settings)


def test_best_only_keeps_ties_and_rows_apart():
    scores = torch.tensor([[-1.0, -3.0, -2.0, -0.5], [-4.0, -1.0, -1.5, -9.0]])
    kept = best_only(scores, 2)
    assert kept[0].tolist() == [-1.0, -math.inf, -math.inf, -0.5]
    assert kept[1].tolist() == [-math.inf, -1.0, -1.5, -math.inf]


def test_distillation_teachers_score_every_label(tiny_causal_dir):
    session = open_session(tiny_config(tiny_causal_dir, task={"verbalizer": random_verbalizer(13, 5),
                                                              "top_labels": 1}))
    (teacher,) = teacher_sessions(session)
    assert teacher.cfg.task.top_labels is None and teacher.cfg.task.template == session.cfg.task.template
    rows = [{"text": t} for t, _ in ROWS[:3]]
    model = session.new_model(seed=1)
    assert all(len(p["scores"]) == 5 for p in teacher.predict(model, rows))
    assert all(len(p["scores"]) == 1 for p in session.predict(model, rows))
