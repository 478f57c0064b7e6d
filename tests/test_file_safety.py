"""What ptune writes and deletes: an output folder holding a model's or adapter's files is refused before any work,
a save removes only ptune's own stale files, files get the usual mode, and result files appear whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import ROWS, ctrl_c_at_step, tiny_config, write_csv
from ptune import checkpoint
from ptune.cli import main
from ptune.errors import PtuneError

PREFIX = "[P*4] Tweet text : {text} Label : [TARGET]"
VERBALIZER = {"complaint": "complaint", "no complaint": "no complaint"}


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def error_line(code: int, stderr: str) -> str:
    """The one `ptune: error:` line of a failed command (exit 2, no traceback)."""
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("ptune: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden ones too) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A folder that looks like a model's: weights and a config ptune did not write."""
    folder = tmp_path / "some-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights ptune must never touch")
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@pytest.fixture(scope="module")
def prefix_checkpoint(tiny_causal_dir, tmp_path_factory) -> Path:
    """An untrained (seeded) prefix checkpoint, and its PEFT export beside it as ``peft``."""
    from ptune.interop.peft import export_peft
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    root = tmp_path_factory.mktemp("prefix")
    cfg = tiny_config(tiny_causal_dir, task={"template": PREFIX, "verbalizer": VERBALIZER})
    session = open_session(cfg)
    save_inference(session, session.new_model(seed=3), root / "ckpt")
    export_peft(root / "ckpt", root / "peft")
    return root / "ckpt"


def write_config(folder: Path, model_dir: Path, **extra) -> Path:
    cfg = {"model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
           "task": {"template": PREFIX, "label_column": "label"},
           "encoder": {"type": "mlp", "hidden_size": 16},
           "data": {"train": str(write_csv(folder / "train.csv", ROWS)),
                    "dev": str(write_csv(folder / "dev.csv", ROWS[:4]))},
           "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "seed": 0}, **extra}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "cfg.yaml"


# ---------------------------------------------------------------------------------------------------------------
# an output folder holding a model's or adapter's files: refused before any work, nothing touched


def test_train_into_a_model_folder_is_refused_before_the_model_loads(tiny_causal_dir, tiny_data, model_folder,
                                                                    monkeypatch):
    import ptune
    from ptune.training import run

    before = snapshot(model_folder)
    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(PtuneError) as err:
        ptune.train(tiny_config(tiny_causal_dir, tiny_data), model_folder, show_progress=False)
    assert str(model_folder) in str(err.value)
    assert "config.json, model.safetensors" in str(err.value) and "choose a new or empty folder" in str(err.value)
    assert snapshot(model_folder) == before


@pytest.mark.parametrize("command", ["train", "search", "import", "export"])
def test_every_command_writing_a_folder_refuses_a_model_folder(command, tiny_causal_dir, prefix_checkpoint,
                                                                model_folder, tmp_path, monkeypatch):
    from ptune.evaluation import search
    from ptune.training import run

    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("the run started"))
    monkeypatch.setattr(search.SearchPlan, "read", lambda *a, **k: pytest.fail("the search started"))
    sources = {"train": lambda: write_config(tmp_path, tiny_causal_dir),
               "search": lambda: write_config(tmp_path, tiny_causal_dir, search={"space": {"train.lr": [0.01, 0.03]}}),
               "import": lambda: prefix_checkpoint.parent / "peft", "export": lambda: prefix_checkpoint}
    source = sources[command]()
    before = snapshot(model_folder)
    line = error_line(*cli(command, source, "--out", model_folder)[::2])
    assert f"{model_folder} holds config.json, model.safetensors" in line
    assert snapshot(model_folder) == before


@pytest.mark.parametrize("bench", ["lama", "fewshot"])
def test_benchmarks_refuse_a_model_folder(bench, model_folder, tmp_path):
    before = snapshot(model_folder)
    line = error_line(*cli("bench", bench, "--data", tmp_path, "--out", model_folder, "--quiet")[::2])
    assert f"{model_folder} holds config.json, model.safetensors" in line
    assert snapshot(model_folder) == before


def test_the_first_save_refuses_a_model_folder_whichever_caller(model_folder):
    before = snapshot(model_folder)
    with pytest.raises(PtuneError, match="model.safetensors"):
        checkpoint.save_model(model_folder, config={"task": {"template": "[P*1] {x} [TARGET]"}}, labels=None,
                              base={}, encoder_state={"w": torch.zeros(2)}, prompts=torch.zeros(1, 4))
    assert snapshot(model_folder) == before


