"""ptune bench fewshot's ``deep``, ``deep_text``, ``unlabeled`` and distilled deep methods: end to end on the tiny
models, the unlabeled rows (without the seed's k rows, the evaluation rows and the labels), and ``deep`` skipped on a
masked LM."""

from __future__ import annotations

import json
from pathlib import Path

from ptune.bench.fewshot import SPECS, run_fewshot
from ptune.bench.fewshot_methods import DEEP_ENCODER, PET_TEACHERS, distill_plan, unlabeled_rows
from ptune.bench.loaders import balanced_sample
from ptune.data.tables import Table

SENTENCES = [("great service today", 1), ("the app crashes when I pay", 0), ("thanks for the quick delivery", 1),
             ("the box was broken", 0), ("hello world", 1), ("I want a refund now", 0), ("lovely staff", 1),
             ("late again", 0), ("works fine", 1), ("never again", 0)]


def sst2_folder(root: Path) -> Path:
    """SST-2-format files: a train pool of 10 rows and a dev set of 3 of other rows plus one of the pool's."""
    (root / "sst2").mkdir()
    train = ["sentence\tlabel"] + [f"{s}\t{l}" for s, l in SENTENCES]
    dev = ["sentence\tlabel", "good stuff\t1", "bad stuff\t0", "fine stuff\t1", "never again\t0"]
    (root / "sst2" / "train.tsv").write_text("\n".join(train) + "\n")
    (root / "sst2" / "dev.tsv").write_text("\n".join(dev) + "\n")
    return root


def sst2_folder_pool() -> Table:
    """The pool ``sst2_folder`` writes, as ``read_sst2`` reads it."""
    return Table("train.tsv", ["sentence", "label"], [{"sentence": s, "label": str(l)} for s, l in SENTENCES])


def test_unlabeled_rows_leave_out_the_k_rows_the_evaluation_rows_and_the_labels():
    pool = sst2_folder_pool()
    k_rows = balanced_sample(pool, 4, 1, "label")
    dev = Table("dev.tsv", ["sentence", "label"], [{"sentence": "never again", "label": "0"}])
    out = unlabeled_rows(pool, k_rows, dev, SPECS["sst2"].manual, "label")
    texts = [r["sentence"] for r in out.rows]
    assert len(texts) == 10 - 4 - 1
    assert not set(texts) & set(k_rows.column("sentence")) and "never again" not in texts
    assert out.columns == ["sentence"] and all(set(r) == {"sentence"} for r in out.rows)
    assert all(r["label"] == str(dict(SENTENCES)[r["sentence"]]) for r in pool.rows)  # the pool is left as it was


