"""Speed benchmark: PEFT's P-tuning recipe and ptune's equivalent, one after the other, same model, data, template
and hyperparameters; prints one JSON line.

    python benchmarks/speed.py --data ../shared/data/raft/twitter_complaints            # full: 10 epochs, 5 folds
    python benchmarks/speed.py --data ../shared/data/raft/twitter_complaints --quick    # smoke test: minutes

Each system runs in its own child process (this script again, with ``--role``), one after the other, so their
peak memory is measured apart; the parent describes the machine (machine.py: CPU, flags, cores, torch, measured
fp32 and bf16 matmul rates) and prints the combined figures as one JSON line, and a short table on stderr.
Timings drift on a shared machine: compare the two systems from the same invocation only.

What is measured, per system:
- training: the k-fold cross-validation fits (every fold trains a fresh encoder for ``--epochs`` epochs on the other
  folds' rows); throughput = training examples processed / seconds spent in the training loops;
- held-out accuracy over the same folds (``ptune.data.splits.stratified_folds``, same seed). PEFT predicts by ``generate``
  and its text is mapped to a label by exact match (anything else counts as malformed, and wrong); ptune ranks the
  labels by likelihood;
- prediction throughput: rows/s over the first ``--test-rows`` unlabeled test tweets, with the last fold's encoder;
- peak resident memory: sampled every 5 ms while training (psutil), and the process's ru_maxrss at the end of
  training (which includes loading the model);
- achieved FLOP/s while training, as a fraction of this machine's measured bf16 matmul rate (machine.py). FLOPs are
  estimated from what each system computes: per position fed to the model (ptune: a batch's shared prefix once)
  2 * N_body (N_body: parameters outside
  the embedding table), plus 2 * V * d per position where logits are computed (PEFT: every position, ptune: the
  target positions only); a training step costs twice the forward (the backward computes gradients for the
  activations, not for the frozen weights). The conventional 6 * N_params * tokens is reported beside it.

The recipe (PEFT's P-tuning example for twitter_complaints): "Tweet text : {text} Label : " + label + pad, left padded
to 64 tokens, loss on the label only, 20 virtual tokens before it from an MLP encoder of hidden size 128, AdamW lr
3e-2 with a linear schedule, batch 8, 10 epochs, float32 (PEFT's default). ptune: examples/reference_twitter_complaints.yaml
(the same prefix template and encoder, dynamic padding, bfloat16 base where the CPU is fast at it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, summary_line
from memory import PeakRSS, rss_mb, ru_maxrss_mb

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "reference_twitter_complaints.yaml"
TEXT, LABEL = "Tweet text", "Label"
MAX_LENGTH = 64  # PEFT's recipe: text + label tokens, padded to this on the left
SEED = 42


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with train.csv and test_unlabeled.csv")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 2 folds, 16 test rows")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per fold (default 10, quick 1)")
    p.add_argument("--cv-folds", type=int, default=None, help="cross-validation folds (default 5, quick 2)")
    p.add_argument("--test-rows", type=int, default=None, help="unlabeled rows for prediction speed (default 200)")
    p.add_argument("--predict-batch", type=int, default=32, help="rows per prediction batch, both systems")
    p.add_argument("--systems", default="peft,ptune", help="which to run, in this order")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--role", choices=["peft", "ptune"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 10
    if args.cv_folds is None:
        args.cv_folds = 2 if args.quick else 5
    if args.test_rows is None:
        args.test_rows = 16 if args.quick else 200
    return args


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def read_rows(path: Path) -> list[dict]:
    from ptune.data.tables import read_table

    return read_table(path).rows


def model_sizes(model) -> tuple[int, int, int, int]:
    """(all parameters, parameters outside the input embedding, vocabulary size, hidden size)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total, total - emb.numel(), emb.shape[0], emb.shape[1]


def fold_splits(rows: list[dict], k: int) -> list[tuple[list[int], list[int]]]:
    from ptune.data.splits import stratified_folds

    folds = stratified_folds([r[LABEL] for r in rows], k, SEED)
    return [([i for i in range(len(rows)) if i not in set(held)], held) for held in folds]


def finish(result: dict, sizes, positions: int, logit_positions: int, train_s: float) -> dict:
    total, body, vocab, dim = sizes
    forward = 2 * body * positions + 2 * vocab * dim * logit_positions
    result["train_flops"] = 2 * forward
    result["train_flops_6n"] = 6 * total * positions
    result["train_positions"] = positions
    result["train_seconds"] = train_s
    return result


# ---------------------------------------------------------------------------------------------------------------
# PEFT, as its P-tuning example does it


