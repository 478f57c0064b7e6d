import json

import pytest
import yaml

from conftest import ROWS, write_csv
from ptune.errors import ConfigError
from ptune.inference import Predictor
from ptune.evaluation.search import candidates, run_search


def test_grid_is_the_product_of_the_space():
    grid = candidates({"train": {"lr": 1.0}}, {"train.lr": [1, 2], "task.template": ["a", "b", "c"]})
    assert len(grid) == 6
    assert grid[0][1]["train"]["lr"] == 1 and grid[0][1]["task"]["template"] == "a"


def search_config(model_dir, folder, search: dict, **train) -> dict:
    """A search config on the tiny model over 12 rows, written to folder/s.yaml."""
    write_csv(folder / "train.csv", ROWS * 2)
    cfg = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "task": {"template": "[P*2] {text} Label : [TARGET]", "label_column": "label"},
        "encoder": {"type": "mlp", "hidden_size": 16},
        "data": {"train": "train.csv"},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 64, **train},
        "search": {"folds": 2, "seeds": [1], **search},
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_search_picks_best_by_macro_f1_and_writes_a_checkpoint_that_predicts(tiny_causal_dir, tmp_path):
    search_config(tiny_causal_dir, tmp_path, {"space": {"train.lr": [1e-3, 3e-2], "encoder.type": ["mlp", "embedding"]},
                                              "prefer_simpler": 0})  # the best mean alone
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    f1 = [c["macro_f1"]["mean"] for c in report["candidates"]]
    assert len(f1) == 5 and f1[report["best"]] == max(f1)  # the grid's 4, then the zero-shot manual prompt
    assert report["candidates"][-1]["settings"] == {"zero_shot": "{text} Label : [TARGET]"}
    assert all(len(c["macro_f1"]) == 2 for c in report["candidates"])  # mean and spread
    saved = json.loads((tmp_path / "out" / "search.json").read_text())
    assert saved["best"] == report["best"]
    assert (tmp_path / "out" / "search.png").is_file() and "**best**" in (tmp_path / "out" / "search.md").read_text()
    predictor = Predictor.load(tmp_path / "out")
    best = report["candidates"][report["best"]]["settings"]
    assert predictor.session.cfg.encoder.type == best["encoder.type"]
    preds = predictor.predict_rows([{"text": "thanks"}, {"text": "broken box"}])
    assert all(p["prediction"] in ("complaint", "no complaint") for p in preds)


def test_search_with_ensemble_scores_seeds_together_and_writes_every_member(tiny_causal_dir, tmp_path):
    from ptune.inference import Ensemble
    from ptune.evaluation.cv import cross_validate
    from ptune.config import load_config

    cfg = search_config(tiny_causal_dir, tmp_path, {"ensemble": 2, "space": {"encoder.type": ["mlp"]},
                                                    "prefer_simpler": 0}, lr=3e-2, seed=7)
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    # the candidate's figures are those of a 2-seed ensemble on the same folds
    plain = dict(cfg)
    del plain["search"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plain))
    direct = cross_validate(load_config(tmp_path / "c.yaml"), folds=2, seeds=[1], ensemble=2, show_progress=False)
    assert report["ensemble"] == 2 and report["candidates"][0]["macro_f1"] == direct["macro_f1"]
    assert report["members"] == [".", "members/seed-107"]
    member = Predictor.load(tmp_path / "out" / "members" / "seed-107")
    assert member.session.cfg.train.seed == 107  # the manifest says how it was trained
    assert Predictor.load(tmp_path / "out").session.cfg.train.seed == 7
    ensemble = Ensemble.load([tmp_path / "out", tmp_path / "out" / "members" / "seed-107"])
    preds = ensemble.predict_rows([{"text": "thanks"}, {"text": "broken box"}])
    assert all(p["prediction"] in ("complaint", "no complaint") for p in preds)
    assert "members/seed-107" in (tmp_path / "out" / "search.md").read_text()


