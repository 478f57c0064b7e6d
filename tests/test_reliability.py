"""Reliability: bad input gets one clear line and writes nothing; faults (SIGKILL, Ctrl-C, NaN, damaged files) lose
nothing; checkpoints load without unpickling and only onto the base model they were trained on.

Each case here is a row of the README's "Reliability" table."""

import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import ROWS, tiny_config, write_csv
from ptune import checkpoint
from ptune.cli import main
from ptune.errors import CheckpointError, ConfigError, DataError, PtuneError
from ptune.inference import Predictor
from ptune.session import open_session
from ptune.training.run import train

train_module = importlib.import_module("ptune.training.trainer")
TEMPLATE = "[P*2] {text} [P*2] Label : [TARGET]"
LONG_TEXT = " ".join(["my order arrived late and the box was broken"] * 12)


def write_setup(folder: Path, model_dir: Path, *, train_rows=ROWS, epochs=2, batch_size=4, **train_extra) -> Path:
    cfg = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "task": {"template": TEMPLATE, "label_column": "label"},
        "encoder": {"type": "mlp", "hidden_size": 16},
        "data": {"train": "train.csv", "dev": "dev.csv"},
        "train": {"epochs": epochs, "batch_size": batch_size, "max_length": 64, "seed": 0, **train_extra},
    }
    write_csv(folder / "train.csv", train_rows)
    write_csv(folder / "dev.csv", ROWS[:4])
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "cfg.yaml"


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def assert_one_line_error(code, stderr, pattern):
    """Exit 2, one `ptune: error:` line that matches, and no traceback."""
    assert code == 2, stderr
    lines = [l for l in stderr.splitlines() if l.startswith("ptune: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Bad data: one line naming what and where, exit 2, nothing written to --out


BAD_DATA = [
    ("missing file", None, ["data.train=nope.csv"], r"nope\.csv: file not found"),
    ("a folder", None, ["data.train=."], r"is a folder, expected a data file"),
    ("unknown format", ("train.xlsx", b"x"), ["data.train=train.xlsx"], r"train\.xlsx: unknown data format '\.xlsx'"),
    ("empty file", ("train.csv", b""), [], r"train\.csv: empty file"),
    ("header only", ("train.csv", b"text,label\n"), [], r"train\.csv: no data rows"),
    ("missing column", None, ["task.label_column=Label"],
     r"missing column 'Label'; columns present: 'text', 'label'"),
    ("empty field", ("train.csv", b"text,label\nhello,complaint\nthanks,no complaint\n  ,complaint\n"), [],
     r"train\.csv: row 3: field 'text' is empty"),
    ("label not in verbalizer", ("train.csv", b"text,label\nhello,complaint\nthanks,maybe\n"),
     ["task.verbalizer={complaint: complaint, no complaint: fine}"],
     r"train\.csv: row 2: label 'maybe' is not in the verbalizer; known labels: 'complaint', 'no complaint'"),
    ("dev label unseen in train", ("dev.csv", b"text,label\nhello,complaint\nthanks,other\n"), [],
     r"dev\.csv: row 2: label 'other' is not in the verbalizer"),
    ("non-UTF-8 byte", ("train.csv", b"text,label\ncaf\xe9,complaint\n"), [],
     r"train\.csv: not valid UTF-8 at byte offset 14 \(line 2\)"),
    ("non-UTF-8 after a BOM", ("train.csv", b"\xef\xbb\xbftext,label\ncaf\xe9,complaint\n"), [],
     r"not valid UTF-8 at byte offset 17 \(line 2\)"),  # the offset counts the BOM's 3 bytes
    ("ragged row", ("train.csv", b"text,label\na,complaint\nb,c,d\n"), [],
     r"row 2 \(line 3\) has 3 fields, the header has 2"),
    ("bad JSONL line", ("train.jsonl", b'{"text": "a", "label": "complaint"}\n{"text": \n'),
     ["data.train=train.jsonl"], r"train\.jsonl: line 2: not valid JSON"),
]


@pytest.mark.parametrize("case, file, sets, message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line_exit_2_and_writes_nothing(tiny_causal_dir, tmp_path, case, file, sets, message):
    cfg = write_setup(tmp_path, tiny_causal_dir)
    if file:
        (tmp_path / file[0]).write_bytes(file[1])
    args = ["train", cfg, "--out", tmp_path / "out", "--quiet"] + [a for s in sets for a in ("--set", s)]
    code, _, stderr = cli(*args)
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "out").exists()


def test_long_rows_are_truncated_in_data_fields_only_and_reported(tiny_causal_dir, tmp_path):
    rows = ROWS + [(LONG_TEXT, "complaint")]
    cfg = write_setup(tmp_path, tiny_causal_dir, train_rows=rows, epochs=1)
    code, _, stderr = cli("train", cfg, "--out", tmp_path / "out", "--set", "train.max_length=24", "--quiet")
    assert code == 0, stderr
    assert "note: 1 of 9 training rows have data fields truncated to fit 24 tokens" in stderr
    write_csv(tmp_path / "new.csv", [("hello",), (LONG_TEXT,)], header=("text",))
    code, _, stderr = cli("predict", tmp_path / "out", "--data", tmp_path / "new.csv", "--out", tmp_path / "p.jsonl",
                          "--quiet")
    assert code == 0, stderr
    assert "note: 1 of 2 rows in" in stderr and "truncated to fit 24 tokens" in stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2


def test_truncation_keeps_virtual_tokens_and_target_and_respects_the_models_context(tiny_causal_dir):
    # train.max_length 1000 is more than the tiny model's 256 positions: the model's context wins
    cfg = tiny_config(tiny_causal_dir, train={"max_length": 1000})
    renderer = open_session(cfg, label_values=["complaint", "no complaint"]).task.renderer
    assert renderer.max_length == 256
    target = renderer.target_ids("no complaint")
    short = renderer.encode({"text": "hello"}, target)
    long = renderer.encode({"text": " ".join([LONG_TEXT] * 5)}, target)
    assert long.truncated and not short.truncated and len(long) == 256
    assert sum(v >= 0 for v in long.virtual_index) == sum(v >= 0 for v in short.virtual_index) == 4
    assert long.labels[-len(target):] == target and long.input_ids[-len(target):] == target
    # everything after the data field (virtual run, anchor text, target) is the same as in the short row
    tail = len(short) - short.virtual_index.index(2)
    assert long.input_ids[-tail:] == short.input_ids[-tail:]
    assert long.virtual_index[-tail:] == short.virtual_index[-tail:]


def test_unknown_format_option_and_missing_output_folder_are_one_line(tiny_causal_dir, tmp_path, trained):
    write_csv(tmp_path / "new.csv", [("hello",)], header=("text",))
    code, _, stderr = cli("predict", trained, "--data", tmp_path / "new.csv", "--format", "xml", "--out",
                          tmp_path / "p.jsonl")
    assert_one_line_error(code, stderr, r"unknown data format 'xml'")
    code, _, stderr = cli("predict", trained, "--data", tmp_path / "new.csv", "--out",
                          tmp_path / "no" / "such" / "p.jsonl", "--quiet")
    assert_one_line_error(code, stderr, r"No such file or directory")


def test_eval_data_with_an_unknown_label_is_one_line(trained, tmp_path):
    write_csv(tmp_path / "gold.csv", [("hello", "complaint"), ("thanks", "praise")])
    code, _, stderr = cli("eval", trained, "--data", tmp_path / "gold.csv", "--quiet")
    assert_one_line_error(code, stderr, r"gold\.csv: row 2: label 'praise' is not in the verbalizer; known labels: "
                                        r"'complaint', 'no complaint'")


# ---------------------------------------------------------------------------------------------------------------
# Bad config


BAD_CONFIG = [
    ("unknown key", "train.l=0.1", r"unknown config key 'train\.l'; did you mean train\.lr\?"),
    ("unknown section", "trian.lr=0.1", r"unknown config key 'trian'; did you mean train\?"),
    ("wrong type", "train.batch_size=abc", r"train\.batch_size: expected int, got str 'abc'"),
    ("lr zero", "train.lr=0", r"train\.lr must be > 0"),
    ("lr negative", "train.lr=-1e-3", r"train\.lr must be > 0"),
    ("lr not a number", "train.lr=.nan", r"train\.lr must be > 0 and finite, got nan"),
    ("batch 0", "train.batch_size=0", r"train\.batch_size must be >= 1, got 0"),
    ("bad choice", "encoder.type=gru", r"encoder\.type must be one of lstm, mlp, embedding"),
    ("more virtual tokens than max_length", "task.template=[P*70] {text} [TARGET]",
     r"task\.template has 70 virtual tokens but train\.max_length is 64"),
    ("more virtual tokens than the model's context", "task.template=[P*300] {text} [TARGET]",
     r"task\.template has 300 virtual tokens .* more than fit in 256 tokens \(train\.max_length, capped at the "
     r"model's context\)"),
    ("template without target", "task.template=[P*2] {text} Label :", r"names no target"),
    ("template with text after the target", "task.template=[P*2] {text} [TARGET] thanks",
     r"the target must come last for a causal LM"),
    ("template naming an unknown column", "task.template=[P*2] {tweet} [TARGET]",
     r"names field \{tweet\} but the data has no column 'tweet'; columns present: 'text', 'label'"),
    ("template with an unbalanced brace", "task.template=[P*2] {text [TARGET]", r"unbalanced '\{' at character 6"),
    ("template without virtual tokens", "task.template={text} Label : [TARGET]", r"has no virtual tokens"),
]


@pytest.mark.parametrize("case, setting, message", BAD_CONFIG, ids=[c[0] for c in BAD_CONFIG])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tiny_causal_dir, tmp_path, case, setting, message):
    cfg = write_setup(tmp_path, tiny_causal_dir)
    if "300 virtual" in case or "context" in case:
        setting_extra = ["--set", "train.max_length=1000"]
    else:
        setting_extra = []
    code, _, stderr = cli("train", cfg, "--out", tmp_path / "out", "--set", setting, *setting_extra, "--quiet")
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "cfg.yaml").write_text("train:\n  lr: [1, 2\n  epochs: 3\n")
    code, _, stderr = cli("train", tmp_path / "cfg.yaml", "--out", tmp_path / "out")
    assert_one_line_error(code, stderr, r"cfg\.yaml: not valid YAML")