def peft_fit(model0, tok, train_rows: list[dict], epochs: int, seed: int, device):
    """A fresh PEFT P-tuning encoder on ``model0`` trained as the recipe does; return (model, seconds, examples,
    positions fed to the model)."""
    import torch
    from peft import PromptEncoderConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from peft_recipe import encode_train

    torch.manual_seed(seed)
    pcfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=128)
    model = get_peft_model(model0, pcfg)
    data = [encode_train(tok, r) for r in train_rows]
    ids, att, lab = (torch.tensor([d[j] for d in data]) for j in range(3))  # (N, 64) each
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    sched = get_linear_schedule_with_warmup(opt, 0, math.ceil(len(data) / 8) * epochs)
    gen = torch.Generator().manual_seed(seed)
    positions = 0
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for s in range(0, len(data), 8):
            b = order[s:s + 8]
            out = model(input_ids=ids[b].to(device), attention_mask=att[b].to(device), labels=lab[b].to(device))
            out.loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            positions += len(b) * (MAX_LENGTH + 20)
    return model, time.perf_counter() - t0, len(data) * epochs, positions


def peft_generate(model, tok, rows: list[dict], batch: int, device) -> list[str]:
    """Greedy ``generate`` of up to 4 tokens after each row's prompt, left padded to ``MAX_LENGTH``; the texts."""
    import torch

    pad = tok.pad_token_id
    model.eval()
    texts = []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            prompts = [tok(f"{TEXT} : {r[TEXT]} Label : ", add_special_tokens=False)["input_ids"][-MAX_LENGTH:]
                       for r in rows[s:s + batch]]
            ids = torch.tensor([[pad] * (MAX_LENGTH - len(i)) + i for i in prompts], device=device)  # (B, 64)
            att = torch.tensor([[0] * (MAX_LENGTH - len(i)) + [1] * len(i) for i in prompts], device=device)
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=4, do_sample=False,
                                 eos_token_id=pad, pad_token_id=pad)
            texts += [t.strip() for t in tok.batch_decode(out[:, MAX_LENGTH:], skip_special_tokens=True)]
    return texts


def run_peft(args) -> dict:
    import torch

    from ptune.config import ModelConfig
    from ptune.modeling.base import load_base

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base(ModelConfig(dtype="float32"), device)  # PEFT's default: the model as loaded, float32
    model0, tok = base.model, base.tokenizer
    rows = read_rows(Path(args.data) / "train.csv")
    test = read_rows(Path(args.data) / "test_unlabeled.csv")[:args.test_rows]
    labels = sorted({r[LABEL] for r in rows})
    rss_loaded = rss_mb()
    sizes = model_sizes(model0)

    train_s, examples, positions, correct, malformed, n_held = 0.0, 0, 0, 0, 0, 0
    with PeakRSS() as peak:
        for tr, held in fold_splits(rows, args.cv_folds):
            model, s, n, pos = peft_fit(model0, tok, [rows[i] for i in tr], args.epochs, SEED, device)
            train_s, examples, positions = train_s + s, examples + n, positions + pos
            texts = peft_generate(model, tok, [rows[i] for i in held], args.predict_batch, device)
            for i, t in zip(held, texts):
                correct += t == rows[i][LABEL]
                malformed += t not in labels
            n_held += len(held)
            model.train()
    maxrss = ru_maxrss_mb()
    t0 = time.perf_counter()
    texts = peft_generate(model, tok, test, args.predict_batch, device)  # the last fold's encoder
    pred_s = time.perf_counter() - t0
    result = {"train_examples_per_s": examples / train_s, "train_examples": examples,
              "predict_rows_per_s": len(test) / pred_s, "predict_rows": len(test),
              "predict_malformed_fraction_test": sum(t not in labels for t in texts) / max(len(texts), 1),
              "predict_sample_outputs": texts[:3],
              "cv_accuracy": correct / n_held, "cv_malformed_fraction": malformed / n_held, "cv_rows": n_held,
              "rss_loaded_mb": rss_loaded, "peak_rss_training_mb": peak.peak / 2**20, "ru_maxrss_mb": maxrss,
              "dtype": str(model0.dtype).replace("torch.", "")}
    return finish(result, sizes, positions, positions, train_s)  # logits at every position, virtual ones included


# ---------------------------------------------------------------------------------------------------------------
# ptune, from its reference config


