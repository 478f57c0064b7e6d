"""What a search candidate costs: work whose result no figure of the report uses is not done, and work that does
not depend on the fold or the candidate is done once; the figures stay those of a plain cross-validation."""

from test_search import search_config
from ptune.evaluation.cv import cross_validate
from ptune.evaluation.search import SearchPlan, run_search


def test_the_search_computes_no_held_out_loss_and_scores_as_cross_validation_does(tiny_causal_dir, tmp_path,
                                                                                  monkeypatch):
    from ptune import evaluator

    calls = []
    mean_loss = evaluator.mean_loss
    monkeypatch.setattr(evaluator, "mean_loss", lambda *args, **kwargs: calls.append(1) or mean_loss(*args, **kwargs))
    search_config(tiny_causal_dir, tmp_path, {"space": {"train.lr": [1e-3, 3e-2]}})
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert calls == []  # no candidate, zero-shot prompt included, runs the loss pass its report never shows
    plan = SearchPlan.read(tmp_path / "s.yaml")
    for row, (_, cfg) in zip(report["candidates"], plan.configs):
        plain = cross_validate(cfg, folds=2, seeds=[1], show_progress=False)  # a session of its own, with the loss
        assert calls and [r["macro_f1"] for r in plain["runs"]] == row["fold_macro_f1"]
        assert (plain["accuracy"], plain["macro_f1"]) == (row["accuracy"], row["macro_f1"])