def test_import_into_the_adapter_folder_is_refused_and_the_adapter_is_intact(prefix_checkpoint, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(prefix_checkpoint.parent / "peft", adapter)
    before = snapshot(adapter)
    line = error_line(*cli("import", adapter, "--out", adapter)[::2])
    assert "is the adapter's own folder" in line and "choose another --out" in line
    assert snapshot(adapter) == before
    line = error_line(*cli("import", adapter, "--out", tmp_path / "x" / ".." / "adapter")[::2])  # spelled otherwise
    assert "is the adapter's own folder" in line and snapshot(adapter) == before


def test_export_replaces_its_own_export_but_not_another_readme(prefix_checkpoint, tmp_path):
    from ptune.interop.peft import export_peft

    out = tmp_path / "peft"
    export_peft(prefix_checkpoint, out)
    (out / "notes.txt").write_text("mine")
    export_peft(prefix_checkpoint, out)  # an earlier export: replaced in place
    assert (out / "notes.txt").read_text() == "mine" and (out / "adapter_config.json").is_file()
    other = tmp_path / "docs"
    other.mkdir()
    (other / "README.md").write_text("someone's notes")
    with pytest.raises(PtuneError, match=r"holds README.md, not from a ptune export"):
        export_peft(prefix_checkpoint, other)
    assert snapshot(other) == {"README.md": b"someone's notes"}


# ---------------------------------------------------------------------------------------------------------------
# saves remove only ptune's own stale files


def test_a_resumed_run_keeps_other_files_and_still_collects_its_own(tiny_causal_dir, tmp_path, monkeypatch):
    cfg = write_config(tmp_path, tiny_causal_dir, train={"epochs": 2, "batch_size": 2, "max_length": 64,
                                                         "seed": 0, "save_every": 1})
    out = tmp_path / "run"
    with ctrl_c_at_step(monkeypatch, 3):
        assert "--resume" in error_line(*cli("train", cfg, "--out", out, "--quiet")[::2])
    others = {"notes.safetensors": b"someone's tensors", "other.txt": b"notes",
              ".notes.txt.abcd1234.tmp": b"another program's temporary file"}
    for name, data in others.items():
        (out / name).write_bytes(data)
    stale = ["encoder-0123456789abcdef.safetensors", ".ptune.json.abcd1234.tmp",
             ".optimizer-0123456789abcdef.safetensors.k2j4_x9z.tmp"]
    for name in stale:
        (out / name).write_bytes(b"left by an earlier save")
    code, stdout, stderr = cli("train", cfg, "--out", out, "--resume", "--quiet")
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 8
    assert {name: (out / name).read_bytes() for name in others} == others
    assert not [name for name in stale if (out / name).exists()]
    named = {e["file"] for m in (checkpoint.MANIFEST, checkpoint.STATE)
             for e in json.loads((out / m).read_text())["files"].values()}
    assert {p.name for p in out.glob("*.safetensors")} == named | {"notes.safetensors"}
    checkpoint.load_model(out)


def test_an_unknown_tensor_file_beside_a_checkpoint_survives_a_save(tmp_path):
    folder = tmp_path / "ckpt"
    args = dict(config={"task": {"template": "[P*1] {x} [TARGET]"}}, labels=None, base={})
    checkpoint.save_model(folder, encoder_state={"w": torch.zeros(2)}, prompts=torch.zeros(1, 4), **args)
    first = {p.name for p in folder.iterdir()}
    (folder / "notes.safetensors").write_bytes(b"mine")
    checkpoint.save_model(folder, encoder_state={"w": torch.ones(2)}, prompts=torch.ones(1, 4), **args)
    assert (folder / "notes.safetensors").read_bytes() == b"mine"
    assert not (first - {checkpoint.MANIFEST}) & {p.name for p in folder.iterdir()}  # the old tensors went


# ---------------------------------------------------------------------------------------------------------------
# the usual file mode


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_files_get_the_usual_mode(tmp_path, umask_022):
    folder = tmp_path / "ckpt"
    checkpoint.save_model(folder, config={"task": {"template": "[P*1] {x} [TARGET]"}}, labels=None, base={},
                          encoder_state={"w": torch.zeros(2)}, prompts=torch.zeros(1, 4))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    checkpoint.save_state(folder, encoder_state={"w": torch.zeros(2)}, optimizer=optimizer, progress={"step": 0})
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}
    assert len(modes) == 5 and set(modes.values()) == {"0o644"}, modes
    os.umask(0o027)
    checkpoint.save_model(folder, config={"task": {"template": "[P*1] {x} [TARGET]"}}, labels=None, base={},
                          encoder_state={"w": torch.ones(2)}, prompts=torch.ones(1, 4))
    assert stat.S_IMODE((folder / checkpoint.MANIFEST).stat().st_mode) == 0o640


# ---------------------------------------------------------------------------------------------------------------
# result files: whole or not at all, never over a model's file


def test_predict_out_is_whole_or_untouched(prefix_checkpoint, tmp_path, monkeypatch, umask_022):
    rows = write_csv(tmp_path / "rows.csv", ROWS[:3])
    out = tmp_path / "preds.jsonl"
    code, _, stderr = cli("predict", prefix_checkpoint, "--data", rows, "--out", out, "--quiet")
    assert code == 0, stderr
    assert len(out.read_text().splitlines()) == 3 and stat.S_IMODE(out.stat().st_mode) == 0o644
    out.write_text("the previous predictions\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write fails midway, before the rename
    assert "No space left on device" in error_line(*cli("predict", prefix_checkpoint, "--data", rows, "--out", out,
                                                        "--quiet")[::2])
    assert out.read_text() == "the previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl", "rows.csv"]  # no temporary file left


def test_cv_out_never_replaces_a_model_file(tiny_causal_dir, model_folder, tmp_path, monkeypatch):
    from ptune.evaluation import cv

    monkeypatch.setattr(cv, "cross_validate", lambda *a, **k: pytest.fail("the folds started"))
    before = snapshot(model_folder)
    cfg = write_config(tmp_path, tiny_causal_dir)
    line = error_line(*cli("cv", cfg, "--out", model_folder / "model.safetensors")[::2])
    assert f"{model_folder / 'model.safetensors'}: a model's or adapter's file" in line
    assert snapshot(model_folder) == before


def test_predict_out_never_replaces_a_model_file(prefix_checkpoint, model_folder, tmp_path):
    rows = write_csv(tmp_path / "rows.csv", ROWS[:3])
    before = snapshot(model_folder)
    line = error_line(*cli("predict", prefix_checkpoint, "--data", rows, "--out", model_folder / "config.json")[::2])
    assert f"{model_folder / 'config.json'}: a model's or adapter's file" in line
    assert snapshot(model_folder) == before