def run_ptune(args) -> dict:
    import torch

    from ptune.config import load_config
    from ptune.data.tables import Table
    from ptune.training.prepare import prepare
    from ptune.training.trainer import fit

    train_csv = str((Path(args.data) / "train.csv").resolve())
    cfg = load_config(CONFIG, [f"data.train={train_csv}", f"train.epochs={args.epochs}",
                               f"train.eval_batch_size={args.predict_batch}"])
    session, table, _ = prepare(cfg)
    rss_loaded = rss_mb()
    rows = table.rows
    test = read_rows(Path(args.data) / "test_unlabeled.csv")[:args.test_rows]
    sizes = model_sizes(session.base.model)

    counts = {"positions": 0, "logits": 0}
    plain_batch = session.task.batch

    def counting_batch(examples, device, share_prefix=False):
        batch = plain_batch(examples, device, share_prefix)
        lab = batch["labels"]
        counts["positions"] += lab.numel() + (batch["prefix_ids"].numel() if "prefix_ids" in batch else 0)
        k = lab.shape[1] - int((lab != -100).any(0).nonzero()[0])
        counts["logits"] += lab.shape[0] * (k + 1)
        return batch

    train_s, examples, correct, n_held = 0.0, 0, 0, 0
    with PeakRSS() as peak:
        for tr, held in fold_splits(rows, args.cv_folds):
            tr_table = Table(table.source, table.columns, [rows[i] for i in tr])
            session.task.batch = counting_batch
            t0 = time.perf_counter()
            model, _ = fit(session, tr_table, None, None, show_progress=False, seed=cfg.train.seed)
            train_s += time.perf_counter() - t0
            session.task.batch = plain_batch
            examples += len(tr) * args.epochs
            preds = session.predict(model, [rows[i] for i in held])
            correct += sum(p["prediction"] == rows[i][LABEL] for i, p in zip(held, preds))
            n_held += len(held)
    maxrss = ru_maxrss_mb()
    t0 = time.perf_counter()
    session.predict(model, test)
    pred_s = time.perf_counter() - t0
    result = {"train_examples_per_s": examples / train_s, "train_examples": examples,
              "predict_rows_per_s": len(test) / pred_s, "predict_rows": len(test),
              "cv_accuracy": correct / n_held, "cv_malformed_fraction": 0.0, "cv_rows": n_held,
              "rss_loaded_mb": rss_loaded, "peak_rss_training_mb": peak.peak / 2**20, "ru_maxrss_mb": maxrss,
              "dtype": str(session.base.model.dtype).replace("torch.", "")}
    del torch
    return finish(result, sizes, counts["positions"], counts["logits"], train_s)


# ---------------------------------------------------------------------------------------------------------------
# The parent


def child(args, role: str) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--data", args.data,
            "--epochs", str(args.epochs), "--cv-folds", str(args.cv_folds), "--test-rows", str(args.test_rows),
            "--predict-batch", str(args.predict_batch), "--threads", str(args.threads)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{role} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    data = Path(args.data)
    for name in ("train.csv", "test_unlabeled.csv"):
        if not (data / name).is_file():
            raise SystemExit(f"{data / name}: not found (give the twitter_complaints folder with --data)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.role:
        import warnings

        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        result = run_peft(args) if args.role == "peft" else run_ptune(args)
        print(json.dumps(result))
        return

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    machine = describe()
    peak_bf16, peak_fp32 = machine["matmul_bf16_gflops"] * 1e9, machine["matmul_fp32_gflops"] * 1e9
    device = f"cuda: {machine['cuda']}" if machine["cuda"] else f"cpu: {machine['cpu_model']}"
    out: dict = {"machine": machine, "device": f"{device} ({machine['torch_threads']} threads)",
                 "torch": torch.__version__, "mode": "quick" if args.quick else "full",
                 "epochs": args.epochs, "cv_folds": args.cv_folds, "test_rows": args.test_rows,
                 "predict_batch": args.predict_batch, "threads": torch.get_num_threads(),
                 "load_average_at_start": round(os.getloadavg()[0], 2), "matmul_bf16_flops": peak_bf16,
                 "matmul_fp32_flops": peak_fp32}
    results = {}
    for role in systems:
        t0 = time.perf_counter()
        r = child(args, role)
        r["wall_s"] = time.perf_counter() - t0
        r["train_flops_per_s"] = r["train_flops"] / r["train_seconds"]
        r["train_mfu_vs_bf16_matmul"] = r["train_flops_per_s"] / peak_bf16
        r["train_mfu_6n_vs_bf16_matmul"] = r["train_flops_6n"] / r["train_seconds"] / peak_bf16
        results[role] = r
    for role, r in results.items():
        out[role] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
    if "peft" in results and "ptune" in results:
        p, q = results["peft"], results["ptune"]
        out["ratio_ptune_over_peft"] = {
            "train_examples_per_s": round(q["train_examples_per_s"] / p["train_examples_per_s"], 3),
            "predict_rows_per_s": round(q["predict_rows_per_s"] / p["predict_rows_per_s"], 3),
            "peak_rss_training": round(q["peak_rss_training_mb"] / p["peak_rss_training_mb"], 3),
        }
    print(json.dumps(out))
    print_table(out, systems)


def print_table(out: dict, systems: list[str]) -> None:
    """A few lines for people, on stderr (stdout stays one JSON line)."""
    lines = [summary_line(out["machine"]),
             f"{'system':8} {'train ex/s':>10} {'predict rows/s':>14} {'peak RSS MB':>11} {'cv acc':>6} "
             f"{'MFU bf16':>8}"]
    for role in systems:
        r = out[role]
        lines.append(f"{role:8} {r['train_examples_per_s']:10.2f} {r['predict_rows_per_s']:14.2f} "
                     f"{r['peak_rss_training_mb']:11.0f} {r['cv_accuracy']:6.3f} {r['train_mfu_vs_bf16_matmul']:8.4f}")
    if "ratio_ptune_over_peft" in out:
        lines.append(f"ptune / peft: {out['ratio_ptune_over_peft']}")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