def test_distill_plan_keeps_teachers_that_share_the_words(tiny_causal_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    student, init_text, teachers = distill_plan(SPECS["sst2"].prompts(), tok)
    assert student.startswith("{sentence} [P*") and init_text == " It was"
    assert teachers == [student]  # the other prompt's label words differ: it does not teach
    same_words = [("{sentence} It was [TARGET]", {"1": "great"}), ("Text : {sentence} It was [TARGET]",
                                                                   {"1": "great"})]
    assert len(distill_plan(same_words, tok)[2]) == 2


def test_deep_and_unlabeled_end_to_end(tiny_causal_dir, tmp_path, monkeypatch):
    from ptune.training import trainer

    labelled = []  # what the teachers labelled: the rows and the columns they had

    def spy(session, train, seed, train_model, exclude=()):
        soft = distil(session, train, seed, train_model, exclude)
        labelled.append(soft.rows)
        return soft

    distil = trainer.distil
    monkeypatch.setattr(trainer, "distil", spy)
    report = run_fewshot(sst2_folder(tmp_path), tmp_path / "out", tasks=["sst2"], seeds=[1], k=4, max_eval=None,
                         methods=["deep", "unlabeled"], model=str(tiny_causal_dir), dtype="float32", device="cpu",
                         batch_size=4, show_progress=False, log=lambda m: None)
    e = report["tasks"]["sst2"]
    for method in ("deep", "unlabeled"):
        assert 0 <= e[method]["accuracy"]["mean"] <= 1 and len(e[method]["accuracy"]["runs"]) == 1
    assert e["deep"]["encoder"]["deep_tokens"] == DEEP_ENCODER["deep_tokens"] == 8
    [plan] = e["unlabeled"]["seeds"]
    assert e["unlabeled"]["train.distill_rows"] == 400 and plan["teachers"] == [plan["student"]]
    # both methods start at the manual prompt the k rows prefer, one of the task's own
    assert plan["student"].endswith("[TARGET]") and e["deep"]["templates"][0] in [t for t, _ in SPECS["sst2"].prompts()]
    k_rows = {r["sentence"] for r in balanced_sample(sst2_folder_pool(), 4, 1, "label").rows}
    [soft_rows] = labelled  # one seed, one round
    assert len(soft_rows) == 10 - 4 - 1 and all(set(r) == {"sentence"} for r in soft_rows)
    assert not {r["sentence"] for r in soft_rows} & (k_rows | {"never again"})
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["sst2"].keys() == {"deep", "unlabeled"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "deep prompt (P-tuning v2)" in md and "distilled on unlabeled rows" in md


def test_deep_skipped_on_a_masked_lm_and_unlabeled_without_a_pool(tiny_masked_dir, tmp_path):
    fewglue = tmp_path / "superglue_fewglue" / "RTE"
    fewglue.mkdir(parents=True)
    rows = [{"premise": f"a {w}", "hypothesis": w, "label": lab}
            for w, lab in [("x", "entailment"), ("y", "not_entailment")]]
    for name in ("train.jsonl", "val.jsonl"):
        (fewglue / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = run_fewshot(tmp_path, tmp_path / "out", tasks=["rte"], seeds=[1], methods=["deep", "unlabeled"],
                         model=str(tiny_masked_dir), dtype="float32", device="cpu", batch_size=4,
                         show_progress=False, log=lambda m: None)
    e = report["tasks"]["rte"]
    assert "masked LM" in e["deep"]["skipped"] and e["deep"]["skipped"].startswith("not run:")
    assert e["unlabeled"]["skipped"] == "not run: no unlabeled rows for this task"
    assert "- rte deep: not run" in (tmp_path / "out" / "results.md").read_text()


def test_deep_starts_at_the_manual_prompt_the_k_rows_prefer(tiny_causal_dir, tmp_path, monkeypatch):
    from ptune.bench import fewshot

    second = SPECS["sst2"].prompts()[1][0]

    def score_rows(session, model, table):  # the second manual prompt scores higher, on any rows
        f1 = 0.9 if session.cfg.task.template == second else 0.1
        return {"accuracy": f1, "macro_f1": f1, "n": len(table)}

    monkeypatch.setattr(fewshot, "score_rows", score_rows)
    report = run_fewshot(sst2_folder(tmp_path), tmp_path / "out", tasks=["sst2"], seeds=[1, 2], k=4, max_eval=None,
                         methods=["deep", "deep_text", "residual"], model=str(tiny_causal_dir), dtype="float32",
                         device="cpu", batch_size=4, epochs=1, show_progress=False, log=lambda m: None)
    e = report["tasks"]["sst2"]
    assert e["deep"]["templates"] == e["deep_text"]["templates"] == [second, second]
    # deep_text: a table started as the keys and values of the preferred prompt's own label words
    assert e["deep_text"]["encoder"]["deep_encoder"] == "table" and e["deep_text"]["encoder"]["init"] == "labels"
    # residual: the second prompt with its anchor words as virtual tokens, at the unlabeled method's recipe
    assert e["residual"]["templates"][0].startswith("Review : {sentence} [P*") and e["residual"]["epochs"] == 6


def _one_seed_on_sst2(tmp_path, model_dir, method: str) -> dict:
    """``method``'s entry in the report of one seed of 4 SST-2 rows on the tiny model."""
    report = run_fewshot(sst2_folder(tmp_path), tmp_path / "out", tasks=["sst2"], seeds=[1], k=4, max_eval=None,
                         methods=[method], model=str(model_dir), dtype="float32", device="cpu", batch_size=4,
                         show_progress=False, log=lambda m: None)
    return report["tasks"]["sst2"][method]


def test_deep_unlabeled_distils_deep_prompts_from_the_label_words(tiny_causal_dir, tmp_path, monkeypatch):
    from ptune.training import trainer

    seen = []  # (the student's config, the rows its teachers labelled)

    def spy(session, train, seed, train_model, exclude=()):
        soft = distil(session, train, seed, train_model, exclude)
        seen.append((session.cfg, soft.rows))
        return soft

    distil = trainer.distil
    monkeypatch.setattr(trainer, "distil", spy)
    e = _one_seed_on_sst2(tmp_path, tiny_causal_dir, "deep_unlabeled")
    [plan] = e["seeds"]
    [(cfg, soft_rows)] = seen
    prompts = SPECS["sst2"].prompts()
    words = dict(prompts)[plan["student"]]
    assert plan["teachers"] == [t for t, v in prompts if v == words] and plan["student"] in plan["teachers"]
    assert cfg.encoder.deep_encoder == "table" and cfg.encoder.init == "labels" and cfg.task.template == plan["student"]
    assert cfg.train.distill_templates == plan["teachers"] and (e["lr"], e["epochs"]) == (1e-2, 6)
    assert cfg.train.distill_verbalizers == plan["teacher_words"] == [words] * len(plan["teachers"])
    k_rows = {r["sentence"] for r in balanced_sample(sst2_folder_pool(), 4, 1, "label").rows}
    assert not {r["sentence"] for r in soft_rows} & (k_rows | {"never again"}) and soft_rows
    assert 0 <= e["accuracy"]["mean"] <= 1


def test_deep_pvp_teaches_with_every_manual_prompt_in_its_own_words(tiny_causal_dir, tmp_path, monkeypatch):
    from ptune.training import distillation, trainer

    taught = []  # per teacher session: (template, its label words)

    def spy(session):
        sessions = teacher_sessions(session)
        taught.extend((s.cfg.task.template, s.task.labels.to_dict()) for s in sessions)
        return sessions

    teacher_sessions = distillation.teacher_sessions
    monkeypatch.setattr(distillation, "teacher_sessions", spy)
    [plan] = _one_seed_on_sst2(tmp_path, tiny_causal_dir, "deep_pvp")["seeds"]
    prompts = SPECS["sst2"].prompts()  # two prompts whose words differ: deep_unlabeled would have one teacher
    assert sorted(plan["teachers"]) == sorted(t for t, _ in prompts) and plan["teachers"][0] == plan["student"]
    assert taught == [(t, {label: [word] for label, word in words.items()}) for t, words in prompts
                      if t == plan["student"]] + [(t, {label: [word] for label, word in words.items()})
                                                  for t, words in prompts if t != plan["student"]]


def test_deep_pet_trains_three_teachers_per_manual_prompt(tiny_causal_dir, tmp_path, monkeypatch):
    from ptune.training import distillation, trainer

    trained = []  # per teacher trained: (its template, its seed)

    def spy(session, train, seed, train_model, exclude=()):
        def counted(s, rows, soft, teacher_seed):
            trained.append((s.cfg.task.template, teacher_seed))
            return train_model(s, rows, soft, teacher_seed)
        return distil(session, train, seed, counted, exclude)

    distil = distillation.distil
    monkeypatch.setattr(trainer, "distil", spy)
    e = _one_seed_on_sst2(tmp_path, tiny_causal_dir, "deep_pet")
    [plan] = e["seeds"]
    assert e["train.distill_teachers"] == PET_TEACHERS == 3
    assert sorted(plan["teachers"]) == sorted(t for t, _ in SPECS["sst2"].prompts())
    assert trained == [(t, 1 + i) for t in plan["teachers"] for i in range(PET_TEACHERS)]
