"""Speed levers: ``model.dtype: auto`` on a CPU decided by a measured probe, ``train.gradient_checkpointing`` and
``train.compile`` giving the same loss and gradients, the GGUF hash read from the cache, and the linear head never
running the blocks above its layer. Tiny Llama, CPU."""

import json
import time

import pytest
import torch

from conftest import ROWS, tiny_config
from ptune.data.tables import Table
from ptune.modeling import base as base_module
from ptune.modeling.base import cached_file_sha256, cpu_dtype, file_sha256, probe_cpu_dtype, resolve_dtype
from ptune.modeling.ptuning import checkpoint_blocks
from ptune.session import open_session
from ptune.training.prepare import prepare
from ptune.training.trainer import fit

LABELS = ["complaint", "no complaint"]
CPU = torch.device("cpu")


# -- model.dtype: auto on a CPU ----------------------------------------------------------------------------------

def fake_timings(monkeypatch, seconds: dict) -> list:
    """Make ``matmul_seconds`` answer ``seconds[(dtype, rows)]`` (rows "small" for the gate, "full" otherwise) and
    record its calls; the per-process memo starts empty and the cache folder is a fresh one."""
    calls = []

    def timed(dtype, rows, hidden, width, repeats=3):
        calls.append((dtype, rows))
        return seconds[(dtype, "small" if rows == base_module.GATE_ROWS else "full")]

    monkeypatch.setattr(base_module, "matmul_seconds", timed)
    monkeypatch.setattr(base_module, "_CPU_DTYPES", {})
    return calls


F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("seconds, expected, full_size", [
    # emulated bfloat16 (this kind of CPU: no AVX-512 BF16 or AMX): the small product rules it out
    ({(F32, "small"): 0.001, (BF16, "small"): 0.02}, F32, False),
    # native bfloat16, 3x faster at full size (AMX): chosen
    ({(F32, "small"): 0.001, (BF16, "small"): 0.001, (F32, "full"): 0.03, (BF16, "full"): 0.01}, BF16, True),
    # native but only 1.1x faster: not worth its precision
    ({(F32, "small"): 0.001, (BF16, "small"): 0.001, (F32, "full"): 0.011, (BF16, "full"): 0.01}, F32, True),
])
def test_auto_dtype_on_a_cpu_follows_the_measured_products(monkeypatch, tmp_path, seconds, expected, full_size):
    monkeypatch.setenv("PTUNE_CACHE", str(tmp_path))
    calls = fake_timings(monkeypatch, seconds)
    assert resolve_dtype("auto", CPU, hidden_size=64) == expected
    assert any(rows != base_module.GATE_ROWS for _, rows in calls) == full_size
    # explicit choices are never probed
    assert resolve_dtype("float32", CPU, 64) == F32 and resolve_dtype("bfloat16", CPU, 64) == BF16
    assert len(calls) == (4 if full_size else 2)