# ---------------------------------------------------------------------------------------------------------------
# Faults


def _run_ptune(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "ptune", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _progress(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "state.json").read_text())["progress"]
    except (OSError, ValueError, KeyError):
        return None


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_causal_dir, tmp_path):
    rows = [(f"{t} {i}", label) for i in range(2) for t, label in ROWS]  # 16 rows, batch 2: 8 steps an epoch
    cfg = write_setup(tmp_path, tiny_causal_dir, train_rows=rows, epochs=2, batch_size=2, save_every=1)
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = _run_ptune("train", cfg, "--out", full, "--quiet")  # the same command, not killed, side by side
    victim = _run_ptune("train", cfg, "--out", cut, "--quiet")
    deadline = time.monotonic() + 240
    while True:
        p = _progress(cut)
        if p and p["step"] >= 3 and p["step_in_epoch"] > 0 and not p["done"]:
            break
        assert victim.poll() is None, "the run ended before it could be killed: " + victim.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = _progress(cut)
    assert 0 < killed_at["step_in_epoch"] < 8 and killed_at["step"] < 16  # mid-epoch, before the end

    resumed = _run_ptune("train", cfg, "--out", cut, "--resume", "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads(out)["steps"] == 16
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    _, enc_full, table_full = checkpoint.load_model(full)
    _, enc_cut, table_cut = checkpoint.load_model(cut)
    assert torch.equal(table_full, table_cut)
    assert all(torch.equal(enc_full[k], enc_cut[k]) for k in enc_full)
    losses = [[h["loss"] for h in _history(d) if h["kind"] == "train"] for d in (full, cut)]
    assert losses[0] == losses[1] and len(losses[0]) == 16
    assert not list(cut.glob(".*.tmp"))  # temp files of the killed write are cleaned up


def _history(folder):
    return json.loads((folder / "state.json").read_text())["progress"]["history"]


def test_ctrl_c_saves_a_whole_step_and_resume_equals_an_uninterrupted_run(tiny_causal_dir, tiny_data, tmp_path,
                                                                           monkeypatch):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"epochs": 2})  # 2 steps an epoch
    train(cfg, tmp_path / "full", show_progress=False)
    real, sent = train_module.lr_factor, []

    def ctrl_c_during_step_2(step, total, warmup):
        if step == 2 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, in the middle of a step
        return real(step, total, warmup)

    monkeypatch.setattr(train_module, "lr_factor", ctrl_c_during_step_2)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(PtuneError, match=r"interrupted at step 3; state saved; resume with: .*--resume"):
        train(cfg, tmp_path / "cut", show_progress=False)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    progress = _progress(tmp_path / "cut")  # the step under way was finished, then saved: mid-epoch 2
    assert progress["step"] == 3 and progress["step_in_epoch"] == 1
    with pytest.raises(PtuneError, match="already holds a checkpoint"):  # a fresh run would discard that state
        train(cfg, tmp_path / "cut", show_progress=False)
    train(cfg, tmp_path / "cut", resume=True, show_progress=False)
    assert torch.equal(checkpoint.load_model(tmp_path / "full")[2], checkpoint.load_model(tmp_path / "cut")[2])