def test_search_ensemble_must_be_positive(tiny_causal_dir, tmp_path):
    search_config(tiny_causal_dir, tmp_path, {"ensemble": 0, "space": {"train.lr": [1e-2]}})
    with pytest.raises(ConfigError, match="search.ensemble"):
        run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)


def test_search_weighs_the_linear_head_and_its_probe_and_the_winner_reloads(tiny_causal_dir, tmp_path):
    cfg = search_config(tiny_causal_dir, tmp_path, {"space": {"task.template": [
        "{text} Label : [TARGET]", "{text} [P*2] Label : [TARGET]"]}, "prefer_simpler": 0}, lr=3e-2)
    cfg["task"].update(head="linear", head_layer=1)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert len(report["candidates"]) == 2  # no label words, so no zero-shot prompt, and the search says why
    assert report["notes"] == ["zero-shot manual prompt: skipped, no label words (task.head is linear and "
                               "task.verbalizer is empty)"]
    assert report["notes"][0] in (tmp_path / "out" / "search.md").read_text()
    predictor = Predictor.load(tmp_path / "out")
    best = report["candidates"][report["best"]]["settings"]["task.template"]
    assert predictor.session.cfg.task.template == best and predictor.session.cfg.task.head == "linear"
    assert predictor.model.encoder.n_virtual == (2 if "[P*2]" in best else 0)
    preds = predictor.predict_rows([{"text": "thanks"}, {"text": "broken box"}])
    assert all(p["prediction"] in ("complaint", "no complaint") for p in preds)


def test_search_stops_early_inside_each_fold_and_retrains_the_winner_the_same_way(tiny_causal_dir, tmp_path):
    """data.dev_fraction and train.patience: each fold model (and the final one) keeps its best epoch on dev rows
    taken from its own training rows; every row is still scored, and the winner's checkpoint records its dev
    evaluations."""
    cfg = search_config(tiny_causal_dir, tmp_path, {"zero_shot": False, "space": {"train.patience": [1, 0]}},
                        epochs=3)
    cfg["data"]["dev_fraction"] = 0.25
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert len(report["candidates"]) == 2 and report["notes"] == [
        "zero-shot manual prompt: left out (search.zero_shot is false)"]
    for candidate in report["candidates"]:
        assert candidate["settings"]["train.patience"] in (1, 0)
    saved = json.loads((tmp_path / "out" / "search.json").read_text())
    assert saved["best"] == report["best"]
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    dev = [h for h in history if h["kind"] == "dev"]
    assert dev and all(h["n"] == 4 for h in dev)  # a quarter of each label's 8 rows
    manifest = json.loads((tmp_path / "out" / "ptune.json").read_text())
    assert manifest["training"]["best"] is not None  # kept for its dev score (None: the last epoch, no dev)


def test_paired_difference_says_how_far_ahead_the_best_is_fold_by_fold():
    from ptune.evaluation.search import how_sure, paired_difference

    lead = paired_difference([0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.5, 0.7])
    assert lead["mean"] == pytest.approx(0.05) and (lead["ahead"], lead["level"], lead["behind"]) == (2, 1, 1)
    assert lead["sem"] == pytest.approx(lead["std"] / 2) and lead["std"] == pytest.approx(0.1290994)
    assert paired_difference([0.5], [0.5, 0.6]) is None  # not the same folds: no pairing
    rows = [{"vs_best": paired_difference([0.9, 0.8], [0.9, 0.8])},
            {"vs_best": paired_difference([0.9, 0.8], [0.9, 0.8])}]  # identical to the best: no clear lead
    assert "do not separate them" in how_sure(rows, 0)
    rows[1]["vs_best"] = paired_difference([0.9, 0.8, 0.9], [0.5, 0.45, 0.5])
    assert "#0) leads the runner-up (#1) by +0.383" in how_sure(rows, 0) and "a clear lead" in how_sure(rows, 0)


