"""What a search candidate costs: work whose result no figure of the report uses is not done, and work that does
not depend on the fold or the candidate is done once; the figures stay those of a plain cross-validation."""

from test_search import search_config
from ptune.evaluation.cv import cross_validate
from ptune.evaluation.search import SearchPlan, SharedRows, run_candidate, run_search, trains_nothing
from ptune.training.prepare import prepare


def fold_figures(summary: dict) -> list[tuple]:
    return [(run["seed"], run["fold"], run["accuracy"], run["macro_f1"]) for run in summary["runs"]]


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


def test_probe_candidates_compute_each_rows_pooled_state_once_and_score_as_before(tiny_causal_dir, tmp_path,
                                                                                  monkeypatch):
    """The built-in space's four probes (two blocks, two poolings) over 2 folds: each distinct row runs through the
    frozen model once per block and pooling, instead of twice per fold for the classifier's fit and once more
    for its held-out scores; a prompted linear head (virtual tokens, or a deep prompt) keeps computing its own."""
    from ptune.modeling.ptuning import CausalPTuning

    rows_run = []
    pooled_states = CausalPTuning.pooled_states

    def spy(model, batch):
        rows_run.append((model.encoder.n_virtual > 0 or model.deep is not None, len(batch["input_ids"])))
        return pooled_states(model, batch)

    search_config(tiny_causal_dir, tmp_path, {})  # no space: the built-in one
    plan = SearchPlan.read(tmp_path / "s.yaml")
    probes = [c for _, c in plan.configs if trains_nothing(c)]
    prompted = [next(c for _, c in plan.configs if c.task.head == "linear" and "[P" in c.task.template)]
    prompted += [c for _, c in plan.configs if c.task.head == "linear" and c.encoder.deep_tokens][:1]
    assert len(probes) == 4 and len(prompted) == 2 and {(c.task.head_layer, c.task.head_pooling) for c in probes} == {
        (1, "mean"), (1, "last"), (2, "mean"), (2, "last")}
    plain = [fold_figures(cross_validate(c, folds=2, seeds=[1], show_progress=False)) for c in probes]
    shared = SharedRows(*prepare(probes[0], hold_out_dev=False))
    monkeypatch.setattr(CausalPTuning, "pooled_states", spy)
    searched = [fold_figures(run_candidate(plan, shared, c)) for c in probes]
    distinct = len({r["text"] for r in shared.table.rows})
    assert sum(n for virtual, n in rows_run) == 4 * distinct
    assert len(shared.pooled) == 4 * distinct
    assert searched == plain
    for candidate in prompted:  # its states change with its prompt: nothing kept, nothing reused
        rows_run.clear()
        run_candidate(plan, shared, candidate)
        assert len(shared.pooled) == 4 * distinct and rows_run and all(trained for trained, _ in rows_run)