def test_the_probe_runs_once_per_process_and_its_answer_is_kept_per_cpu_and_width(monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNE_CACHE", str(tmp_path))
    seconds = {(F32, "small"): 0.001, (BF16, "small"): 0.001, (F32, "full"): 0.03, (BF16, "full"): 0.01}
    calls = fake_timings(monkeypatch, seconds)
    assert cpu_dtype(64) == BF16 and cpu_dtype(64) == BF16
    assert len(calls) == 4  # the second answer came from memory
    kept = json.loads((tmp_path / "cpu_dtype.json").read_text())
    (key, entry), = kept.items()
    assert "torch " + torch.__version__ in key and "hidden 64" in key and entry["dtype"] == "bfloat16"
    # a new process reads the file instead of measuring; another width is measured anew
    calls = fake_timings(monkeypatch, {k: 1.0 for k in seconds})
    assert cpu_dtype(64) == BF16 and not calls
    assert cpu_dtype(128) == F32 and calls


def test_the_real_probe_picks_a_dtype_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNE_CACHE", str(tmp_path))
    start = time.perf_counter()
    result = probe_cpu_dtype(576)
    assert time.perf_counter() - start < 10  # about 0.3 s on a 2-core CPU; generous for a busy machine
    assert result["dtype"] in ("float32", "bfloat16") and result["float32_s"] > 0 and result["bfloat16_s"] > 0
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert result["dtype"] == "float32"  # emulated bfloat16 is never the faster one


def test_the_gguf_hash_is_read_from_the_cache_until_the_file_changes(monkeypatch, tmp_path):
    monkeypatch.setenv("PTUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"weights" * 1000)
    hashed = []
    real = base_module.file_sha256
    monkeypatch.setattr(base_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    first = cached_file_sha256(path)
    assert cached_file_sha256(path) == first == file_sha256(path) and len(hashed) == 1
    path.write_bytes(b"other weights" * 1000)  # a new size (and modification time)
    assert cached_file_sha256(path) == file_sha256(path) != first and len(hashed) == 2


# -- gradient checkpointing and compile: the same loss and gradients -------------------------------------------

def loss_and_gradients(session, seed: int = 3, rows: int = 6) -> tuple[float, list[torch.Tensor]]:
    """One training forward and backward of a fresh model on the first rows; the loss and the encoder's
    gradients."""
    table = Table("t", ["text", "label"], [{"text": t, "label": label} for t, label in ROWS])
    examples, _ = session.task.train_examples(table)
    model = session.new_model(seed=seed)
    if session.cfg.train.gradient_checkpointing:
        model.use_gradient_checkpointing()
    if session.cfg.train.compile:
        model.use_compiled_base()
    model.train()
    total, weight = session.task.make_loss(examples)(model, session.task.batch(examples[:rows], "cpu"))
    loss = total / weight
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.encoder.parameters()]


def block_calls(base) -> tuple[list, list]:
    """Count the forward calls of every transformer block of ``base``: (the counts, the hook handles). Counted as
    they start: a block run again in the backward pass stops once it has recomputed what the gradient needs."""
    layers = base.model.layers
    counts = [0] * len(layers)
    handles = [layer.register_forward_pre_hook(lambda *a, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, layer in enumerate(layers)]
    return counts, handles


@pytest.mark.parametrize("objective", ["lm", "classify"])
def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_loss_and_gradients(tiny_causal_dir,
                                                                                          objective):
    task = {"verbalizer": {label: label for label in LABELS}}
    plain = open_session(tiny_config(tiny_causal_dir, task=task, train={"objective": objective}), label_values=LABELS)
    loss, grads = loss_and_gradients(plain)
    checkpointed = open_session(tiny_config(tiny_causal_dir, task=task, train={
        "objective": objective, "gradient_checkpointing": True}), label_values=LABELS)
    counts, handles = block_calls(checkpointed.base.model)
    loss_c, grads_c = loss_and_gradients(checkpointed)
    assert counts == [2, 2]  # each block ran again in the backward pass: its activations were not kept
    assert loss_c == pytest.approx(loss, rel=1e-6)
    for a, b in zip(grads, grads_c):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads_c)  # the gradient reached the prompt encoder
    # leaving training mode switches the recomputation off: an evaluation forward runs each block once
    model = checkpointed.new_model(seed=3).use_gradient_checkpointing().eval()
    counts[:] = [0, 0]
    with torch.no_grad():
        model.loss(checkpointed.task.batch(checkpointed.task.train_examples(
            Table("t", ["text", "label"], [{"text": ROWS[0][0], "label": ROWS[0][1]}]))[0], "cpu"))
    assert counts == [1, 1]
    for h in handles:
        h.remove()


def test_checkpointing_follows_the_model_that_last_changed_mode(tiny_causal_dir):
    session = open_session(tiny_config(tiny_causal_dir), label_values=LABELS)
    from torch.distributed._composable import checkpoint

    blocks = list(session.base.model.model.layers)
    checkpointed = session.new_model().use_gradient_checkpointing()
    checkpointed.train()
    assert all(checkpoint.state(b).enable_hook for b in blocks)
    session.new_model().train()  # another model over the same base, without checkpointing
    assert not any(checkpoint.state(b).enable_hook for b in blocks)
    assert checkpoint_blocks(session.base.model, False) == 2


@pytest.mark.parametrize("model, task", [
    ("causal", {}),
    ("causal", {"head": "linear", "head_layer": 1}),  # the forward pass stops at block 1
    ("masked", {"template": "[P*2] Tweet text : {text} [P*2] Label : [MASK] ."}),
])
def test_a_checkpointed_training_run_gives_the_same_history(tiny_causal_dir, tiny_masked_dir, tiny_data, model,
                                                             task):
    folder = tiny_causal_dir if model == "causal" else tiny_masked_dir
    histories = []
    for on in (False, True):
        session, train, dev = prepare(tiny_config(folder, tiny_data, task=task, train={"gradient_checkpointing": on}))
        _, progress = fit(session, train, dev, show_progress=False)
        histories.append([round(h["loss"], 5) for h in progress.history if h["kind"] == "train"])
    assert histories[0] == histories[1] and len(histories[0]) == 4


# -- the linear head ----------------------------------------------------------------------------------------------

def test_the_linear_head_never_runs_the_blocks_above_its_layer(tiny_causal_dir, tiny_data):
    session, train, dev = prepare(tiny_config(tiny_causal_dir, tiny_data, task={"head": "linear", "head_layer": 1}))
    counts, handles = block_calls(session.base.model)
    head_calls = []
    head = session.base.model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1))
    model, progress = fit(session, train, dev, show_progress=False)  # fits the head, trains, evaluates, refits
    trained = counts[:]
    predictions = session.predict(model, [{"text": text} for text, _ in ROWS])
    for h in handles + [head]:
        h.remove()
    assert progress.step == 4 and len(predictions) == len(ROWS)
    assert trained[0] > 0 and counts[0] > trained[0]  # block 1 ran in training and in prediction
    assert counts[1] == 0 and not head_calls  # block 2 and the LM head never ran


def inductor_works() -> bool:
    """Whether torch.compile's default backend (inductor, which needs a C++ compiler on a CPU) runs here."""
    try:
        double = torch.compile(lambda x: x * 2 + 1, dynamic=True)
        return torch.equal(double(torch.ones(3)), torch.full((3,), 3.0))
    except Exception:  # noqa: BLE001  (any failure to compile means: skip)
        return False


def test_compiled_training_gives_the_same_losses(tiny_causal_dir, tiny_data, monkeypatch):
    if not inductor_works():
        pytest.skip("torch.compile's inductor backend does not run here")
    real, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or real(fn, **kw))
    histories = []
    for on in (False, True):
        session, train, dev = prepare(tiny_config(tiny_causal_dir, tiny_data, train={"compile": on}))
        _, progress = fit(session, train, dev, show_progress=False)
        histories.append([h["loss"] for h in progress.history if h["kind"] == "train"])
        assert compiled == ([{"dynamic": True}] if on else [])
    assert len(histories[0]) == 4  # two epochs of two batches of different lengths
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)
