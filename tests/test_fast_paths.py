"""Fast paths give the plain float32 path's answers: classification scored from one run of the row plus the KV
cache, against one full input per (row, label)."""

import pytest
import torch

from conftest import ROWS, tiny_config
from ptune.session import open_session

LABELS = ["complaint", "no complaint"]


def _session(model_dir, max_length=20, **task):
    cfg = tiny_config(model_dir, task={"verbalizer": {"complaint": "complaint", "no complaint": "no complaint"}, **task},
                      train={"max_length": max_length, "eval_batch_size": 3})
    return open_session(cfg, label_values=LABELS)


def _plain(model, monkeypatch):
    monkeypatch.setattr(type(model), "can_score_continuations", property(lambda self: False))


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_classification_fast_path_matches_plain(tiny_causal_dir, monkeypatch, score):
    s = _session(tiny_causal_dir, score=score)
    model = s.new_model(seed=1).eval()
    assert model.can_score_continuations
    # the words differ in length (several tokens), and max_length 20 truncates some rows differently per label,
    # so both the shared-prefix path and the per-candidate fallback run
    assert len({len(s.task.renderer.target_ids(w)) for w in LABELS}) == 2
    rows = [{"text": t, "label": l} for t, l in ROWS] + [{"text": "a very long tweet about the broken box " * 3}]
    calls = {"cached": 0, "plain": 0}
    for name, key in (("continuation_logprobs", "cached"), ("token_logprobs", "plain")):
        def spy(*a, _f=getattr(model, name), _k=key, **k):
            calls[_k] += 1
            return _f(*a, **k)
        monkeypatch.setattr(model, name, spy)
    fast = s.predict(model, rows)
    assert calls["cached"] and calls["plain"]  # both the shared-prefix path and the fallback ran
    with monkeypatch.context() as m:
        _plain(model, m)
        plain = s.predict(model, rows)
    assert [p["prediction"] for p in fast] == [p["prediction"] for p in plain]
    for f, p in zip(fast, plain):
        for label in LABELS:
            assert f["scores"][label] == pytest.approx(p["scores"][label], abs=2e-3)


def test_continuation_logprobs_match_token_logprobs(tiny_causal_dir):
    s = _session(tiny_causal_dir, max_length=64)  # nothing truncated
    model = s.new_model(seed=2).eval()
    r = s.task.renderer
    words = [r.target_ids(w) for w in LABELS]
    rows = [{"text": t} for t, _ in ROWS[:5]]
    prefixes = [r.encode(row) for row in rows]
    with torch.no_grad():
        got = model.continuation_logprobs(s.task.batch(prefixes, "cpu"), words)
        for word, logp in zip(words, got):
            full = s.task.batch([r.encode(row, word) for row in rows], "cpu")
            want, mask = model.token_logprobs(full)
            assert mask.sum(-1).tolist() == [len(word)] * len(rows)
            assert torch.allclose(logp, want[:, -len(word):], atol=1e-5)
            # and the loss the training path computes over those inputs is the one these numbers give
            assert torch.allclose(model.loss(full), -logp.sum() / logp.numel(), atol=1e-5)