def test_search_report_pairs_every_candidate_with_the_best_on_the_same_folds(tiny_causal_dir, tmp_path):
    search_config(tiny_causal_dir, tmp_path, {"seeds": [1, 2], "space": {"train.lr": [1e-3, 3e-2]}})
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    best = report["candidates"][report["best"]]
    assert len(best["fold_macro_f1"]) == 4  # 2 folds x 2 seeds
    assert best["vs_best"]["mean"] == 0 and best["vs_best"]["level"] == 4
    other = report["candidates"][1 - report["best"]]
    assert other["vs_best"]["mean"] == pytest.approx(best["macro_f1"]["mean"] - other["macro_f1"]["mean"])
    assert "leads the runner-up" in (tmp_path / "out" / "search.md").read_text()


def test_a_search_config_with_invalid_yaml_is_one_line_error_like_any_config(tmp_path):
    from click.testing import CliRunner

    from ptune.cli import main

    bad = tmp_path / "search.yaml"
    bad.write_text("search: {space: [\n")
    for command in (["search", str(bad), "--out", str(tmp_path / "out")], ["train", str(bad), "--out",
                                                                            str(tmp_path / "t")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2
        assert result.output.startswith(f"ptune: error: {bad}: not valid YAML: ")
        assert result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_zero_shot_prompt_is_a_candidate_scored_on_the_same_folds_as_the_trained_ones(tiny_causal_dir, tmp_path):
    """Each distinct template with its virtual runs taken out, label words ranked, nothing trained: fold for fold
    the figures ``ptune baselines`` gives the same manual prompt, paired with the best like any candidate."""
    from ptune.config import load_config
    from ptune.evaluation.baselines import zero_shot

    cfg = search_config(tiny_causal_dir, tmp_path, {"seeds": [1, 2], "space": {"task.template": [
        "[P*2] {text} Label : [TARGET]", "{text} [P*1] Label : [TARGET]", "{text} [P*2] Is it : [TARGET]"]}},
        lr=3e-2)
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    rows = report["candidates"]
    assert [r["settings"] for r in rows[3:]] == [{"zero_shot": "{text} Label : [TARGET]"},
                                                 {"zero_shot": "{text} Is it : [TARGET]"}]  # one per prompt
    plain = {k: v for k, v in cfg.items() if k != "search"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plain))
    direct = zero_shot(load_config(tmp_path / "c.yaml"), "{text} Label : [TARGET]",
                       read_rows(tmp_path / "train.csv"), 2, [1, 2])
    assert rows[3]["fold_macro_f1"] == pytest.approx([r["macro_f1"] for r in direct["runs"]])
    assert len(rows[3]["fold_macro_f1"]) == len(rows[0]["fold_macro_f1"]) == 4  # 2 folds x 2 seeds, paired
    assert rows[3]["vs_best"]["mean"] == pytest.approx(rows[report["best"]]["macro_f1"]["mean"]
                                                       - rows[3]["macro_f1"]["mean"])
    assert "zero_shot={text} Label : [TARGET]" in (tmp_path / "out" / "search.md").read_text()


def test_a_chosen_zero_shot_prompt_is_written_untrained_and_predicts(tiny_causal_dir, tmp_path, monkeypatch):
    """Whatever wins, its checkpoint must load: a zero-shot winner is saved with no virtual tokens and no
    training, and `ptune train` on its recipe refuses it, since there is nothing to train."""
    import ptune
    from ptune.errors import TemplateError
    from ptune.evaluation import search as search_module

    pick = search_module.pick_best
    monkeypatch.setattr(search_module, "pick_best",
                        lambda results, within: (pick(results, within), (len(results) - 1, []))[1])
    search_config(tiny_causal_dir, tmp_path, {"ensemble": 2, "space": {"train.lr": [3e-2]}})
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert report["best"] == 1 and report["members"] == ["."]  # one model: nothing trained, no seeds to average
    assert not (tmp_path / "out" / "members").exists()
    manifest = json.loads((tmp_path / "out" / "ptune.json").read_text())
    assert manifest["training"] == {"step": 0, "zero_shot": True}
    predictor = Predictor.load(tmp_path / "out")
    assert predictor.model.encoder.n_virtual == 0 and predictor.session.cfg.task.head == "words"
    assert predictor.session.cfg.task.template == "{text} Label : [TARGET]"
    held = read_rows(tmp_path / "train.csv")
    metrics = predictor.evaluate_file(str(tmp_path / "train.csv"))
    assert metrics["n"] == len(held)
    assert "nothing was trained" in (tmp_path / "out" / "search.md").read_text()
    with pytest.raises(TemplateError, match="no virtual tokens"):
        ptune.train(predictor.session.cfg, tmp_path / "retrained")


def read_rows(path):
    from ptune.data.tables import read_table

    return read_table(path)


def test_without_a_space_the_search_lists_the_built_in_one(tiny_causal_dir, tmp_path):
    """No ``search.space``: the probe (middle and late layer, mean and last pooling), the prompts (the template, its
    runs halved, another placement) under each head, encoder and learning rate, and the deep prompts (8 positions
    started from the label words, 16 through the MLP; label words or the middle layer's linear head), listed
    round-robin over their kinds, searched by halving."""
    from ptune.evaluation.search import SearchPlan
    from ptune.evaluation.space import DEEP, LINEAR, PROBE, STARTED, WORDS
    from ptune.modeling.base import load_tokenizer

    cfg = search_config(tiny_causal_dir, tmp_path, {}, lr=1e-2)
    del cfg["search"]  # no section at all: the built-in space and the defaults
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}  # every candidate has words
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    plan = SearchPlan.read(tmp_path / "s.yaml")
    assert plan.builtin and plan.halving and plan.folds == 5
    settings = [s for s, _ in plan.configs]
    assert len(settings) == 46 and len({json.dumps(s, sort_keys=True) for s in settings}) == 46
    assert plan.kinds[:10] == [PROBE, STARTED, WORDS, LINEAR, DEEP] * 2 and len(plan.kinds) == 46  # round-robin
    # started at the manual words: " Label :" as that many virtual tokens, at the zero-shot prompt or the probe
    n = len(load_tokenizer(plan.configs[0][1].model).encode(" Label :", add_special_tokens=False))
    start = {"encoder.type": "lstm", "encoder.init": "text", "encoder.init_text": " Label :",
             "encoder.residual": True, "train.lr": 1e-2}
    assert [s for s, kind in zip(settings, plan.kinds) if kind == STARTED] == [
        {"task.template": f"{{text}} [P*{n}] [TARGET]", **head, **start}
        for head in ({"task.head": "words"},
                     {"task.head": "linear", "task.head_layer": 1, "task.head_pooling": "mean"})]
    deep = [s for s, kind in zip(settings, plan.kinds) if kind == DEEP]
    starts = ({"encoder.deep_tokens": 8, "encoder.deep_encoder": "table", "encoder.init": "labels"},
              {"encoder.deep_tokens": 16, "encoder.deep_encoder": "mlp"})
    assert deep == [{"task.template": "{text} Label : [TARGET]", **head, **start, "train.lr": 1e-2}
                    for start in starts for head in ({"task.head": "words"}, {"task.head": "linear",
                                                                              "task.head_layer": 1,
                                                                              "task.head_pooling": "mean"})]
    assert all(cfg.encoder.deep_tokens == s.get("encoder.deep_tokens", 0) for s, cfg in plan.configs)
    probes = [s for s, kind in zip(settings, plan.kinds) if kind == PROBE]
    settings = [s for s, kind in zip(settings, plan.kinds) if kind not in (DEEP, STARTED)]
    assert probes == [s for s in settings if "[P" not in s["task.template"]]
    assert [(s["task.head_layer"], s["task.head_pooling"]) for s in probes] == [
        (1, "mean"), (1, "last"), (2, "mean"), (2, "last")]  # the tiny model has 2 blocks: middle 1, late 2
    assert {s["task.template"] for s in settings} == {
        "{text} Label : [TARGET]", "[P*2] {text} Label : [TARGET]", "[P*1] {text} Label : [TARGET]",
        "{text} Label : [P*2] [TARGET]"}
    prompted = [s for s in settings if "[P" in s["task.template"]]
    assert len(prompted) == 36
    assert {s["encoder.type"] for s in prompted} == {"lstm", "mlp"} and {s["train.lr"] for s in prompted} == {
        1e-2, 3e-3}
    assert {(s["task.head"], s.get("task.head_layer"), s.get("task.head_pooling")) for s in prompted} == {
        ("words", None, None), ("linear", 1, "mean"), ("linear", 2, "last")}
    assert [s for s, _ in plan.zero_shot] == [{"zero_shot": "{text} Label : [TARGET]"}] and plan.notes == []
    assert plan.zero_shot[0][1].encoder.deep_tokens == 0  # nothing trained, whatever the candidates
    checkpointing = dict(cfg, train=dict(cfg["train"], gradient_checkpointing=True))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(checkpointing))
    assert len(SearchPlan.read(tmp_path / "g.yaml").configs) == 42  # no deep prompt with gradient checkpointing
    explicit = search_config(tiny_causal_dir, tmp_path, {"space": {"train.lr": [1e-2]}})
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(explicit))
    given = SearchPlan.read(tmp_path / "e.yaml")
    assert not given.builtin and not given.halving and len(given.configs) == 1  # a given space: as before


