"""The few-shot benchmark's chosen recipe: cross-validation on the k training rows alone picks it (zero-shot
included), three seeds are reported, and every method is scored on the same fixed evaluation rows."""

from __future__ import annotations

from ptune.bench import fewshot, fewshot_choice
from ptune.bench.fewshot_choice import best
from ptune.bench.loaders import balanced_sample
from ptune.data.tables import Table

TRAIN = [("great service today", 1), ("the app crashes when I pay", 0), ("thanks for the quick delivery", 1),
         ("the box was broken", 0), ("lovely staff and fast", 1), ("I want a refund now", 0),
         ("works like a charm", 1), ("never again", 0), ("so happy with it", 1), ("it broke in a day", 0)]
DEV = [("a fine film", 1), ("dull and slow", 0), ("warm and funny", 1), ("a waste of time", 0), ("sharp writing", 1)]


def write_sst2(folder):
    (folder / "sst2").mkdir()
    for name, rows in (("train.tsv", TRAIN), ("dev.tsv", DEV)):
        (folder / "sst2" / name).write_text("\n".join(["sentence\tlabel"] + [f"{s}\t{l}" for s, l in rows]) + "\n")


def run(tmp_path, model_dir, **kwargs):
    write_sst2(tmp_path)
    options = dict(tasks=["sst2"], seeds=[1, 2, 3], k=6, folds=2, model=str(model_dir), dtype="float32",
                   device="cpu", epochs=1, batch_size=4, show_progress=False, log=lambda m: None)
    return fewshot.run_fewshot(tmp_path, tmp_path / "out", **(options | kwargs))


def test_the_choice_sees_only_the_k_rows_and_every_method_the_same_eval_rows(tiny_causal_dir, tmp_path,
                                                                              monkeypatch):
    chooser_rows, scored = [], []
    real_cv, real_score = fewshot_choice.cross_validate, fewshot.score_rows

    def spy_cv(cfg, **kwargs):
        chooser_rows.append([r["sentence"] for r in kwargs["train_table"].rows])
        return real_cv(cfg, **kwargs)

    def spy_score(session, model, table):
        scored.append([r["sentence"] for r in table.rows])
        return real_score(session, model, table)

    monkeypatch.setattr(fewshot_choice, "cross_validate", spy_cv)
    monkeypatch.setattr(fewshot, "score_rows", spy_score)
    report = run(tmp_path, tiny_causal_dir, methods=["majority", "zero_shot", "chosen", "mlp"], max_eval=4,
                 recipes=((1e-2, 1),))
    dev = {s for s, _ in DEV}
    train = {s for s, _ in TRAIN}
    assert chooser_rows and all(len(rows) == 6 and set(rows) <= train and not set(rows) & dev for rows in chooser_rows)
    # zero-shot (2 prompts), chosen (3 seeds) and mlp (3 seeds): the same 4 evaluation rows every time
    assert len(scored) == 8 and all(rows == scored[0] for rows in scored) and len(scored[0]) == 4
    entry = report["tasks"]["sst2"]
    picks = entry["chosen"]["seeds"]
    assert [p["seed"] for p in picks] == [1, 2, 3] and len(entry["chosen"]["accuracy"]["runs"]) == 3
    assert all(p["chosen"] in [c["candidate"] for c in p["cv"]] for p in picks)
    # two manual prompts, the probe at the middle and at a late layer, one trained recipe, the deep prompt
    assert [c["kind"] for c in picks[0]["cv"]] == [fewshot_choice.ZERO_SHOT] * 2 + [fewshot_choice.PROBE] * 2 + [
        fewshot_choice.RESIDUAL, fewshot_choice.DEEP]
    deep = fewshot_choice.deep_candidates(fewshot_choice.zero_shot_candidate("{sentence} It was [TARGET]", {}), 30)
    assert [c.kind for c in deep] == [fewshot_choice.DEEP] and deep[0].encoder["init"] == "labels"
    assert deep[0].template == "{sentence} It was [TARGET]" and not fewshot_choice.deep_candidates(deep[0], None)
    assert report["choice"]["kinds"] == list(fewshot_choice.KINDS) and len(report["choice"]["probes"]) == 2
    assert 0 <= entry["majority"]["accuracy"] <= 1 and entry["n_eval"] == 4
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "chosen by CV on the k rows" in markdown and "sst2 seed 3:" in markdown


