"""Data-parallel training through Accelerate: two CPU processes (gloo on 127.0.0.1) must train the same prompt table
as one process with the same global batch. Deselect the launching tests with ``-m "not distributed"``."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROWS, tiny_config, write_csv
from ptune import checkpoint
from ptune.config import config_from_dict
from ptune.errors import ConfigError
from ptune.training.prepare import prepare
from ptune.training.run import train
from ptune.training.trainer import fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg_path, out, processes=2):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: no network is needed, or touched
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "ptune", "train", str(cfg_path), "--out", str(out), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
def test_two_processes_train_the_same_prompts_as_one(tiny_causal_dir, tmp_path):
    # 9 rows in batches of 4: the last batch has one row, so one process gets an empty shard and must still join
    data = {"train": str(write_csv(tmp_path / "train.csv", ROWS + [("the box was late", "complaint")])),
            "dev": str(write_csv(tmp_path / "dev.csv", ROWS[:4]))}
    cfg = tiny_config(tiny_causal_dir, data)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    single = train(cfg, tmp_path / "one", show_progress=False)
    done = _launch(tmp_path / "cfg.yaml", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    _, enc1, prompts1 = checkpoint.load_model(tmp_path / "one")
    _, enc2, prompts2 = checkpoint.load_model(tmp_path / "two")
    assert torch.allclose(prompts1, prompts2, atol=1e-5), (prompts1 - prompts2).abs().max()
    for k in enc1:  # Adam magnifies float noise in the tiniest gradients a little; the table above is what counts
        assert torch.allclose(enc1[k], enc2[k], atol=1e-3), k
    hist1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    hist2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    loss1 = [h["loss"] for h in hist1 if h["kind"] == "train"]
    loss2 = [h["loss"] for h in hist2 if h["kind"] == "train"]
    assert len(loss1) == len(loss2) == single["steps"] == 6  # the global batch, and so the step count, is the same
    assert loss1 == pytest.approx(loss2, abs=1e-5)  # the logged loss is the global batch's, on every process
    assert [h["kind"] for h in hist1] == [h["kind"] for h in hist2]  # dev evaluated on the main process, same points


@pytest.mark.distributed
def test_batch_size_must_divide_among_processes(tiny_causal_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"batch_size": 3, "epochs": 1})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    done = _launch(tmp_path / "cfg.yaml", tmp_path / "out")
    assert done.returncode != 0
    assert "train.batch_size (3) must be divisible by the number of processes (2)" in done.stderr
    assert not (tmp_path / "out").exists()


def test_grad_accum_and_mixed_precision_are_checked_and_run(tiny_causal_dir, tiny_data):
    for key, value in (("grad_accum", 0), ("mixed_precision", "fp8")):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            config_from_dict({"train": {key: value}})
    # 8 rows, batches of 2, 2 batches per optimizer step: 2 steps an epoch
    cfg = tiny_config(tiny_causal_dir, tiny_data, train={"batch_size": 2, "grad_accum": 2, "epochs": 1,
                                                         "mixed_precision": "bf16"})
    session, tr, _ = prepare(cfg)
    _, prog = fit(session, tr, None, show_progress=False)
    losses = [h["loss"] for h in prog.history if h["kind"] == "train"]
    assert prog.step == 2 and len(losses) == 2 and all(0 < v < 50 for v in losses)
