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
    search_config(tiny_causal_dir, tmp_path, {"space": {"train.lr": [1e-3, 3e-2], "encoder.type": ["mlp", "embedding"]}})
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

    cfg = search_config(tiny_causal_dir, tmp_path, {"ensemble": 2, "space": {"encoder.type": ["mlp"]}},
                        lr=3e-2, seed=7)
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
        "{text} Label : [TARGET]", "{text} [P*2] Label : [TARGET]"]}}, lr=3e-2)
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
    monkeypatch.setattr(search_module, "pick_best", lambda results: (pick(results), len(results) - 1)[1])
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
