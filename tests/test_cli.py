import json

import pytest

import yaml
from click.testing import CliRunner

from conftest import ROWS, write_csv
from ptune.cli import main


def write_config(tmp_path, model_dir, **train):
    cfg = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "task": {"template": "[P*2] {text} [P*2] Label : [TARGET]", "label_column": "label"},
        "encoder": {"type": "mlp", "hidden_size": 16},
        "data": {"train": "train.csv", "dev": "dev.csv"},
        "train": {"epochs": 2, "batch_size": 4, "max_length": 64, **train},
    }
    write_csv(tmp_path / "train.csv", ROWS)
    write_csv(tmp_path / "dev.csv", ROWS[:4])
    write_csv(tmp_path / "new.csv", [(t,) for t, _ in ROWS[:3]], header=("text",))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_eval_predict(tiny_causal_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_causal_dir)
    runner = CliRunner()
    out = tmp_path / "ckpt"
    res = runner.invoke(main, ["train", str(cfg), "--out", str(out), "--set", "train.lr=0.02", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", str(out), "--data", str(tmp_path / "dev.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert set(metrics) >= {"accuracy", "macro_f1", "n"} and metrics["n"] == 4
    res = runner.invoke(main, ["predict", str(out), "--data", str(tmp_path / "new.csv"),
                               "--out", str(tmp_path / "p.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [l["text"] for l in lines] == [t for t, _ in ROWS[:3]]
    assert all(l["prediction"] in ("complaint", "no complaint") and set(l["scores"]) == {"complaint", "no complaint"}
               for l in lines)
    res = runner.invoke(main, ["predict", str(out), "--data", str(tmp_path / "new.csv"), "--top-labels", "1",
                               "--out", str(tmp_path / "top.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    top = [json.loads(l) for l in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert [t["prediction"] for t in top] == [l["prediction"] for l in lines]
    assert all(t["scores"] == {t["prediction"]: l["scores"][t["prediction"]]} for t, l in zip(top, lines))


def test_bad_config_key_is_one_line_with_a_suggestion(tiny_causal_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_causal_dir)
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "o"), "--set", "train.l=0.1"])
    assert res.exit_code == 2
    assert "unknown config key 'train.l'; did you mean train.lr?" in res.output
    assert not (tmp_path / "o").exists()


def test_missing_column_writes_nothing(tiny_causal_dir, tmp_path):
    cfg = write_config(tmp_path, tiny_causal_dir)
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "o"), "--set", "task.label_column=Label"])
    assert res.exit_code == 2
    assert "missing column 'Label'; columns present: 'text', 'label'" in res.output
    assert not (tmp_path / "o").exists()


def test_several_checkpoints_predict_as_an_ensemble(tiny_causal_dir, tmp_path):
    import math

    from ptune.inference import Predictor

    cfg = write_config(tmp_path, tiny_causal_dir)
    runner = CliRunner()
    dirs = []
    for seed in (1, 2):
        out = tmp_path / f"m{seed}"
        res = runner.invoke(main, ["train", str(cfg), "--out", str(out), "--set", f"train.seed={seed}", "--quiet"])
        assert res.exit_code == 0, res.output
        dirs.append(str(out))
    res = runner.invoke(main, ["predict", *dirs, "--data", str(tmp_path / "new.csv"),
                               "--out", str(tmp_path / "p.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    got = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = [{"text": t} for t, _ in ROWS[:3]]
    alone = [Predictor.load(d).predict_rows(rows) for d in dirs]
    for i, line in enumerate(got):
        probs = {}
        for preds in alone:  # each member's label probabilities, normalised over the labels
            z = math.log(sum(math.exp(s) for s in preds[i]["scores"].values()))
            for label, s in preds[i]["scores"].items():
                probs[label] = probs.get(label, 0) + math.exp(s - z) / len(alone)
        assert line["scores"] == {l: pytest.approx(math.log(p), abs=1e-3) for l, p in probs.items()}
        assert line["prediction"] == max(probs, key=probs.get)
    res = runner.invoke(main, ["eval", *dirs, "--data", str(tmp_path / "dev.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 4
    # members must share the labels
    other = write_config(tmp_path, tiny_causal_dir)
    doc = yaml.safe_load(other.read_text())
    doc["task"]["verbalizer"] = {"complaint": "bad", "no complaint": "good", "other": "meh"}
    other.write_text(yaml.safe_dump(doc))
    res = runner.invoke(main, ["train", str(other), "--out", str(tmp_path / "m3"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", dirs[0], str(tmp_path / "m3"), "--data", str(tmp_path / "dev.csv")])
    assert res.exit_code != 0 and "ensemble members must share them" in res.output


def test_one_command_table():
    """Every command is defined in ptune.cli itself, and the serve defaults are the server's own."""
    from ptune.cli import CONNECTION_OPTIONS, SERVE_DEFAULTS
    from ptune.serving.protocol import Limits
    from ptune.serving.server import Connections

    assert set(main.commands) == {"train", "cv", "eval", "predict", "search", "baselines", "demo", "export", "import",
                                  "serve", "bench"}
    assert set(main.commands["bench"].commands) == {"lama", "fewshot"}
    for command in [*main.commands.values(), *main.commands["bench"].commands.values()]:
        assert command.callback.__module__ == "ptune.cli", command.name
    params = {p.name: p.default for p in main.commands["serve"].params}
    defaults = {**vars(Limits()), **vars(Connections())}
    assert SERVE_DEFAULTS == {name: defaults[name] for name in SERVE_DEFAULTS}
    assert {name: params[name] for name in SERVE_DEFAULTS} == SERVE_DEFAULTS
    assert set(CONNECTION_OPTIONS) == set(vars(Connections()))


def test_help_imports_no_command_code():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from ptune.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'ptune.serving.app', 'ptune.bench.lama', "
            "'ptune.bench.fewshot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
