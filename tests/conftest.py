"""Tiny models and tokenizers built from configs inside the tests: offline, CPU, seconds."""

from __future__ import annotations

import csv
import importlib
import os
from contextlib import contextmanager
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


@contextmanager
def ctrl_c_at_step(monkeypatch, step: int):
    """Training interrupted as if by Ctrl-C at ``step`` while the block runs (the learning-rate schedule raises)."""
    module = importlib.import_module("ptune.training.trainer")
    real = module.lr_factor

    def interrupt(step_, total, warmup):
        if step_ == step:
            raise KeyboardInterrupt
        return real(step_, total, warmup)

    monkeypatch.setattr(module, "lr_factor", interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(module, "lr_factor", real)


def train_interrupted_then_resumed(cfg, out_dir: Path, monkeypatch, step: int) -> None:
    """``ptune train`` stopped by Ctrl-C at ``step`` (a resumable state saved), then continued with --resume."""
    from ptune.errors import PtuneError
    from ptune.training.run import train

    with ctrl_c_at_step(monkeypatch, step), pytest.raises(PtuneError, match=f"interrupted at step {step}.*--resume"):
        train(cfg, out_dir, show_progress=False)
    train(cfg, out_dir, resume=True, show_progress=False)


# ---------------------------------------------------------------------------------------------------------------
# one tiny model per architecture family, built from its config class (2 layers, width 32)

def _tokenizer(kind: str, model_type: str):
    """A byte-level BPE tokenizer over CORPUS with the special tokens a model of this kind expects: none added for
    a causal LM, [CLS] ... [SEP] for a masked LM, ``... </s>`` (T5) or ``<s> ... </s>`` (BART) for seq2seq."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    if kind == "causal":
        raw = _bpe(["<pad>", "<eos>", "<bos>"])
        return PreTrainedTokenizerFast(tokenizer_object=raw._tokenizer, pad_token="<pad>", eos_token="<eos>",
                                       bos_token="<bos>")
    if kind == "masked":
        inner = _bpe(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"])._tokenizer
        inner.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
            ("[CLS]", inner.token_to_id("[CLS]")), ("[SEP]", inner.token_to_id("[SEP]"))])
        return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", unk_token="[UNK]")
    inner = _bpe(["<pad>", "</s>", "<s>"])._tokenizer
    single = "$A </s>" if model_type == "t5" else "<s> $A </s>"
    inner.post_processor = TemplateProcessing(single=single, special_tokens=[
        (t, inner.token_to_id(t)) for t in ("<s>", "</s>") if t in single])
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
GQA = dict(SMALL, num_key_value_heads=2)
WINDOW = 8  # sliding-window models: rows in the tests are longer than this

# family -> (kind, config class name in transformers, the config's arguments besides vocabulary and special tokens)
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "bloom": ("causal", "BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4)),
    "gpt2": ("causal", "GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": ("causal", "GPTNeoXConfig", dict(SMALL, rotary_pct=0.5)),
    "gptj": ("causal", "GPTJConfig", dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128)),
    "opt": ("causal", "OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=128, word_embed_proj_dim=32)),
    "falcon": ("causal", "FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    "falcon_alibi": ("causal", "FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    alibi=True)),
    "llama": ("causal", "LlamaConfig", GQA),
    "mistral": ("causal", "MistralConfig", dict(GQA, sliding_window=WINDOW)),
    "qwen2": ("causal", "Qwen2Config", GQA),
    "qwen3": ("causal", "Qwen3Config", dict(GQA, head_dim=8)),
    "gemma": ("causal", "GemmaConfig", dict(GQA, head_dim=8)),
    "gemma2": ("causal", "Gemma2Config", dict(GQA, head_dim=8, sliding_window=WINDOW)),
    "gemma3_text": ("causal", "Gemma3TextConfig", dict(GQA, head_dim=8, sliding_window=WINDOW,
                                                       layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("causal", "Phi3Config", GQA),
    "stablelm": ("causal", "StableLmConfig", GQA),
    "olmo2": ("causal", "Olmo2Config", GQA),
    "bert": ("masked", "BertConfig", SMALL),
    "roberta": ("masked", "RobertaConfig", dict(SMALL, max_position_embeddings=130)),
    "deberta-v2": ("masked", "DebertaV2Config", SMALL),
    "modernbert": ("masked", "ModernBertConfig", dict(SMALL, global_attn_every_n_layers=2, local_attention=8)),
    "t5": ("seq2seq", "T5Config", dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)),
    "bart": ("seq2seq", "BartConfig", dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                           max_position_embeddings=128)),
}


def _family_config(family: str, tok):
    import transformers

    kind, config_name, arguments = FAMILIES[family]
    special = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, initializer_range=0.2,
                   tie_word_embeddings=False)
    if kind == "masked":
        special.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                       eos_token_id=tok.sep_token_id)
    else:
        special.update(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if kind == "seq2seq":
        start = tok.pad_token_id if family == "t5" else tok.eos_token_id  # as T5 and BART are trained
        special.update(decoder_start_token_id=start, forced_bos_token_id=None, forced_eos_token_id=None)
    return getattr(transformers, config_name)(**arguments, **special)


def build_family(family: str, folder: Path) -> Path:
    """Save a randomly initialised (seeded) 2-layer model of ``family`` and its tokenizer in ``folder``, like a hub
    folder; no download."""
    import transformers

    kind = FAMILIES[family][0]
    _tokenizer(kind, family).save_pretrained(folder)
    _family_config(family, _tokenizer(kind, family)).save_pretrained(folder)
    # read back as transformers will: the tokenizer class it picks for this model type may add tokens (Qwen2's
    # <|endoftext|>), and the vocabulary must cover them
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)
    auto = {"causal": transformers.AutoModelForCausalLM, "masked": transformers.AutoModelForMaskedLM,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[kind]
    torch.manual_seed(0)
    auto.from_config(_family_config(family, tok)).save_pretrained(folder)
    return folder


TEMPLATES = {  # per kind: virtual tokens before and after the data (for seq2seq also after the target)
    "causal": "[P*2] Tweet text : {text} [P*2] Label : [TARGET]",
    "masked": "[P*2] Tweet text : {text} [P*2] Label : [MASK] .",
    "seq2seq": "Tweet text : {text} [P*2] Label : [TARGET] [P*1] .",
}


class FamilyZoo:
    """Each family's tiny model folder and frozen base, built and loaded once (per module fixture); sessions over
    the shared base, on ``model`` settings (device, dtype)."""

    def __init__(self, root: Path, **model):
        self.root = root
        self.model = {"device": "cpu", "dtype": "float32", **model}
        self.bases: dict = {}

    def folder(self, family: str) -> Path:
        folder = self.root / family
        if not folder.exists():
            folder.mkdir()
            build_family(family, folder)
        return folder

    def session(self, family: str, labels=("complaint", "no complaint"), train: dict | None = None,
                encoder: dict | None = None, **task):
        from ptune.session import open_session

        task = {"template": TEMPLATES[FAMILIES[family][0]], **task}
        if task.get("type", "classification") == "classification":
            task.setdefault("verbalizer", {label: label for label in labels})
        cfg = tiny_config(self.folder(family), task=task, train={"eval_batch_size": 8, **(train or {})},
                          encoder=encoder or {}, model=self.model)
        session = open_session(cfg, label_values=list(labels), base=self.bases.get(family))
        self.bases[family] = session.base
        return session


def greedy_without_cache(model, encoded, steps: int, eos: int) -> tuple[list[int], list[float]]:
    """Greedy decoding of one unpadded row by full forward passes (no KV cache), stopping after EOS; the tokens and,
    per step, the gap between the two largest logits (how clear the choice was)."""
    device = model.encoder.table.device
    embeds = model.embed(torch.tensor([encoded.input_ids], device=device),
                         torch.tensor([encoded.virtual_index], device=device))  # (1, T, d)
    ones = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
    start = getattr(model.base.config, "decoder_start_token_id", None)
    tokens: list[int] = []
    gaps: list[float] = []
    for _ in range(steps):
        if model.kind == "seq2seq":
            logits = model.base(inputs_embeds=embeds, attention_mask=ones, use_cache=False,
                                decoder_input_ids=torch.tensor([[start] + tokens], device=device)).logits
        else:
            logits = model.base(inputs_embeds=embeds, attention_mask=ones, use_cache=False,
                                position_ids=torch.arange(embeds.shape[1], device=device)[None]).logits
        top = logits[0, -1].float().topk(2)
        tokens.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        if tokens[-1] == eos:
            break
        if model.kind != "seq2seq":
            step = model.base.get_input_embeddings()(torch.tensor([[tokens[-1]]], device=device))  # (1, 1, d)
            embeds = torch.cat([embeds, step.to(embeds.dtype)], dim=1)
            ones = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
    return tokens, gaps


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens
