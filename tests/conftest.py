"""Tiny models and tokenizers built from configs inside the tests: offline, CPU, seconds."""

from __future__ import annotations

import csv
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as ptune/__init__.py does; torch is imported first here

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("PTUNE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

CORPUS = [
    "my order arrived late and the box was broken", "thanks for the quick delivery", "great service today",
    "the app crashes when I pay", "is the store open on sunday", "I want a refund now", "complaint", "no complaint",
    "Tweet text : Label : yes no great terrible It was the capital of France is Paris", "hello world",
]


def _bpe(special: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1, special_tokens=special)
    return tok


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer, saved like a hub folder."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    raw = _bpe(["<pad>", "<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_masked_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with [CLS] ... [SEP] added by its tokenizer."""
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    raw = _bpe(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"])
    inner = raw._tokenizer
    inner.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", inner.token_to_id("[CLS]")), ("[SEP]", inner.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                  mask_token="[MASK]", unk_token="[UNK]")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(folder)
    return folder


ROWS = [
    ("my order arrived late and the box was broken", "complaint"),
    ("thanks for the quick delivery", "no complaint"),
    ("the app crashes when I pay", "complaint"),
    ("great service today", "no complaint"),
    ("I want a refund now", "complaint"),
    ("is the store open on sunday", "no complaint"),
    ("the box was broken again", "complaint"),
    ("hello world thanks", "no complaint"),
]


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def tiny_data(tmp_path) -> dict:
    return {"train": str(write_csv(tmp_path / "train.csv", ROWS)),
            "dev": str(write_csv(tmp_path / "dev.csv", ROWS[:4]))}


def tiny_config(model_dir: Path, data: dict | None = None, **sections) -> "Config":
    from ptune.config import config_from_dict

    values = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "task": {"type": "classification", "template": "[P*2] Tweet text : {text} [P*2] Label : [TARGET]",
                 "label_column": "label"},
        "encoder": {"type": "lstm", "hidden_size": 16},
        "data": dict(data or {}),
        "train": {"lr": 1e-2, "batch_size": 4, "epochs": 2, "max_length": 64, "seed": 0, "warmup_ratio": 0.0},
    }
    for section, updates in sections.items():
        values.setdefault(section, {}).update(updates)
    return config_from_dict(values)


def train_interrupted_then_resumed(cfg, out_dir: Path, monkeypatch, step: int) -> None:
    """``ptune train`` stopped by Ctrl-C at ``step`` (a resumable state saved), then continued with --resume."""
    import importlib

    from ptune.errors import PtuneError
    from ptune.training.run import train

    module = importlib.import_module("ptune.training.trainer")
    real = module.lr_factor

    def interrupt(step_, total, warmup):
        if step_ == step:
            raise KeyboardInterrupt
        return real(step_, total, warmup)

    monkeypatch.setattr(module, "lr_factor", interrupt)
    with pytest.raises(PtuneError, match=f"interrupted at step {step}.*--resume"):
        train(cfg, out_dir, show_progress=False)
    monkeypatch.setattr(module, "lr_factor", real)
    train(cfg, out_dir, resume=True, show_progress=False)
