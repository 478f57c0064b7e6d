import json

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