def test_nan_loss_stops_with_exit_2_and_keeps_the_last_good_checkpoint(tiny_causal_dir, tmp_path, monkeypatch):
    cfg = write_setup(tmp_path, tiny_causal_dir, epochs=3, save_every=1)  # 2 steps an epoch
    from ptune.modeling.ptuning import PTuningModel

    real, calls = PTuningModel.token_logprobs, []

    def nan_on_4th_step(self, batch):  # the training loss reads these once a step
        calls.extend([1] if self.training else [])
        logp, mask = real(self, batch)
        return (logp * float("nan") if len(calls) == 4 else logp), mask

    monkeypatch.setattr(PTuningModel, "token_logprobs", nan_on_4th_step)
    out = tmp_path / "out"
    code, _, stderr = cli("train", cfg, "--out", out, "--quiet")
    assert_one_line_error(code, stderr, r"loss became nan at step 3; stopped; the last good checkpoint is kept in")
    assert _progress(out)["step"] == 3
    meta, _, table = checkpoint.load_model(out)  # the best after epoch 1, verified by its checksums
    assert meta["training"]["step"] == 2 and torch.isfinite(table).all()
    monkeypatch.setattr(PTuningModel, "token_logprobs", real)
    code, stdout, stderr = cli("train", cfg, "--out", out, "--resume", "--quiet")
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 6


