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


def test_shared_prefix_is_computed_once_and_gives_the_same_scores(tiny_causal_dir, monkeypatch):
    s = _session(tiny_causal_dir, max_length=64)
    model = s.new_model(seed=3).eval()
    r = s.task.renderer
    # [P*2] Tweet text : {text} ...: two virtual tokens and the anchor text come before any data
    n = r.shared_prefix_length()
    a, b = r.encode({"text": "thanks"}), r.encode({"text": "my order"})
    assert n >= 2 + 3 and a.input_ids[:n] == b.input_ids[:n] and a.virtual_index[:n] == b.virtual_index[:n]
    assert a.input_ids[n] != b.input_ids[n]  # the data starts right there
    rows = [{"text": t} for t, _ in ROWS] * 2  # several batches of 3
    runs = []
    real = type(model).prefix_keys_values

    def spy(self, ids, virtual):
        fresh = self._prefix is None or self._prefix[0] != (tuple(ids), tuple(virtual))
        runs.append(fresh)
        return real(self, ids, virtual)

    monkeypatch.setattr(type(model), "prefix_keys_values", spy)
    cached = s.predict(model, rows)
    batches = -(-len(rows) // 3)
    assert batches > 1 and len(runs) == batches and runs.count(True) == 1  # one prefix computation in all
    model.use_prefix_cache = False
    whole = s.predict(model, rows)
    assert len(runs) == batches
    assert [p["prediction"] for p in cached] == [p["prediction"] for p in whole]
    for c, w in zip(cached, whole):
        for label in LABELS:
            assert c["scores"][label] == pytest.approx(w["scores"][label], abs=1e-4)
    # a new prompt table (training, or a loaded one) drops the cached prefix
    model.use_prefix_cache = True
    model.train()
    model.eval()
    with torch.no_grad():
        model.encoder.table.add_(1.0)
    moved = s.predict(model, rows)
    assert runs.count(True) == 2
    assert moved != cached


@pytest.mark.parametrize("objective", ["lm", "classify"])
def test_training_with_the_prefix_run_once_gives_the_same_loss_and_gradients(tiny_causal_dir, objective):
    cfg = tiny_config(tiny_causal_dir, task={"verbalizer": {"complaint": "complaint", "no complaint": "no complaint"}},
                      train={"objective": objective})
    s = open_session(cfg, label_values=LABELS)
    from ptune.data.tables import Table

    table = Table("t", ["text", "label"], [{"text": t, "label": l} for t, l in ROWS])
    examples, _ = s.task.train_examples(table)
    loss_fn = s.task.make_loss(examples)
    model = s.new_model(seed=4)
    model.train()
    results = []
    for share in (False, True):
        batch = s.task.batch(examples[:5], "cpu", share_prefix=share)
        assert ("prefix_ids" in batch) == share
        if share:  # the rows hold only what follows the prefix
            assert batch["prefix_ids"].shape[1] == s.task.renderer.shared_prefix_length()
        model.zero_grad()
        total, weight = loss_fn(model, batch)
        (total / weight).backward()
        results.append(((total / weight).item(), [p.grad.clone() for p in model.encoder.parameters()]))
    (plain, g_plain), (shared, g_shared) = results
    assert shared == pytest.approx(plain, rel=1e-5)
    for a, b in zip(g_plain, g_shared):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in g_shared)


def test_lm_head_gets_a_dense_input_and_the_same_logits(tiny_causal_dir):
    s = _session(tiny_causal_dir)
    model = s.new_model(seed=5).eval()
    head = model.base.get_output_embeddings()
    assert getattr(head, "_ptune_contiguous", False)
    seen = []
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(args[0].stride()))
    hidden = torch.randn(3, 7, head.in_features)
    sliced = hidden[:, -1:]  # what logits_to_keep=1 hands the head: a strided (3, 1, d) view
    with torch.no_grad():
        out = head(sliced)
    handle.remove()
    assert seen == [(head.in_features, head.in_features, 1)]
    assert torch.allclose(out, torch.nn.functional.linear(hidden[:, -1:].contiguous(), head.weight), atol=1e-6)
