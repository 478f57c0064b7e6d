"""A built-in search cut short by its budget has scored one candidate of every kind first, and its report says how
many of each kind it scored and which kinds it never did, with the budget that would have reached them."""

import yaml

from test_search import search_config
from ptune.evaluation import halving
from ptune.evaluation import search as search_module

KINDS = ("probe", "started", "words", "linear", "deep")


def kind_of(settings: dict) -> str:
    """A candidate's kind, read from its settings (the test's own reading, independent of space.py)."""
    if settings.get("encoder.deep_tokens"):
        return "deep"
    if settings.get("encoder.residual"):
        return "started"
    if "[P" not in settings["task.template"]:
        return "probe"
    return settings["task.head"]


def built_in_config(model_dir, folder, budget_seconds: float) -> None:
    """The built-in space on the tiny model, 3 epochs (two rungs: 1 epoch, then 3), no zero-shot prompt."""
    cfg = search_config(model_dir, folder, {"budget_minutes": budget_seconds / 60, "zero_shot": False}, epochs=3)
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}
    (folder / "s.yaml").write_text(yaml.safe_dump(cfg))


def fake_scores(monkeypatch) -> None:
    """Each candidate's score costs 10 s an epoch on a clock of the test's own, so a budget stops the first rung
    after a known number of candidates; the input-layer prompts read by the label words score highest (a probe
    would go on to the next rung at no cost: its figures do not depend on the epochs)."""
    now = [0.0]

    def fake(plan, shared, cfg):
        now[0] += 10 * cfg.train.epochs
        f1 = 0.9 if cfg.task.head == "words" and "[P" in cfg.task.template else 0.5
        return {"accuracy": {"mean": f1, "std": 0.0}, "macro_f1": {"mean": f1, "std": 0.0},
                "runs": [{"macro_f1": f1}] * 2, "seconds": 10.0 * cfg.train.epochs}

    def on_fake_clock(*args, **kwargs):
        return halving.successive_halving(*args, clock=lambda: now[0], **kwargs)

    monkeypatch.setattr(search_module, "run_candidate", fake)
    monkeypatch.setattr(search_module, "successive_halving", on_fake_clock)


def test_the_built_in_order_takes_one_candidate_of_each_kind_in_turn(tiny_causal_dir, tmp_path):
    built_in_config(tiny_causal_dir, tmp_path, 0)
    plan = search_module.SearchPlan.read(tmp_path / "s.yaml")
    kinds = [kind_of(settings) for settings, _ in plan.configs]
    assert kinds[:10] == list(KINDS) * 2  # 2 prompts started at the manual words, then the other kinds in turn
    assert kinds[10:18] == ["probe", "words", "linear", "deep"] * 2  # 4 probes, 4 deep prompts
    assert kinds[18:34] == ["words", "linear"] * 8 and kinds[34:] == ["linear"] * 12
    for kind in ("probe", "words", "linear", "deep"):  # within a kind, the space's order: the template as written
        first = next(s for s in (s for s, _ in plan.configs) if kind_of(s) == kind)
        assert first["task.template"] == ("[P*2] {text} Label : [TARGET]" if kind in ("words", "linear")
                                          else "{text} Label : [TARGET]")
    started = [s for s, _ in plan.configs if kind_of(s) == "started"]
    assert [(s["encoder.init_text"], s["task.head"]) for s in started] == [(" Label :", "words"),
                                                                           (" Label :", "linear")]


def test_a_budget_that_stops_the_first_rung_early_has_scored_every_kind(tiny_causal_dir, tmp_path, monkeypatch,
                                                                        capsys):
    """120 s over two rungs: the first rung may start scores for 60 s, 10 s each: 6 of the 46 candidates."""
    built_in_config(tiny_causal_dir, tmp_path, 120)
    fake_scores(monkeypatch)
    report = search_module.run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    scored = [kind_of(row["settings"]) for row in report["candidates"]]
    assert len(scored) == 6 and set(scored) == set(KINDS)
    assert report["coverage"] == [{"kind": "linear probe", "scored": 2, "of": 4},
                                  {"kind": "prompt started at the manual words", "scored": 1, "of": 2},
                                  {"kind": "prompt, label words", "scored": 1, "of": 12},
                                  {"kind": "prompt, linear head", "scored": 1, "of": 24},
                                  {"kind": "deep prompt", "scored": 1, "of": 4}]
    said = ("The time budget ran out before the first rung's end: 6 of 46 candidates scored (linear probe 2 of 4, "
            "prompt started at the manual words 1 of 2, prompt, label words 1 of 12, prompt, linear head 1 of 24, "
            "deep prompt 1 of 4)")
    assert said in capsys.readouterr().err and said in (tmp_path / "out" / "search.md").read_text()
    assert not any("Never scored" in note for note in report["notes"])