def test_infinite_gradient_stops_before_the_weights_change_and_writes_nothing(tiny_causal_dir, tiny_data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(float("inf")))
    with pytest.raises(PtuneError, match=r"gradient norm became inf at step 0; stopped; the last good checkpoint"):
        train(tiny_config(tiny_causal_dir, tiny_data), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_resume_without_state_is_refused(tiny_causal_dir, tmp_path):
    cfg = write_setup(tmp_path, tiny_causal_dir)
    code, _, stderr = cli("train", cfg, "--out", tmp_path / "none", "--resume")
    assert_one_line_error(code, stderr, r"holds no training state to resume from")
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def trained(tiny_causal_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    cfg = write_setup(folder, tiny_causal_dir, epochs=1)
    code, _, stderr = cli("train", cfg, "--out", folder / "ckpt", "--quiet")
    assert code == 0, stderr
    return folder / "ckpt"


def _copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "ckpt"))


def _damage_truncate(folder):
    path = next(folder.glob("prompts-*.safetensors"))
    path.write_bytes(path.read_bytes()[:-7])
    return r"prompts-\w+\.safetensors: checksum mismatch \(the file is truncated or corrupted\)"


def _damage_flip(folder):
    path = next(folder.glob("encoder-*.safetensors"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return r"encoder-\w+\.safetensors: checksum mismatch"


def _damage_delete(folder):
    next(folder.glob("prompts-*.safetensors")).unlink()
    return r"missing \(the checkpoint is incomplete\)"


def _damage_manifest(folder):
    path = folder / "ptune.json"
    path.write_bytes(path.read_bytes()[:40])
    return r"ptune\.json: corrupted manifest"


def _damage_valid_checksum_bad_content(folder):
    # a file whose checksum the manifest agrees with, but that is not safetensors: still refused, not a crash
    import hashlib

    meta = json.loads((folder / "ptune.json").read_text())
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    (folder / meta["files"]["prompts"]["file"]).write_bytes(junk)
    meta["files"]["prompts"]["sha256"] = hashlib.sha256(junk).hexdigest()
    (folder / "ptune.json").write_text(json.dumps(meta))
    return r"not a valid safetensors file"


def _damage_path_escape(folder):
    meta = json.loads((folder / "ptune.json").read_text())
    meta["files"]["encoder"]["file"] = "../../outside.safetensors"
    (folder / "ptune.json").write_text(json.dumps(meta))
    return r"names '\.\./\.\./outside\.safetensors', not a tensor file of this folder"


DAMAGE = [_damage_truncate, _damage_flip, _damage_delete, _damage_manifest, _damage_valid_checksum_bad_content,
          _damage_path_escape]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__[8:] for d in DAMAGE])
