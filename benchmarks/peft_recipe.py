"""PEFT's P-tuning recipe for RAFT twitter_complaints as a standalone command: the baseline that
``cli_speed.py`` and ``scaling.py`` time ptune against. It imports nothing from ptune.

    python benchmarks/peft_recipe.py train --model FOLDER --data .../train.csv --out adapter/
    python benchmarks/peft_recipe.py predict --adapter adapter/ --data .../test_unlabeled.csv --rows 200 --out p.jsonl

Written from PEFT's documented example (the "Prompt-based methods" task guide, P-tuning tab, and its causal-LM
prompt-tuning guide for the same data set):
- the model loaded with ``AutoModelForCausalLM.from_pretrained`` in float32 (the example's dtype: it loads without
  one under transformers 4, whose default was float32), the pad token set to the end-of-text token if missing;
- ``PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=128)``, ``get_peft_model``;
- each row as ``"Tweet text : {text} Label : "`` + label + pad, loss on the label tokens only (-100 elsewhere),
  left padded to 64 tokens. Longer rows keep their last 64 tokens, so the label is never cut off (the example's
  ``[:max_length]`` would cut it);
- AdamW at lr 3e-2 with ``get_linear_schedule_with_warmup`` (no warmup), batch 8, shuffled ``DataLoader``;
- ``model.save_pretrained(out)``: the adapter alone;
- prediction: ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` and ``generate`` greedily; the generated text
  is the predicted label. The example generates one tweet at a time with ``max_new_tokens=10``; this script
  batches ``--batch-size`` left-padded rows and stops at 4 new tokens or the end-of-text token, which only makes
  PEFT faster (the longest label plus its end token is 3 tokens with SmolLM2's tokenizer).

Each command prints one JSON line: its seconds for loading, the training loop (or generation) and saving.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

TEXT, LABEL = "Tweet text", "Label"
MAX_LENGTH = 64
NUM_VIRTUAL_TOKENS, ENCODER_HIDDEN = 20, 128
SEED = 42


def read_rows(path: str | Path, limit: int = 0) -> list[dict]:
    """The rows of a CSV file as dicts (the first ``limit`` rows if ``limit`` > 0)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows[:limit] if limit > 0 else rows


def load_model(folder: str | Path, device: str = "cpu", dtype: str = "float32"):
    """The causal LM and its tokenizer (pad token: the end-of-text token if the tokenizer has none).

    The example's dtype is float32; ``dtype="bfloat16"`` loads the weights in bfloat16 instead (a GPU user's usual
    choice), with everything else the same. ``device`` is where the model and every batch go.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), trust_remote_code=False)
    return model.to(device), tokenizer


def prompt_ids(tokenizer, row: dict) -> list[int]:
    return tokenizer(f"{TEXT} : {row[TEXT]} Label : ", add_special_tokens=False)["input_ids"]


def encode_train(tokenizer, row: dict) -> tuple[list[int], list[int], list[int]]:
    """(input ids, attention mask, labels) of one training row, each ``MAX_LENGTH`` long, left padded.

    Example:
        >>> ids, mask, labels = encode_train(tokenizer, {"Tweet text": "late again", "Label": "complaint"})
        >>> len(ids) == len(mask) == len(labels) == MAX_LENGTH
        True
    """
    pad = tokenizer.pad_token_id
    x = prompt_ids(tokenizer, row)
    y = tokenizer(row[LABEL], add_special_tokens=False)["input_ids"] + [pad]
    ids, labels = (x + y)[-MAX_LENGTH:], ([-100] * len(x) + y)[-MAX_LENGTH:]
    n = MAX_LENGTH - len(ids)
    return [pad] * n + ids, [0] * n + [1] * len(ids), [-100] * n + labels


def train(model, tokenizer, rows: list[dict], *, epochs: int, batch_size: int = 8, lr: float = 3e-2,
          max_steps: int = 0, seed: int = SEED):
    """Wrap ``model`` with PEFT's P-tuning encoder and train it; return (the PEFT model, a dict of counts and seconds).

    ``max_steps`` > 0 stops after that many optimizer steps (the schedule still spans them), cycling the epochs.
    """
    import torch
    from peft import PromptEncoderConfig, get_peft_model
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    config = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL_TOKENS,
                                 encoder_hidden_size=ENCODER_HIDDEN)
    model = get_peft_model(model, config)
    data = TensorDataset(*(torch.tensor(column) for column in zip(*(encode_train(tokenizer, r) for r in rows))))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    total = max_steps or len(loader) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    steps = examples = 0
    model.train()
    while steps < total:
        for batch in loader:  # (B, 64) each
            ids, mask, labels = (t.to(model.device, non_blocking=True) for t in batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            steps, examples = steps + 1, examples + len(ids)
            if steps == total:
                break
    stats = {"steps": steps, "examples": examples, "train_s": time.perf_counter() - t0,
             "positions": examples * (MAX_LENGTH + NUM_VIRTUAL_TOKENS), "final_loss": float(loss)}
    return model, stats


def generate_labels(model, tokenizer, rows: list[dict], batch_size: int = 32, max_new_tokens: int = 4) -> list[str]:
    """Greedy ``generate`` on each row's prompt (left padded, batched); the generated text, stripped, per row."""
    import torch

    pad = tokenizer.pad_token_id
    model.eval()
    texts: list[str] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            prompts = [prompt_ids(tokenizer, r)[-MAX_LENGTH:] for r in rows[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)  # (B, T)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
            texts += [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return texts


def command_train(args) -> dict:
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model)
    rows = read_rows(args.data)
    load_s = time.perf_counter() - t0
    model, stats = train(model, tokenizer, rows, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    t0 = time.perf_counter()
    model.save_pretrained(args.out)
    return {"command": "train", "load_s": load_s, **stats, "save_s": time.perf_counter() - t0}


def command_predict(args) -> dict:
    import torch
    from peft import AutoPeftModelForCausalLM, PeftConfig
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    base = PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
    model = AutoPeftModelForCausalLM.from_pretrained(args.adapter, dtype=torch.float32, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    rows = read_rows(args.data, args.rows)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = generate_labels(model, tokenizer, rows, args.batch_size, args.max_new_tokens)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(args.out, "w", encoding="utf-8") as f:
        for row, text in zip(rows, texts):
            f.write(json.dumps({**row, "prediction": text}, ensure_ascii=False) + "\n")
    return {"command": "predict", "load_s": load_s, "rows": len(rows), "generate_s": generate_s,
            "save_s": time.perf_counter() - t0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the P-tuning encoder and save the adapter")
    t.add_argument("--model", required=True, help="local model folder (config, weights, tokenizer)")
    t.add_argument("--data", required=True, help="train.csv with 'Tweet text' and 'Label' columns")
    t.add_argument("--out", required=True, help="adapter folder to write")
    t.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    t.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    t.add_argument("--lr", type=float, default=3e-2, help="AdamW learning rate (default 3e-2)")
    q = sub.add_parser("predict", help="load base model + adapter and label rows by generate")
    q.add_argument("--adapter", required=True, help="adapter folder written by train")
    q.add_argument("--data", required=True, help="CSV with a 'Tweet text' column")
    q.add_argument("--out", required=True, help="JSONL file: each row plus its 'prediction'")
    q.add_argument("--rows", type=int, default=0, help="predict the first N rows only (0: all)")
    q.add_argument("--batch-size", type=int, default=32, help="rows per generate call (default 32)")
    q.add_argument("--max-new-tokens", type=int, default=4, help="generated tokens at most (default 4)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    result = command_train(args) if args.command == "train" else command_predict(args)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