def test_a_candidate_started_at_the_manual_words_begins_at_the_zero_shot_prompt_and_the_probe(tiny_causal_dir,
                                                                                              tmp_path):
    """The built-in space's prompts started at the manual words score, before any training, exactly as the zero-shot
    prompt (label words) and the middle-layer probe (linear head, fitted to the same rows) do: the folds can only
    choose their training over those where it helps."""
    import torch

    from ptune.data.tables import read_table
    from ptune.evaluation.search import SearchPlan
    from ptune.evaluation.space import PROBE, STARTED
    from ptune.session import open_session

    cfg = search_config(tiny_causal_dir, tmp_path, {})
    del cfg["search"]
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    plan = SearchPlan.read(tmp_path / "s.yaml")
    by_kind = {kind: [c for c, k in zip(plan.configs, plan.kinds) if k == kind] for kind in (PROBE, STARTED)}
    (_, words), (_, linear) = by_kind[STARTED]
    probe = next(c for s, c in by_kind[PROBE] if s["task.head_pooling"] == linear.task.head_pooling)
    zero_shot = plan.zero_shot[0][1]
    table = read_table(tmp_path / "train.csv")

    def scores(config, fit: bool):
        session = open_session(config, label_values=["complaint", "no complaint"], allow_no_virtual=True)
        model = session.new_model(seed=5).eval()
        if fit:
            session.task.fit_head(model, session.task.train_examples(table)[0], 4, "cpu")
        with torch.inference_mode():
            return session.task.scores(model, table.rows, 4, "cpu")

    assert words.encoder.residual and linear.task.head == "linear" and linear.task.head_layer == probe.task.head_layer
    assert torch.allclose(scores(words, False), scores(zero_shot, False), atol=1e-5)
    assert torch.allclose(scores(linear, True), scores(probe, True), atol=1e-4)


def test_the_built_in_deep_prompt_candidates_cross_validate(tiny_causal_dir, tmp_path):
    """The deep prompts of the built-in space are configs that run: the label words' and the linear head's
    cross-validate on the search's folds, and a deep candidate with a linear head is no probe (it trains)."""
    from ptune.evaluation.search import SearchPlan, SharedRows, run_candidate, trains_nothing
    from ptune.training.prepare import prepare

    cfg = search_config(tiny_causal_dir, tmp_path, {"folds": 2})
    cfg["search"].pop("space", None)
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    plan = SearchPlan.read(tmp_path / "s.yaml")
    deep = [c for s, c in plan.configs if s.get("encoder.deep_tokens")]
    assert [(c.encoder.deep_tokens, c.task.head) for c in deep] == [(8, "words"), (8, "linear"), (16, "words"),
                                                                     (16, "linear")]
    assert not any(trains_nothing(c) for c in deep)
    shared = SharedRows(*prepare(plan.configs[0][1], hold_out_dev=False))
    for c in deep[:2]:
        summary = run_candidate(plan, shared, c)
        assert 0 <= summary["macro_f1"]["mean"] <= 1 and len(summary["runs"]) == 2


def test_successive_halving_promotes_the_best_third_and_stays_within_its_budget():
    from ptune.evaluation.halving import rung_fractions, successive_halving

    assert rung_fractions(40, 10) == [1 / 9, 1 / 3, 1.0] and rung_fractions(40, 1) == [1.0]
    now, calls = [0.0], []

    def score(i, rung, fraction):  # candidate 7 is best at every rung; a score costs its epochs in seconds
        calls.append((i, rung))
        now[0] += 9 * fraction
        return -abs(i - 7) + (1.5 if i == 3 else 0) * (rung == 0)  # 3 looks better on the cheap rung

    reached = successive_halving(20, rung_fractions(20, 9), score, budget=0, clock=lambda: now[0])
    assert [len([c for c in calls if c[1] == rung]) for rung in range(3)] == [20, 7, 3]
    assert {i for i, r in reached.items() if r.rung == 2} == {6, 7, 8} and reached[7].score == 0
    assert reached[0].rung == 0 and reached[3].rung == 1  # where each stopped
    now[0], calls[:] = 0.0, []
    reached = successive_halving(20, rung_fractions(20, 9), score, budget=30, clock=lambda: now[0])
    # rung 1 may start scores until 10 s, rung 2 until 20, rung 3 until 30: never more than one score over
    assert now[0] <= 30 + 9 and [c[1] for c in calls].count(0) == 10
    assert max(r.rung for r in reached.values()) == 2 and len(reached) == 10

    def flat(i, rung, fraction):  # every score costs 1 s, whatever its epochs: a last rung done early leaves time
        now[0] += 1
        return -i

    now[0] = 0.0
    reached = successive_halving(20, [1 / 3, 1.0], flat, budget=20, clock=lambda: now[0])
    # 10 on the first rung, 4 on the last by 14 s; the 10 left get their own brackets: 3 (1 promoted), then 1
    assert len(reached) == 14 and now[0] <= 21
    assert sorted(i for i, r in reached.items() if r.rung == 1) == [0, 1, 2, 3, 10, 13]