def test_damaged_checkpoint_is_refused_with_one_line(trained, tmp_path, damage):
    folder = _copy(trained, tmp_path)
    message = damage(folder)
    with pytest.raises(CheckpointError, match=message):
        Predictor.load(folder)
    write_csv(tmp_path / "new.csv", [("hello",)], header=("text",))
    code, _, stderr = cli("predict", folder, "--data", tmp_path / "new.csv", "--out", tmp_path / "p.jsonl")
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "p.jsonl").exists()


def test_damaged_training_state_is_refused_on_resume(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    next(folder.glob("optimizer-*.safetensors")).write_bytes(b"\0" * 64)
    code, _, stderr = cli("train", trained.parent / "cfg.yaml", "--out", folder, "--resume", "--quiet")
    assert_one_line_error(code, stderr, r"optimizer-\w+\.safetensors: checksum mismatch")


# ---------------------------------------------------------------------------------------------------------------
# Loading safety


def test_checkpoints_load_without_unpickling(trained, tmp_path, monkeypatch):
    folder = _copy(trained, tmp_path)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "read"}))  # a stray pickle is never touched

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    meta, encoder, table = checkpoint.load_model(folder)
    assert table.shape == (4, 32) and encoder
    opt = torch.optim.AdamW([torch.nn.Parameter(v.clone()) for v in encoder.values()])
    _, progress = checkpoint.load_state(folder, opt)
    assert progress["done"]


def _other_base(tiny_causal_dir: Path, tmp_path: Path, **changes) -> Path:
    """A base-model folder with a changed config.json and no weights at all: if ptune touched weights, it would fail
    with a different error."""
    folder = tmp_path / "other-base"
    folder.mkdir()
    for f in tiny_causal_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    config = json.loads((folder / "config.json").read_text())
    config.update({k: config[k] + v for k, v in changes.items()})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 16}, r"trained on a base model with hidden_size 32, but .* has 48"),
    ({"vocab_size": 1}, r"trained on a base model with vocab_size \d+, but .* has \d+"),
    ({"num_hidden_layers": 1}, r"was trained on .* \(config_sha256 \w+\), not on"),
], ids=["hidden size", "vocabulary", "identity"])
def test_checkpoint_for_another_base_is_refused_before_any_weight_loads(trained, tiny_causal_dir, tmp_path,
                                                                         monkeypatch, changes, message):
    import transformers

    other = _other_base(tiny_causal_dir, tmp_path, **changes)

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the identity check")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", no_weights)
    with pytest.raises(CheckpointError, match=message):
        Predictor.load(trained, model_override=str(other))


def test_config_errors_from_the_library(tiny_causal_dir):
    from ptune.config import config_from_dict

    with pytest.raises(ConfigError, match="train.grad_clip must be >= 0"):
        config_from_dict({"train": {"grad_clip": -1}})
    with pytest.raises(ConfigError, match=r"task.template has 8 virtual tokens but train.max_length is 8"):
        config_from_dict({"task": {"template": "[P*8] {text} [TARGET]"}, "train": {"max_length": 8}})
    with pytest.raises(DataError, match="file not found"):
        from ptune.data.tables import read_table

        read_table("/nonexistent/x.csv")