def test_zero_shot_is_chosen_where_the_k_rows_say_training_does_not_help(tiny_causal_dir, tmp_path, monkeypatch):
    def fake_cv(cfg, *, trained=True, **kwargs):
        f1 = 0.5 if trained else 0.9  # every zero-shot prompt ties: the first listed (the task's manual) wins
        return cv_figures([f1, f1])

    def no_training(*args, **kwargs):
        raise AssertionError("nothing should be trained when zero-shot is chosen")

    monkeypatch.setattr(fewshot_choice, "cross_validate", fake_cv)
    monkeypatch.setattr(fewshot, "fit", no_training)
    report = run(tmp_path, tiny_causal_dir, methods=["zero_shot", "chosen"], max_eval=0)
    entry = report["tasks"]["sst2"]
    manual = entry["zero_shot"]["prompts"][0]
    assert manual["template"] == fewshot.SPECS["sst2"].manual
    assert {p["chosen"] for p in entry["chosen"]["seeds"]} == {f"zero-shot `{manual['template']}`"}
    assert entry["chosen"]["accuracy"]["runs"] == [manual["accuracy"]] * 3


def test_balanced_sample_evens_the_labels_and_fills_from_others():
    rows = [{"t": str(i), "label": "a"} for i in range(20)] + [{"t": f"b{i}", "label": "b"} for i in range(20)]
    rows += [{"t": "c0", "label": "c"}]
    table = Table("pool", ["t", "label"], rows)
    sample = balanced_sample(table, 9, seed=1, label_column="label")
    counts = {label: sample.column("label").count(label) for label in "abc"}
    assert len(sample) == 9 and counts["c"] == 1 and sorted([counts["a"], counts["b"]]) == [4, 4]
    assert balanced_sample(table, 9, seed=1, label_column="label").rows == sample.rows  # seeded
    even = balanced_sample(Table("p", ["t", "label"], rows[:40]), 8, seed=2, label_column="label")
    assert even.column("label").count("a") == 4 and len({r["t"] for r in even.rows}) == 8


def test_a_tie_goes_to_the_candidate_listed_first():
    assert best([{"macro_f1": 0.7}, {"macro_f1": 0.7}, {"macro_f1": 0.6}]) == 0
    assert best([{"macro_f1": 0.6}, {"macro_f1": 0.7}]) == 1


def test_probe_and_embeddings_are_fitted_on_the_rows_chosen_sees_and_scored_on_the_eval_rows(
        tiny_causal_dir, tiny_masked_dir, tmp_path, monkeypatch):
    """The tiny random BERT folder stands in for the sentence encoder's wheel."""
    fitted, embedded = [], []
    real_fit_probe, real_fit_and_label = fewshot.fit_probe, fewshot.fit_and_label

    def spy_fit_probe(session, train, seed):
        fitted.append(train.column("sentence"))
        return real_fit_probe(session, train, seed)

    def spy_fit_and_label(cfg, train_vectors, train_labels, vectors, labels=None):
        embedded.append((len(train_labels), len(vectors)))
        return real_fit_and_label(cfg, train_vectors, train_labels, vectors, labels)

    monkeypatch.setattr(fewshot, "encoder_folder", lambda: tiny_masked_dir)
    monkeypatch.setattr(fewshot, "fit_probe", spy_fit_probe)
    monkeypatch.setattr(fewshot, "fit_and_label", spy_fit_and_label)
    report = run(tmp_path, tiny_causal_dir, methods=["embeddings", "probe"], max_eval=4)
    entry = report["tasks"]["sst2"]
    for method in ("embeddings", "probe"):
        assert len(entry[method]["accuracy"]["runs"]) == 3 and 0 <= entry[method]["macro_f1"]["mean"] <= 1
    assert embedded == [(6, 4)] * 3
    pool = fewshot.SPECS["sst2"].load(tmp_path)[0]
    assert fitted == [balanced_sample(pool, 6, seed, "label").column("sentence") for seed in (1, 2, 3)]
    assert report["summary"]["sst2"].keys() == {"embeddings", "probe"}
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "sentence embeddings" in markdown and "linear probe (middle layer)" in markdown