def test_halving_scores_every_rung_on_the_same_folds_and_its_recipe_trains(tiny_causal_dir, tmp_path, monkeypatch):
    """Four candidates, 3 epochs: all on the first rung with 1 epoch, the best two with 3, each fold the same rows;
    the winner comes from the last rung, and `recipe.yaml` is a config `ptune train` takes."""
    from click.testing import CliRunner

    from ptune.cli import main
    from ptune.evaluation import cv

    held_rows, epochs = [], []
    folds = cv.seeded_folds

    def spy(table, keys, k, seeds):
        for seed, fold, train, held in folds(table, keys, k, seeds):
            held_rows[-1].append(tuple(r["text"] for r in held.rows))
            yield seed, fold, train, held

    scorer = cv.FoldScorer.build

    def build(cfg, *args, **kwargs):
        held_rows.append([])
        epochs.append(cfg.train.epochs)
        return scorer(cfg, *args, **kwargs)

    monkeypatch.setattr(cv, "seeded_folds", spy)
    monkeypatch.setattr(cv.FoldScorer, "build", build)
    search_config(tiny_causal_dir, tmp_path, {"halving": True, "zero_shot": False, "space": {
        "train.lr": [1e-3, 3e-2], "encoder.type": ["mlp", "embedding"]}}, epochs=3)
    monkeypatch.chdir(tmp_path)  # the search file named relative to the working directory
    report = run_search("s.yaml", tmp_path / "out", show_progress=False)
    monkeypatch.chdir(tmp_path / "out")
    assert epochs == [1, 1, 1, 1, 3, 3] and report["halving"]
    assert all(rows == held_rows[0] for rows in held_rows) and len(held_rows[0]) == 2
    rows = report["candidates"]
    assert sorted(r["rung"] for r in rows) == [0, 0, 1, 1] and all(r["epochs"] == [1, 3][r["rung"]] for r in rows)
    assert rows[report["best"]]["rung"] == 1
    assert rows[report["best"]]["macro_f1"]["mean"] == max(r["macro_f1"]["mean"] for r in rows if r["rung"] == 1)
    assert "rung 2, 3 epochs" in (tmp_path / "out" / "search.md").read_text()
    recipe = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert report["recipe"] == "recipe.yaml" and recipe["train"]["epochs"] == 3
    assert recipe["data"]["train"] == str(tmp_path / "train.csv")  # absolute: it trains from any folder
    assert recipe["encoder"]["type"] == rows[report["best"]]["settings"]["encoder.type"]
    result = CliRunner().invoke(main, ["train", str(tmp_path / "out" / "recipe.yaml"), "--out",
                                       str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    again, chosen = (Predictor.load(tmp_path / folder).session.cfg.to_dict() for folder in ("again", "out"))
    assert {k: v for k, v in again.items() if k != "data"} == {k: v for k, v in chosen.items() if k != "data"}


def test_the_built_in_search_stops_within_its_budget_and_writes_a_checkpoint(tiny_causal_dir, tmp_path):
    cfg = search_config(tiny_causal_dir, tmp_path, {"budget_minutes": 0.02, "zero_shot": False}, epochs=3)
    report = run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert report["space"] == "built-in" and 0 < len(report["candidates"]) < 40
    # one score over at most, then the retraining
    assert report["seconds"] < 1.2 * 60 * cfg["search"]["budget_minutes"] + 10
    assert Predictor.load(tmp_path / "out").predict_rows([{"text": "thanks"}])[0]["prediction"] in (
        "complaint", "no complaint")


def test_halving_over_the_built_in_space_promotes_the_best_and_scores_a_probe_once(tiny_causal_dir, tmp_path,
                                                                                   monkeypatch):
    """A fake scorer over the built-in space (46 candidates, 9 epochs: rungs of 1, 3 and 9 epochs): the best
    third goes on at every rung, and a probe, whose figures do not depend on the epochs, is not scored again."""
    from ptune.evaluation import search as search_module

    cfg = search_config(tiny_causal_dir, tmp_path, {"folds": 2}, epochs=9)
    del cfg["search"]["seeds"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    plan = search_module.SearchPlan.read(tmp_path / "s.yaml")
    calls = []

    def fake(plan_, shared, candidate):
        calls.append((candidate.task.template, candidate.encoder.deep_tokens, candidate.task.head,
                      candidate.encoder.type, candidate.train.lr, candidate.task.head_pooling,
                      candidate.task.head_layer, candidate.train.epochs))
        f1 = 0.9 if (candidate.task.head_pooling, candidate.task.head_layer) == ("last", 2) else 0.5
        f1 += 0.05 * (candidate.encoder.type == "mlp")  # the probe's base encoder is mlp: it leads its ties
        return {"macro_f1": {"mean": f1, "std": 0.0}, "runs": [{"macro_f1": f1}] * 2, "seconds": 0.0}

    monkeypatch.setattr(search_module, "run_candidate", fake)
    scored, _ = search_module.score_by_halving(plan, None, 0, show_progress=False)
    assert [epochs for *_, epochs in calls].count(1) == 46 and len(scored) == 46
    assert [rung for *_, rung in scored].count(1) == 16 - 6 and [rung for *_, rung in scored].count(2) == 6
    probe_calls = [call for call in calls if call[0] == "{text} Label : [TARGET]" and not call[1]]
    assert len(probe_calls) == 4  # each probe scored once
    assert len(calls) == 46 + 13 + 5  # 16 and 6 promoted, 3 probes among the 16 and 1 among the 6
    top = [settings for settings, _, _, rung in scored if rung == 2]
    assert {"task.head_layer": 2, "task.head_pooling": "last", "task.head": "linear",
            "task.template": "{text} Label : [TARGET]"} in top  # the probe at the late layer, scored once
    assert all(s.get("encoder.type", "mlp") == "mlp" for s in top)


def test_the_built_in_deep_prompts_of_a_task_without_label_words_need_none():
    from ptune.evaluation.space import DEEP, builtin_candidates

    deep = [s for kind, s in builtin_candidates({"task": {"type": "generation", "template": "{text} [P*4] [TARGET]"}},
                                                depth=30) if kind == DEEP]
    assert deep and all(s.get("encoder.init") != "labels" for s in deep)
    classify = [s for kind, s in builtin_candidates({"task": {"template": "{text} [P*4] [TARGET]"}}, depth=30)
                if kind == DEEP]
    assert classify[0]["encoder.init"] == "labels"  # a classification's first deep prompt starts at its words


def scored_row(trains: str, folds: list[float], **extra) -> dict:
    """A search result row as ``candidate_rows`` writes it, with these per-fold macro-F1s."""
    mean = sum(folds) / len(folds)
    return {"settings": {}, "trains": trains, "fold_macro_f1": folds, "macro_f1": {"mean": mean, "std": 0.0},
            **extra}


def test_a_prompt_that_the_folds_do_not_separate_from_the_probe_loses_to_it():
    from ptune.evaluation.search import how_sure, pick_best

    rows = [scored_row("classifier", [0.6, 0.7, 0.8, 0.5, 0.7]),  # the probe
            scored_row("prompt", [0.9, 0.6, 0.7, 0.6, 0.7], rung=1),  # +0.04 on average, s.e. 0.075
            scored_row("nothing", [0.3, 0.3, 0.4, 0.3, 0.3])]  # the zero-shot prompt, far behind
    chosen, notes = pick_best(rows)
    assert chosen == 0 and rows[1]["vs_best"]["mean"] < 0  # the table shows the prompt's lead, not trusted
    assert len(notes) == 1 and notes[0].startswith("chose #0, a probe") and "#1" in notes[0]
    assert "The choice (#0) trails #1 by 0.040" in how_sure(rows, 0)  # search.md's sentence under the table
    assert pick_best(rows, 0) == (1, [])  # the best mean alone
    assert pick_best(rows, 0.5)[0] == 1  # +0.04 is 0.53 standard errors: outside half of one


def test_a_clear_lead_keeps_the_prompt_and_the_simplest_close_row_wins():
    from ptune.evaluation.search import pick_best

    probe = scored_row("classifier", [0.6, 0.7, 0.8, 0.5, 0.7])
    clear = scored_row("prompt", [0.7, 0.8, 0.85, 0.6, 0.8], rung=1)  # ahead on every fold
    assert pick_best([probe, clear]) == (1, [])
    zero = scored_row("nothing", [0.5, 0.75, 0.75, 0.5, 0.7])  # 0.02 behind the probe, s.e. 0.026
    chosen, notes = pick_best([probe, zero])
    assert chosen == 1 and "the zero-shot prompt (nothing trained)" in notes[0]
    # a prompt below the last rung reached does not compete, however its folds compare
    early = scored_row("prompt", [0.9, 0.9, 0.9, 0.9, 0.9], rung=0)
    assert pick_best([probe, clear, early])[0] == 1


@pytest.mark.parametrize("value", [-1, "yes", True])
def test_prefer_simpler_must_be_a_number_of_standard_errors(tiny_causal_dir, tmp_path, value):
    search_config(tiny_causal_dir, tmp_path, {"prefer_simpler": value, "space": {"train.lr": [1e-2]}})
    with pytest.raises(ConfigError, match="search.prefer_simpler"):
        run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
