"""ptune bench: the data readers on tiny copies of each format, template conversion, P@1 on a hand-made case, and a
tiny end-to-end `bench lama` on the tiny causal and masked models. Offline; no shared data needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptune.bench import loaders
from ptune.bench.lama import base_config, macro_means, with_task
from ptune.cli import main
from ptune.errors import PtuneError

OBJECTS = ["Paris", "France", "great", "terrible", "world", "yes", "no", "hello"]
SUBJECTS = ["order", "box", "app", "store", "refund", "service", "delivery", "complaint", "Tweet", "sunday"]


def _jsonl(path: Path, rows: list[dict], newline_at_end: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in rows) + ("\n" if newline_at_end else "")
    path.write_text(text, encoding="utf-8")
    return path


def fake_lama(root: Path) -> Path:
    """Two relations: P1 with train/dev/test, P2 whose test is missing (the ParaRel stand-in is used)."""
    lama = root / "lama"
    facts = [{"sub_label": s, "obj_label": OBJECTS[i % len(OBJECTS)], "predicate_id": "P1"}
             for i, s in enumerate(SUBJECTS)]
    for rel in ("P1", "P2"):
        folder = lama / "fact-retrieval" / "original" / rel
        _jsonl(folder / "train.jsonl", facts)
        _jsonl(folder / "dev.jsonl", facts[:4])
    _jsonl(lama / "fact-retrieval" / "original" / "P1" / "test.jsonl", facts[:6])
    _jsonl(lama / "pararel_trex_lms_vocab" / "P2.jsonl", facts[4:])
    _jsonl(lama / "relations.jsonl", [{"relation": "P1", "template": "[X] is the capital of [Y] ."},
                                      {"relation": "P2", "template": "[X] is a [Y] by profession ."}])
    vocab = {"bert-base-cased": OBJECTS[:-1] + ["other"], "gpt2-xl": ["Ġx"]}
    (lama / "29k-vocab.json").write_text(json.dumps(vocab))
    (lama / "34k-vocab.json").write_text(json.dumps(vocab))
    return lama


# ---------------------------------------------------------------------------------------------------------------
# readers


def test_lama_readers(tmp_path):
    lama = fake_lama(tmp_path)
    table = loaders.read_lama(lama / "fact-retrieval" / "original" / "P1" / "train.jsonl")
    assert len(table) == len(SUBJECTS) and table.rows[0]["sub_label"] == "order"
    assert table.rows[0]["obj_label"] == "Paris"
    files = loaders.lama_relation_files(lama, "P1")
    assert files["test_source"] == "original" and files["test"].name == "test.jsonl"
    files = loaders.lama_relation_files(lama, "P2")
    assert files["test_source"] == "pararel-standin" and files["test"].parent.name == "pararel_trex_lms_vocab"
    assert loaders.list_relations(lama) == ["P1", "P2"]
    assert loaders.vocab_words(lama / "29k-vocab.json")[:2] == ["Paris", "France"]
    with pytest.raises(Exception, match="no vocabulary"):
        loaders.vocab_words(lama / "29k-vocab.json", key="nope")


def test_single_relations_files_without_newline(tmp_path):
    # the shared single_relations/<rel>.jsonl files hold one line with no newline at the end
    folder = tmp_path / "lama" / "single_relations"
    _jsonl(folder / "P108.jsonl", [{"relation": "P108", "template": "[X] works for [Y] .", "label": "employer"}],
           newline_at_end=False)
    _jsonl(folder / "P37.jsonl", [{"relation": "P37", "template": "The official language of [X] is [Y] ."}],
           newline_at_end=False)
    templates = loaders.relation_templates(tmp_path / "lama")
    assert templates["P108"]["template"] == "[X] works for [Y] ."
    assert set(templates) == {"P108", "P37"}


@pytest.mark.parametrize("raw, kind, expected, noted", [
    ("[X] works for [Y] .", "causal", "{sub_label} works for [TARGET]", False),
    ("[X] works for [Y] .", "masked", "{sub_label} works for [TARGET] .", False),
    ("The official language of [X] is [Y] .", "causal", "The official language of {sub_label} is [TARGET]", False),
    ("[X] is a [Y] by profession .", "causal", "{sub_label} is a [TARGET]", True),
    ("[X] is a [Y] by profession .", "masked", "{sub_label} is a [TARGET] by profession .", False),
    ("[Y] participated in the [X] .", "causal", None, True),
    ("[Y] participated in the [X] .", "masked", "[TARGET] participated in the {sub_label} .", False),
])
def test_template_conversion(raw, kind, expected, noted):
    from ptune.template import parse_template

    template, note = loaders.convert_template(raw, kind)
    assert template == expected
    assert bool(note) == noted
    if template is not None:
        parse_template(template).validate(kind=kind, needs_virtual=False)


def test_ptuning_template_shapes():
    assert loaders.ptuning_template((3, 3, 0), "causal") == "[P*3] {sub_label} [P*3] [TARGET]"
    assert loaders.ptuning_template((3, 3, 3), "masked") == "[P*3] {sub_label} [P*3] [TARGET] [P*3]"
    assert loaders.ptuning_template((0, 2, 0), "causal") == "{sub_label} [P*2] [TARGET]"
    with pytest.raises(PtuneError, match="causal"):
        loaders.ptuning_template((3, 3, 3), "causal")
    assert loaders.parse_shape("3,3,0") == (3, 3, 0)
    with pytest.raises(PtuneError):
        loaders.parse_shape("3,3")


def test_fewglue_reader(tmp_path):
    path = _jsonl(tmp_path / "BoolQ" / "train.jsonl", [
        {"question": "is it", "passage": "It is.", "label": True, "idx": 0},
        {"question": "is it not", "passage": "It is.", "label": False, "idx": 1}])
    table = loaders.read_fewglue(path)
    assert [r["label"] for r in table.rows] == ["true", "false"]
    rte = _jsonl(tmp_path / "RTE" / "val.jsonl", [{"premise": "A \u2014 b", "hypothesis": "c", "label": "entailment"}])
    assert loaders.read_fewglue(rte).rows[0]["premise"] == "A \u2014 b"


def test_sst2_reader(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\nit 's a charming journey . \t1\nbleak and desperate \t0\n", encoding="utf-8")
    table = loaders.read_sst2(path)
    assert table.rows == [{"sentence": "it 's a charming journey .", "label": "1"},
                          {"sentence": "bleak and desperate", "label": "0"}]


def test_agnews_reader(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("Unions at Turner say they are 'disappointed'.\tBusiness\n"
                    "SPACE.com - a second\\team of rocketeers.\tSci/Tech\n\n", encoding="utf-8")
    table = loaders.read_agnews(path)
    assert table.columns == ["text", "label"]
    assert [r["label"] for r in table.rows] == ["Business", "Sci/Tech"]
    assert table.rows[1]["text"] == "SPACE.com - a second\\team of rocketeers."
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(Exception, match="line 1"):
        loaders.read_agnews(bad)


def test_trec_reader_latin1(tmp_path):
    path = tmp_path / "train_5500.label"
    path.write_bytes("NUM:dist How far is it from Denver to Aspen ?\n"
                     "HUM:ind Who wrote \u00ab Les Mis\u00e9rables \u00bb ?\n".encode("latin-1"))
    with pytest.raises(Exception):  # ptune's own reader requires UTF-8; ours decodes Latin-1 explicitly
        path.read_bytes().decode("utf-8")
    table = loaders.read_trec(path)
    assert [r["label"] for r in table.rows] == ["NUM", "HUM"]
    assert table.rows[1]["fine"] == "ind"
    assert table.rows[1]["question"] == "Who wrote \u00ab Les Mis\u00e9rables \u00bb ?"


def test_sample_rows_is_seeded():
    from ptune.data.tables import Table

    table = Table("t", ["a"], [{"a": str(i)} for i in range(50)])
    a, b = loaders.sample_rows(table, 8, 1), loaders.sample_rows(table, 8, 1)
    assert a.rows == b.rows and len(a) == 8
    assert loaders.sample_rows(table, None, 1) is table


# ---------------------------------------------------------------------------------------------------------------
# P@1


def test_p_at_1_hand_made(tiny_causal_dir, tmp_path):
    from ptune.session import open_session

    cfg = base_config(str(tiny_causal_dir), dtype="float32", device="cpu")
    session = open_session(with_task(cfg, template="{sub_label} is the capital of [TARGET]"),
                           allow_no_virtual=True)
    single = [w for w in OBJECTS if len(session.task.renderer.target_ids(w)) == 1]
    multi = "Xylophonequartz"  # not one token in the tiny vocabulary
    assert len(single) >= 2 and len(session.task.renderer.target_ids(multi)) > 1
    rows = [{"sub_label": "a", "obj_label": single[0]}, {"sub_label": "b", "obj_label": single[1]},
            {"sub_label": "c", "obj_label": single[0]}, {"sub_label": "d", "obj_label": multi}]
    preds = [{"prediction": single[0]}, {"prediction": single[0]}, {"prediction": single[0]}, {"prediction": multi}]
    m = session.task.metrics(rows, preds)
    # the multi-token object cannot be a hit and is counted apart: 2 hits of the 3 scored rows
    assert m == {"p@1": pytest.approx(2 / 3), "n": 3, "skipped_multi_token": 1}


def test_macro_means():
    results = {"P1": {"manual_p1": 0.2, "ptuning_p1": 0.4, "test_source": "original"},
               "P2": {"manual_p1": 0.0, "ptuning_p1": 0.2, "test_source": "pararel-standin"},
               "P3": {"manual_p1": None, "ptuning_p1": 0.6, "test_source": "original"},
               "P4": {"manual_p1": None, "ptuning_p1": None, "skipped": "no train"}}
    m = macro_means(results)
    assert m["manual_p1"] == pytest.approx(0.1) and m["ptuning_p1"] == pytest.approx(0.3)
    assert m["n_relations"] == 2 and m["n_relations_all"] == 3 and m["ptuning_p1_all"] == pytest.approx(0.4)
    assert m["official_test_only"] == {"manual_p1": 0.2, "ptuning_p1": 0.4, "n_relations": 1}


# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_bench_lama_end_to_end(which, tiny_causal_dir, tiny_masked_dir, tmp_path):
    model_dir = tiny_causal_dir if which == "causal" else tiny_masked_dir
    lama = fake_lama(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "bench", "lama", "--data", str(lama), "--out", str(out), "--relations", "P1,P2", "--vocab", "29k",
        "--model", str(model_dir), "--dtype", "float32", "--device", "cpu", "--epochs", "2", "--batch-size", "4",
        "--eval-every", "2", "--patience", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["kind"] == which
    assert report["ptuning_template"] == ("[P*3] {sub_label} [P*3] [TARGET]" if which == "causal"
                                          else "[P*3] {sub_label} [P*3] [TARGET] [P*3]")
    rels = report["relations"]
    assert set(rels) == {"P1", "P2"}
    assert rels["P1"]["test_source"] == "original" and rels["P2"]["test_source"] == "pararel-standin"
    for e in rels.values():
        assert 0.0 <= e["manual_p1"] <= 1.0 and 0.0 <= e["ptuning_p1"] <= 1.0
        assert e["n_test"] >= 1 and e["n_test"] + e["skipped_multi_token"] + e["n_test_outside_vocab"] <= 6
        assert e["steps"] >= 1
    # "hello" is outside the fake vocabulary: filtered from the test split
    assert rels["P2"]["n_test_outside_vocab"] == 1
    if which == "causal":
        assert "dropped" in rels["P2"]["manual_note"]
        assert rels["P2"]["manual_template"] == "{sub_label} is a [TARGET]"
    else:
        assert rels["P2"]["manual_template"] == "{sub_label} is a [TARGET] by profession ."
    mean = report["mean"]
    assert mean["n_relations"] == 2
    assert mean["manual_p1"] == pytest.approx((rels["P1"]["manual_p1"] + rels["P2"]["manual_p1"]) / 2)
    assert mean["ptuning_p1"] == pytest.approx((rels["P1"]["ptuning_p1"] + rels["P2"]["ptuning_p1"]) / 2)
    md = (out / "results.md").read_text()
    assert "| P1 |" in md and "macro mean" in md
    assert (out / "lama.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_lama_missing_data_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["bench", "lama", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "LAMA data folder not found" in result.output


def test_bench_fewshot_end_to_end(tiny_causal_dir, tmp_path):
    """SST-2-format data through zero-shot and two trained methods on the tiny model."""
    from ptune.bench.fewshot import run_fewshot

    (tmp_path / "sst2").mkdir()
    lines = ["sentence\tlabel"] + [f"{s}\t{l}" for s, l in [
        ("great service today", 1), ("the app crashes when I pay", 0), ("thanks for the quick delivery", 1),
        ("the box was broken", 0), ("hello world", 1), ("I want a refund now", 0)] * 2]
    (tmp_path / "sst2" / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "sst2" / "dev.tsv").write_text("\n".join(lines[:7]) + "\n")
    report = run_fewshot(tmp_path, tmp_path / "out", tasks=["sst2"], seeds=[1, 2], k=4, max_eval=5,
                         methods=["zero_shot", "lstm", "embedding"], model=str(tiny_causal_dir), dtype="float32",
                         device="cpu", epochs=1, batch_size=4, show_progress=False, log=lambda m: None)
    e = report["tasks"]["sst2"]
    assert e["n_eval"] == 5 and e["n_train"] == 4
    assert 0 <= e["zero_shot"]["accuracy"] <= 1
    assert len(e["lstm"]["accuracy"]["runs"]) == 2 and "std" in e["embedding"]["accuracy"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["sst2"].keys() == {"zero_shot", "lstm", "embedding"}
    assert "P-tuning (LSTM)" in (tmp_path / "out" / "results.md").read_text()


def test_bench_fewshot_raft_cross_validation(tiny_causal_dir, tmp_path):
    """A RAFT-format task folder is estimated by cross-validation over its labelled rows."""
    from conftest import ROWS, write_csv

    from ptune.bench.fewshot import run_fewshot

    folder = tmp_path / "raft" / "toy"
    folder.mkdir(parents=True)
    write_csv(folder / "train.csv", [(t, l, i) for i, (t, l) in enumerate(ROWS)], header=("Tweet text", "Label", "ID"))
    (folder / "task.json").write_text(json.dumps({"data_columns": ["Tweet text", "ID"],
                                                  "label_columns": {"Label": ["complaint", "no complaint"]}}))
    report = run_fewshot(tmp_path, tmp_path / "out", tasks=["raft:toy"], seeds=[1],
                         methods=["zero_shot", "mlp", "probe", "embeddings"], folds=2, model=str(tiny_causal_dir), dtype="float32", device="cpu", epochs=1, batch_size=4,
                         show_progress=False, log=lambda m: None)
    e = report["tasks"]["raft:toy"]
    assert e["ptuning_template"] == "[P*4] Tweet text : {Tweet text} [P*2] Label : [TARGET]"
    assert e["zero_shot"]["n"] == len(ROWS) and e["folds"] == 2
    assert len(e["mlp"]["accuracy"]["runs"]) == 2 and 0 <= e["mlp"]["accuracy"]["mean"] <= 1
    assert "probe" not in e and "embeddings" not in e  # no labelled evaluation set: not run, like chosen
    assert "| not run | not run |" in (tmp_path / "out" / "results.md").read_text()
