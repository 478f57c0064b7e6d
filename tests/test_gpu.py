"""The GPU path. On any machine: what ``auto`` picks (device, dtype, attention kernel, loss scaling) and how batches
reach the GPU, with CUDA mocked. On a CUDA machine only (marked ``gpu``, skipped elsewhere): the architecture
matrix's checks in bfloat16 (float16 where the GPU lacks it) for a few families, behind shallow prompts and deep ones
(where the family takes them), and a short training run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import FAMILIES, ROWS, FamilyZoo, greedy_without_cache, until_eos
from ptune.config import ModelConfig, TrainConfig
from ptune.data.render import Encoded, collate
from ptune.data.tables import Table
from ptune.modeling.base import attention_implementation, load_base, loss_scaling, resolve_device, resolve_dtype

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_auto_dtype_on_a_gpu_is_bfloat16_where_it_has_it_else_float16_with_loss_scaling(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", CUDA) == torch.float16
    assert resolve_dtype("float32", CUDA) == torch.float32 and resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert loss_scaling(torch.float16) and not loss_scaling(torch.bfloat16) and not loss_scaling(torch.float32)


def test_attention_is_flash_attention_2_on_a_gpu_where_installed_and_supported_else_sdpa(monkeypatch):
    from transformers import BloomForCausalLM, Gemma2ForCausalLM, LlamaForCausalLM, T5ForConditionalGeneration

    real = importlib.util.find_spec

    def flash_installed(installed: bool):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: (
            (object() if installed else None) if name == "flash_attn" else real(name, *a, **k)))

    flash_installed(True)
    assert attention_implementation(LlamaForCausalLM, CUDA, torch.bfloat16) == "flash_attention_2"
    assert attention_implementation(Gemma2ForCausalLM, CUDA, torch.float16) == "flash_attention_2"
    assert attention_implementation(LlamaForCausalLM, CUDA, torch.float32) == "sdpa"  # FlashAttention: 16-bit only
    assert attention_implementation(LlamaForCausalLM, CPU, torch.bfloat16) == "sdpa"
    assert attention_implementation(T5ForConditionalGeneration, CUDA, torch.bfloat16) == "sdpa"  # no FA2 in T5
    assert attention_implementation(BloomForCausalLM, CUDA, torch.bfloat16) is None  # neither: eager attention
    flash_installed(False)
    assert attention_implementation(LlamaForCausalLM, CUDA, torch.bfloat16) == "sdpa"


def test_the_base_model_loads_with_the_chosen_attention(tiny_causal_dir, monkeypatch):
    from ptune.modeling import base as base_module

    cfg = ModelConfig(name_or_path=str(tiny_causal_dir), dtype="float32", device="cpu")
    assert load_base(cfg).model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(base_module, "attention_implementation", lambda model_class, device, dtype: "eager")
    assert load_base(cfg).model.config._attn_implementation == "eager"  # the choice is what loads


def test_batches_reach_a_gpu_through_pinned_memory(monkeypatch):
    moves = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: moves.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, **k: moves.append((str(device), k)) or self)
    rows = [Encoded([5, 6, 7], [0, -1, -1], [-100, -100, 7]), Encoded([5, 7], [0, -1], [-100, 7])]
    batch = collate(rows, 0, "left", device="cuda")
    assert moves == ["pin", ("cuda", {"non_blocking": True})] * len(batch)
    moves.clear()
    collate(rows, 0, "left", device="cpu")
    assert "pin" not in moves  # pinning is for host-to-GPU copies only


def test_a_float16_model_on_a_gpu_trains_with_the_loss_scaler_and_no_autocast(monkeypatch):
    import accelerate
    from accelerate.utils import AutocastKwargs

    from ptune.training.distributed import make_accelerator

    made = []
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: made.append(kwargs) or kwargs)
    for dtype in (torch.float16, torch.bfloat16):
        make_accelerator(TrainConfig(), CUDA, dtype)
    make_accelerator(TrainConfig(mixed_precision="bf16"), CUDA, torch.float16)  # the user's choice stands
    fp16, bf16, chosen = made
    assert fp16["mixed_precision"] == "fp16"
    assert [h.to_kwargs() for h in fp16["kwargs_handlers"]] == [AutocastKwargs(enabled=False).to_kwargs()]
    assert bf16["mixed_precision"] == "no" and not bf16["kwargs_handlers"]
    assert chosen["mixed_precision"] == "bf16"


# ---------------------------------------------------------------------------------------------------------------
# on a CUDA GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_FAMILIES = ["llama", "gpt2", "bloom", "mistral", "gemma2", "bert", "t5"]  # RoPE, absolute, ALiBi, windows, ...
GPU_CAUSAL = [f for f in GPU_FAMILIES if FAMILIES[f][0] == "causal"]
GPU_GENERATIVE = [f for f in GPU_FAMILIES if FAMILIES[f][0] != "masked"]
GPU_DEEP = [f for f in GPU_CAUSAL if "sliding_window" not in FAMILIES[f][2]]  # the families that take a deep prompt
PROMPTS = [(f, "shallow") for f in GPU_FAMILIES] + [(f, "deep") for f in GPU_DEEP]
TEXTS = ["hello", "great service today",
         "my order arrived late and the box was broken , the app crashes when I pay and I want a refund now"]
ROWS_IN = [{"text": t} for t in TEXTS]
HALF_ATOL = 0.1  # label log-probabilities in bfloat16: steps of about 0.4 % of the activations
CLEAR_GAP = 0.5  # generation: a step whose two best logits are this far apart cannot flip under rounding


@pytest.fixture(scope="module")
def gpu_zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("gpu-families"), device="cuda", dtype="auto")


def gpu_session(zoo: FamilyZoo, family: str, prompt: str = "shallow", **task):
    """A session on the GPU with the template's virtual tokens, and with ``prompt="deep"`` a 3-token deep prompt
    (keys and values at every layer) as well."""
    return zoo.session(family, encoder={"deep_tokens": 3} if prompt == "deep" else None, **task)


def gpu_scores(session, model, rows) -> torch.Tensor:
    with torch.inference_mode():
        return session.task.scores(model, rows, 8, session.device).float()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", GPU_FAMILIES)
def test_gpu_loads_in_half_precision_with_fused_attention_and_batches_on_the_gpu(gpu_zoo, family):
    s = gpu_zoo.session(family)
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert s.device.type == "cuda" and s.base.model.dtype == half
    supported = attention_implementation(type(s.base.model), s.device, half)
    assert s.base.model.config._attn_implementation == (supported or "eager")
    r = s.task.renderer
    encoded = [r.encode(row, r.target_ids("complaint")) for row in ROWS_IN]
    assert s.task.batch(encoded, s.device)["input_ids"].is_cuda


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family, prompt", PROMPTS)
def test_gpu_label_scores_do_not_depend_on_the_batch(gpu_zoo, family, prompt):
    s = gpu_session(gpu_zoo, family, prompt)
    model = s.new_model(seed=1).eval()
    together = gpu_scores(s, model, ROWS_IN)
    alone = torch.cat([gpu_scores(s, model, [row]) for row in ROWS_IN])
    assert torch.allclose(together, alone, atol=HALF_ATOL)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family, prompt", [(f, p) for f, p in PROMPTS if f in GPU_CAUSAL])
def test_gpu_shared_prefix_cache_gives_the_plain_forward(gpu_zoo, family, prompt, monkeypatch):
    """The shared prefix run once, the label prefix tree and one full input per (row, label) agree on the GPU."""
    s = gpu_session(gpu_zoo, family, prompt)
    model = s.new_model(seed=3).eval()
    cached = gpu_scores(s, model, ROWS_IN)
    monkeypatch.setattr(model, "use_prefix_tree", False)
    by_word = gpu_scores(s, model, ROWS_IN)
    monkeypatch.setattr(type(model), "can_score_continuations", property(lambda self: False))
    plain = gpu_scores(s, model, ROWS_IN)
    assert torch.allclose(cached, plain, atol=HALF_ATOL) and torch.allclose(by_word, plain, atol=HALF_ATOL)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", GPU_GENERATIVE)
def test_gpu_generation_is_greedy_decoding_whatever_the_batch(gpu_zoo, family):
    """Compared up to the first step whose choice is close enough for half-precision rounding to flip it."""
    s = gpu_zoo.session(family, type="generation", max_new_tokens=6)
    model = s.new_model(seed=2).eval()
    tok = s.tokenizer
    encoded = [s.task.renderer.encode(row) for row in ROWS_IN]
    with torch.no_grad():
        batched = model.generate(s.task.batch(encoded, s.device), 6, tok.eos_token_id, tok.pad_token_id).tolist()
        for e, row in zip(encoded, batched):
            tokens, gaps = greedy_without_cache(model, e, 6, tok.eos_token_id)
            clear = next((i for i, gap in enumerate(gaps) if gap < CLEAR_GAP), len(gaps))
            assert until_eos(row, tok.eos_token_id)[:clear + 1] == tokens[:clear + 1]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family, prompt", PROMPTS)
def test_gpu_checkpoint_reload_gives_the_same_predictions(gpu_zoo, family, prompt, tmp_path):
    from ptune.inference import Predictor
    from ptune.training.saving import save_inference

    s = gpu_session(gpu_zoo, family, prompt)
    model = s.new_model(seed=5).eval()
    save_inference(s, model, tmp_path / "ckpt")
    loaded = Predictor.load(tmp_path / "ckpt", base=s.base)
    assert loaded.session.device.type == "cuda"
    assert torch.allclose(gpu_scores(loaded.session, loaded.model, ROWS_IN), gpu_scores(s, model, ROWS_IN),
                          atol=1e-4)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family, prompt", [("llama", "shallow"), ("t5", "shallow"), ("llama", "deep")])
def test_gpu_training_lowers_the_loss(gpu_zoo, family, prompt):
    from ptune.training.trainer import fit

    s = gpu_session(gpu_zoo, family, prompt, train={"lr": 0.05, "epochs": 3})
    train = Table("train.csv", ["text", "label"], [{"text": t, "label": l} for t, l in ROWS])
    examples, _ = s.task.train_examples(train)
    batch = s.task.batch(examples, s.device)
    with torch.no_grad():
        before = s.new_model(seed=0).eval().loss(batch).item()
    model, progress = fit(s, train, None, show_progress=False, seed=0)
    with torch.no_grad():
        after = model.eval().loss(batch).item()
    assert progress.step == 6 and after < before