def test_without_the_encoders_package_embeddings_is_skipped_naming_it(tiny_causal_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(fewshot, "encoder_folder", lambda: None)
    report = run(tmp_path, tiny_causal_dir, methods=["majority", "embeddings"], max_eval=4, seeds=[1])
    entry = report["tasks"]["sst2"]
    assert entry["embeddings"]["skipped"] == fewshot.MISSING and "pip install" in fewshot.MISSING
    assert report["summary"]["sst2"].keys() == {"majority"}
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| skipped |" in markdown and fewshot.MISSING in markdown


def cv_figures(folds: list[float]) -> dict:
    """``cross_validate``'s figures for these per-fold macro-F1s (accuracy the same)."""
    mean = sum(folds) / len(folds)
    return {"accuracy": {"mean": mean, "std": 0.0}, "macro_f1": {"mean": mean, "std": 0.0}, "seconds": 0.0,
            "runs": [{"accuracy": f, "macro_f1": f} for f in folds]}


def fake_scores(probe_f1: float, other_f1: float):
    """A stand-in for cross-validation: ``probe_f1`` for a linear head, ``other_f1`` for every other candidate."""
    def fake_cv(cfg, **kwargs):
        f1 = probe_f1 if cfg.task.head == "linear" else other_f1
        return cv_figures([f1, f1])
    return fake_cv


def test_a_probe_the_k_rows_choose_is_fitted_on_all_of_them_and_nothing_is_trained(tiny_causal_dir, tmp_path,
                                                                                    monkeypatch):
    fitted, real_fit_probe = [], fewshot.fit_probe

    def spy_fit_probe(session, train, seed):
        fitted.append((session.cfg.task.head_layer, session.cfg.task.head_pooling, len(train)))
        return real_fit_probe(session, train, seed)

    def no_training(*args, **kwargs):
        raise AssertionError("no prompt should be trained when a probe is chosen")

    monkeypatch.setattr(fewshot_choice, "cross_validate", fake_scores(0.9, 0.5))
    monkeypatch.setattr(fewshot, "fit", no_training)
    monkeypatch.setattr(fewshot, "fit_probe", spy_fit_probe)
    report = run(tmp_path, tiny_causal_dir, methods=["chosen"], max_eval=4, seeds=[1, 2])
    picks = report["tasks"]["sst2"]["chosen"]["seeds"]
    # the two probes tie: the one listed first, at the middle layer (1 of the tiny model's 2), wins
    assert [p["kind"] for p in picks] == [fewshot_choice.PROBE] * 2
    assert all(p["chosen"].startswith("probe middle layer 1") for p in picks)
    assert fitted == [(1, "mean", 6)] * 2
    assert all(0 <= p["accuracy"] <= 1 for p in picks)


def test_a_tie_between_the_zero_shot_prompt_and_a_probe_goes_to_the_zero_shot_prompt(tiny_causal_dir, tmp_path,
                                                                                        monkeypatch):
    def nothing_fitted(*args, **kwargs):
        raise AssertionError("nothing should be fitted when zero-shot is chosen")

    monkeypatch.setattr(fewshot_choice, "cross_validate", fake_scores(0.8, 0.8))
    monkeypatch.setattr(fewshot, "fit", nothing_fitted)
    monkeypatch.setattr(fewshot, "fit_probe", nothing_fitted)
    report = run(tmp_path, tiny_causal_dir, methods=["chosen"], max_eval=4, seeds=[1])
    pick = report["tasks"]["sst2"]["chosen"]["seeds"][0]
    assert pick["kind"] == fewshot_choice.ZERO_SHOT
    assert pick["chosen"] == f"zero-shot `{fewshot.SPECS['sst2'].manual}`"
    assert [c["kind"] for c in pick["cv"]].count(fewshot_choice.PROBE) == 2


def score(name: str, trains: str, folds: list[float]) -> dict:
    return {"candidate": name, "trains": trains, "macro_f1": sum(folds) / len(folds), "fold_macro_f1": folds}


def test_the_choice_follows_the_search_rule_and_keeps_a_clear_lead():
    zero = score("zero-shot", "nothing", [0.6, 0.7, 0.5, 0.6])
    probe = score("probe", "classifier", [0.5, 0.7, 0.6, 0.6])
    noisy = score("prompt", "prompt", [1.0, 0.5, 0.4, 0.9])  # +0.1 on the zero-shot prompt, s.e. 0.15
    chosen, note = fewshot_choice.pick([zero, probe, noisy], prefer_simpler=1.0)
    assert chosen == 0 and "over prompt (the best mean), which leads it by 0.100" in note
    assert fewshot_choice.pick([zero, probe, noisy], prefer_simpler=0) == (2, "")  # the best mean alone
    clear = score("prompt", "prompt", [0.8, 0.9, 0.7, 0.8])  # +0.2 on every fold
    assert fewshot_choice.pick([zero, probe, clear], prefer_simpler=1.0) == (2, "")
    close_probe = score("probe", "classifier", [0.8, 0.9, 0.7, 0.7])  # trails the clear prompt by 0.025, s.e. 0.025
    assert fewshot_choice.pick([zero, close_probe, clear], prefer_simpler=1.0)[0] == 1
    assert "1 standard error" in fewshot_choice.criterion(1.0) and "standard" not in fewshot_choice.criterion(0)


def test_the_chosen_candidate_carries_the_rule_s_note_into_the_report(tiny_causal_dir, tmp_path, monkeypatch):
    def fake_cv(cfg, *, trained=True, **kwargs):  # a trained prompt ahead on one fold of two, the rest level
        return cv_figures([0.9, 0.5] if trained and cfg.task.head != "linear" else [0.5, 0.5])

    monkeypatch.setattr(fewshot_choice, "cross_validate", fake_cv)
    report = run(tmp_path, tiny_causal_dir, methods=["chosen"], max_eval=4, seeds=[1], recipes=((1e-2, 1),))
    pick = report["tasks"]["sst2"]["chosen"]["seeds"][0]
    assert pick["kind"] == fewshot_choice.ZERO_SHOT
    notes = [c["note"] for c in pick["cv"] if c.get("note")]
    assert len(notes) == 1 and "which leads it by 0.200" in notes[0]
    assert report["choice"]["prefer_simpler"] == 1.0
    assert "; chosen over residual lr 0.01, 1 epochs" in (tmp_path / "out" / "results.md").read_text()


def test_the_cli_passes_prefer_simpler_through_and_refuses_a_negative_one(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ptune.cli import main
    seen = []
    monkeypatch.setattr(fewshot, "run_fewshot", lambda *a, **kw: seen.append(kw) or {"summary": {}, "seconds": 0})
    args = ["bench", "fewshot", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]
    assert CliRunner().invoke(main, args + ["--prefer-simpler", "0"]).exit_code == 0
    assert CliRunner().invoke(main, args).exit_code == 0
    assert seen[0]["prefer_simpler"] == 0 and "prefer_simpler" not in seen[1]  # unset: the search's default
    refused = CliRunner().invoke(main, args + ["--prefer-simpler", "-1"])
    assert refused.exit_code == 2 and "--prefer-simpler" in refused.output
    assert seen[1]["choice_splits"] == 1
    assert CliRunner().invoke(main, args + ["--choice-splits", "2"]).exit_code == 0 and seen[2]["choice_splits"] == 2
    refused = CliRunner().invoke(main, args + ["--choice-splits", "0"])
    assert refused.exit_code == 2 and "--choice-splits" in refused.output


def test_with_two_splits_every_candidate_is_scored_on_the_folds_of_both(tiny_causal_dir, tmp_path, monkeypatch):
    seen = []
    real_cv = fewshot_choice.cross_validate

    def spy_cv(cfg, **kwargs):
        seen.append(kwargs["seeds"])
        return real_cv(cfg, **kwargs)

    monkeypatch.setattr(fewshot_choice, "cross_validate", spy_cv)
    report = run(tmp_path, tiny_causal_dir, methods=["chosen"], max_eval=4, seeds=[3], recipes=((1e-2, 1),),
                 choice_splits=2)
    assert seen and all(seeds == [3, 1003] for seeds in seen)
    cv = report["tasks"]["sst2"]["chosen"]["seeds"][0]["cv"]
    assert all(len(c["fold_macro_f1"]) == 4 for c in cv)  # 2 folds in each of 2 splits
    assert report["choice"]["splits"] == 2
    assert "over the folds of 2 splits of the k rows" in (tmp_path / "out" / "results.md").read_text()
    assert fewshot_choice.split_seeds(5, 1) == [5]