def test_the_report_names_the_kinds_never_scored_and_the_budget_that_would_have(tiny_causal_dir, tmp_path,
                                                                                monkeypatch, capsys):
    """60 s over two rungs: 30 s for the first, 3 candidates; the linear heads and the deep prompts are never
    scored. The last deep prompt is the 18th in the order: 18 candidates at the 10 s measured, twice over (the first
    rung's half of the budget), is 6 minutes; the last linear head is the 46th, the whole first rung: about 16."""
    built_in_config(tiny_causal_dir, tmp_path, 60)
    fake_scores(monkeypatch)
    report = search_module.run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert [kind_of(row["settings"]) for row in report["candidates"]] == ["probe", "started", "words"]
    assert report["coverage"][3:] == [{"kind": "prompt, linear head", "scored": 0, "of": 24},
                                      {"kind": "deep prompt", "scored": 0, "of": 4}]
    never = ("Never scored: deep prompt (4 candidates); a budget of about 6 min would have scored them all (at the "
             "seconds measured per candidate, the first rung getting 1/2 of it).")
    linear = "Never scored: prompt, linear head (24 candidates); a budget of about 16 min would have scored them all"
    whole = "A budget of about 16 min would score all 46 candidates on the first rung."
    err, md = capsys.readouterr().err, (tmp_path / "out" / "search.md").read_text()
    assert never in report["notes"] and whole in report["notes"]
    assert never in err and whole in err and never in md and whole in md
    assert any(note.startswith(linear) for note in report["notes"])
    assert sum("Never scored" in note for note in report["notes"]) == 2  # the other kinds were scored


def test_a_probe_scored_only_on_the_first_rung_still_competes_with_the_last_rungs(tiny_causal_dir, tmp_path,
                                                                                 monkeypatch):
    """A probe trains nothing, so its first-rung figures are its final ones: one scored late (in the bracket of the
    time left, never promoted) is chosen over a prompt that reached the last rung with a lower macro-F1."""
    built_in_config(tiny_causal_dir, tmp_path, 0)
    plan = search_module.SearchPlan.read(tmp_path / "s.yaml")
    (probe, probe_cfg), (words, words_cfg) = plan.configs[0], plan.configs[2]
    assert (kind_of(probe), kind_of(words)) == ("probe", "words")

    def summary(f1):
        return {"macro_f1": {"mean": f1, "std": 0.0}, "runs": [{"macro_f1": f1}] * 2, "seconds": 1.0}

    scored = [(probe, probe_cfg, summary(0.95), 0), (words, words_cfg, summary(0.90), 1)]
    monkeypatch.setattr(search_module, "score_by_halving", lambda *args: (scored, {0: 1.0, 1: 1.0}))
    results, _, _ = search_module.score_candidates(plan, None, 0.0, show_progress=False)
    assert "rung" not in results[0] and results[1]["rung"] == 1
    assert search_module.pick_best(results)[0] == 0


def started_first(tiny_causal_dir, tmp_path, monkeypatch, zero_shot_f1: float) -> dict:
    """The built-in search with the zero-shot prompt, 60 s (three trained candidates on the first rung, after the
    probe scored beforehand), every probe at 0.5 macro-F1 and the zero-shot prompt at ``zero_shot_f1``: the
    report."""
    cfg = search_config(tiny_causal_dir, tmp_path, {"budget_minutes": 1, "zero_shot": True}, epochs=3)
    cfg["task"]["verbalizer"] = {"complaint": "complaint", "no complaint": "hello"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    fake_scores(monkeypatch)
    probes = []
    fake = search_module.run_candidate
    monkeypatch.setattr(search_module, "run_candidate", lambda plan, shared, cfg: (
        probes.append(cfg.task.template) if search_module.trains_nothing(cfg) else None) or fake(plan, shared, cfg))
    zero = {"accuracy": {"mean": zero_shot_f1, "std": 0.0}, "macro_f1": {"mean": zero_shot_f1, "std": 0.0},
            "runs": [{"macro_f1": zero_shot_f1}] * 2, "seconds": 1.0}
    monkeypatch.setattr(search_module, "score_zero_shot", lambda plan, shared, cfg: zero)
    report = search_module.run_search(tmp_path / "s.yaml", tmp_path / "out", show_progress=False)
    assert len(probes) == 1  # the probe the order was decided on is not scored again by the halving
    return report


def test_the_prompt_started_from_the_probe_goes_first_where_the_probe_beats_the_zero_shot_prompt(
        tiny_causal_dir, tmp_path, monkeypatch):
    report = started_first(tiny_causal_dir, tmp_path, monkeypatch, zero_shot_f1=0.3)
    trained = [row["settings"] for row in report["candidates"] if "zero_shot" not in row["settings"]]
    assert [kind_of(s) for s in trained] == ["probe", "started", "words", "linear"]
    assert trained[1]["task.head"] == "linear" and trained[1]["encoder.residual"]
    assert report["notes"][0] == ("prompts started at the manual words: the linear head (from the probe) first; the "
                                  "probe scores 0.500 macro-F1 on the search's folds, the zero-shot prompt 0.300")


def test_the_prompt_started_from_the_label_words_goes_first_where_the_zero_shot_prompt_is_ahead(
        tiny_causal_dir, tmp_path, monkeypatch):
    report = started_first(tiny_causal_dir, tmp_path, monkeypatch, zero_shot_f1=0.7)
    trained = [row["settings"] for row in report["candidates"] if "zero_shot" not in row["settings"]]
    started = [s for s in trained if kind_of(s) == "started"]
    assert [s["task.head"] for s in started] == ["words"]
    assert "the label words (from the zero-shot prompt) first" in report["notes"][0]
