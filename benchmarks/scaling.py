"""Scaling: how PEFT's and ptune's P-tuning training and prediction speed and memory grow with the frozen model,
from SmolLM2-135M's shape to Qwen2.5-0.5B's and Qwen2.5-1.5B's (random weights; see random_models.py).

    # full (on a quiet machine): 3 sizes x 2 systems, 20 training steps and 64 predicted rows each
    python benchmarks/scaling.py --data ../shared/data/raft/twitter_complaints
    python benchmarks/scaling.py --data ../shared/data/raft/twitter_complaints --sizes 135m,0.5b --steps 40
    # smoke test: 2 steps, 8 rows, 135m only (add --sizes tiny for a test of the script alone, in seconds)
    python benchmarks/scaling.py --data ../shared/data/raft/twitter_complaints --quick
    # on a GPU, PEFT in float32 and in bfloat16 beside ptune, on a tokenizer saved where the embedded model is
    python benchmarks/scaling.py --data DIR --device cuda --systems peft,peft_bf16,ptune --tokenizer tok/ --steps 200

The work, on the reference recipe's shape (20 virtual tokens from an MLP encoder of hidden size 128, batch 8,
lr 3e-2, the twitter_complaints training rows in shuffled batches): ``--steps`` optimizer steps, then the first
``--predict-rows`` unlabeled rows labelled in batches of 32 (ptune: labels ranked by likelihood; PEFT: greedy
``generate`` of the longest label's token count plus one, the least that writes a label and its end). PEFT runs as
peft_recipe.py does, in float32 (its example's dtype; system ``peft``) or with the weights in bfloat16 (system
``peft_bf16``, a GPU user's usual choice); ptune with its defaults (examples/reference_twitter_complaints.yaml, dtype
``auto``: bfloat16 on a GPU). Both run on ``--device`` (default: a CUDA GPU where there is one). Each (size, system)
runs in its own child process, one after another; models are built once under ``--models-root`` and reused.

Measured per (size, system): training examples/s (from building the encoder to the last step), prediction rows/s,
load seconds, resident memory after loading, after training and the child's peak (the whole process, loading
included), on a GPU its peak allocated GPU memory (which the memory ratios then compare), and achieved training
FLOP/s as a fraction of this machine's measured bf16 (and fp32) matmul rate.
FLOPs count the work the recipe needs, the same for both systems: per example, 2 * N_body per position (its
virtual, text and label tokens; N_body: parameters outside the embedding table) plus 2 * vocabulary * hidden per
label token for the logits, twice that for a training step (the backward computes activation gradients only; the
model is frozen). Padding and logits a system computes beyond that count as its overhead, not as work.
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
from memory import own_peak_mb, rss_mb, run_measured

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONFIG = ROOT / "examples" / "reference_twitter_complaints.yaml"
BATCH, PREDICT_BATCH, N_VIRTUAL = 8, 32, 20
SYSTEMS = ("peft", "peft_bf16", "ptune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="folder with train.csv and test_unlabeled.csv")
    p.add_argument("--sizes", help="comma-separated, from tiny,135m,0.5b,1.5b (default 135m,0.5b,1.5b; quick 135m)")
    p.add_argument("--steps", type=int, help="training steps per run (default 20, quick 2)")
    p.add_argument("--predict-rows", type=int, help="unlabeled rows predicted per run (default 64, quick 8)")
    p.add_argument("--systems", default="peft,ptune", help="which to run, in this order, from peft,peft_bf16,ptune "
                   "(default peft,ptune)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where both systems run (auto: a CUDA GPU where there is one)")
    p.add_argument("--tokenizer", help="folder with the embedded model's tokenizer for building the models "
                   "(random_models.py --save-tokenizer), where the embedded model's package is absent")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 8 rows, size 135m")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: torch's default)")
    p.add_argument("--models-root", help="where the random-weight models are built and kept "
                   "(default: <tmp>/ptune-bench-models; 1.5b takes 6.2 GB)")
    p.add_argument("--ptune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for ptune's runs, as `ptune train --set` takes (repeatable), e.g. "
                   "train.packing=false to time the padded batches instead of packed ones")
    p.add_argument("--no-cudnn-attention", action="store_true",
                   help="on a GPU, keep torch's attention (SDPA) off its cuDNN kernel in every run, so that it takes "
                   "the flash or memory-efficient one (a cuDNN attention graph is built per new input shape)")
    p.add_argument("--role", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = args.sizes or ("135m" if args.quick else "135m,0.5b,1.5b")
    args.steps = args.steps or (2 if args.quick else 20)
    args.predict_rows = args.predict_rows or (8 if args.quick else 64)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# ---------------------------------------------------------------------------------------------------------------
# In a child process: one system on one model


def model_sizes(model) -> tuple[int, int, int, int]:
    """(all parameters, parameters outside the input embedding, vocabulary size, hidden size)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total, total - emb.numel(), emb.shape[0], emb.shape[1]


def useful_flops_per_example(tokenizer, rows: list[dict], sizes) -> float:
    """Mean training FLOPs per example of the work the recipe needs (see the module docstring)."""
    from peft_recipe import LABEL, MAX_LENGTH, prompt_ids

    _, body, vocab, dim = sizes
    total = 0.0
    for row in rows:
        label = len(tokenizer(row[LABEL], add_special_tokens=False)["input_ids"])
        positions = N_VIRTUAL + min(len(prompt_ids(tokenizer, row)) + label, MAX_LENGTH)
        total += 2 * (2 * body * positions + 2 * vocab * dim * label)
    return total / len(rows)


def examples_in_steps(n_rows: int, steps: int) -> int:
    """Rows processed by ``steps`` steps of batches of ``BATCH`` over epochs of ``n_rows`` (the last batch short)."""
    per_epoch = math.ceil(n_rows / BATCH)
    return sum(min(BATCH, n_rows - (i % per_epoch) * BATCH) for i in range(steps))


def run_peft(args, rows: list[dict], test: list[dict]) -> dict:
    import peft_recipe

    t0 = time.perf_counter()
    dtype = "bfloat16" if args.role == "peft_bf16" else "float32"
    model, tokenizer = peft_recipe.load_model(args.model, device=args.device, dtype=dtype)
    out = {"load_s": time.perf_counter() - t0, "rss_loaded_mb": rss_mb(), "dtype": str(model.dtype)[6:]}
    sizes = model_sizes(model)
    model, stats = peft_recipe.train(model, tokenizer, rows, epochs=1, batch_size=BATCH, max_steps=args.steps)
    out.update(train_s=stats["train_s"], train_steps=stats["steps"], train_examples=stats["examples"],
               peak_rss_after_train_mb=own_peak_mb())  # train_s ends at float(loss), which waits for the GPU
    longest = max(len(tokenizer(r[peft_recipe.LABEL], add_special_tokens=False)["input_ids"]) for r in rows)
    t0 = time.perf_counter()
    peft_recipe.generate_labels(model, tokenizer, test, PREDICT_BATCH, max_new_tokens=longest + 1)
    out["predict_s"] = time.perf_counter() - t0  # decoding the generated ids waits for the GPU
    return {**out, **size_fields(sizes, useful_flops_per_example(tokenizer, rows, sizes))}


def run_ptune(args, rows: list[dict], test: list[dict]) -> dict:
    from ptune.config import load_config
    from ptune.training.prepare import prepare
    from ptune.training.trainer import fit

    train_csv = str((Path(args.data) / "train.csv").resolve())
    cfg = load_config(CONFIG, [f"data.train={train_csv}", f"model.name_or_path={args.model}",
                               f"model.device={args.device}", f"train.max_steps={args.steps}",
                               f"train.eval_batch_size={PREDICT_BATCH}", *args.ptune_set])
    t0 = time.perf_counter()
    session, table, _ = prepare(cfg)
    model0 = session.base.model
    out = {"load_s": time.perf_counter() - t0, "rss_loaded_mb": rss_mb(), "dtype": str(model0.dtype)[6:]}
    t0 = time.perf_counter()
    model, progress = fit(session, table, None, None, show_progress=False)
    synchronize(args.device)
    out.update(train_s=time.perf_counter() - t0, train_steps=progress.step,
               train_examples=examples_in_steps(len(table.rows), progress.step),
               peak_rss_after_train_mb=own_peak_mb())
    t0 = time.perf_counter()
    session.predict(model, test)
    synchronize(args.device)
    out["predict_s"] = time.perf_counter() - t0
    sizes = model_sizes(model0)
    return {**out, **size_fields(sizes, useful_flops_per_example(session.base.tokenizer, rows, sizes))}


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a timer read next counts it."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def size_fields(sizes, flops_per_example: float) -> dict:
    total, body, vocab, dim = sizes
    return {"parameters": total, "parameters_body": body, "vocab": vocab, "hidden": dim,
            "train_flops_per_example": flops_per_example}


def child_main(args) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    from peft_recipe import read_rows

    rows = read_rows(Path(args.data) / "train.csv")
    test = read_rows(Path(args.data) / "test_unlabeled.csv", args.predict_rows)
    result = (run_ptune if args.role == "ptune" else run_peft)(args, rows, test)
    result["predict_rows"] = len(test)
    if args.device == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# The parent


def build_model(size: str, root: str | None, tokenizer: str | None) -> Path:
    """The size's model folder, built by random_models.py in its own process (the parent stays small)."""
    argv = [sys.executable, str(HERE / "random_models.py"), "--size", size] + (["--out-root", root] if root else [])
    argv += ["--tokenizer", tokenizer] if tokenizer else []
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"building the {size} model failed (exit {proc.returncode})")
    print(f"{size}: model ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return Path(proc.stdout.strip().splitlines()[-1])


def run_child(args, system: str, model: Path, machine: dict) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", system, "--model", str(model),
            "--data", args.data, "--steps", str(args.steps), "--predict-rows", str(args.predict_rows),
            "--threads", str(args.threads), "--device", args.device]
    argv += [f"--ptune-set={override}" for override in args.ptune_set]
    argv += ["--no-cudnn-attention"] if args.no_cudnn_attention else []
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    r = run_measured(argv, env=env, stdout=subprocess.PIPE)
    if r["returncode"]:
        raise SystemExit(f"{system} on {model.name} failed (exit {r['returncode']})")
    out = json.loads(r["stdout"].strip().splitlines()[-1])
    flops_per_s = out["train_flops_per_example"] * out["train_examples"] / out["train_s"]
    out.update(wall_s=r["wall_s"], peak_rss_mb=r["peak_rss_mb"],
               train_examples_per_s=out["train_examples"] / out["train_s"],
               predict_rows_per_s=out["predict_rows"] / out["predict_s"], train_flops_per_s=flops_per_s,
               train_fraction_of_bf16_matmul=flops_per_s / (machine["matmul_bf16_gflops"] * 1e9),
               train_fraction_of_fp32_matmul=flops_per_s / (machine["matmul_fp32_gflops"] * 1e9))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def peak_mb(result: dict) -> float:
    """The memory a run's ratios compare: its peak allocated GPU memory on a GPU, else its peak resident memory."""
    return result.get("gpu_peak_mb", result["peak_rss_mb"])


def growth(results: dict, sizes: list[str], systems: list[str]) -> dict:
    """Per system, each size against the first: parameters, seconds per training example and per predicted row,
    peak memory (x times); and ptune over each PEFT system per size (examples/s, rows/s, peak memory)."""
    out: dict = {}
    base = sizes[0]
    for system in systems:
        b = results[base][system]
        out[system] = {size: {"parameters_x": round(r["parameters"] / b["parameters"], 2),
                              "train_s_per_example_x": round(b["train_examples_per_s"] / r["train_examples_per_s"], 2),
                              "predict_s_per_row_x": round(b["predict_rows_per_s"] / r["predict_rows_per_s"], 2),
                              "peak_memory_x": round(peak_mb(r) / peak_mb(b), 2)}
                       for size in sizes for r in [results[size][system]]}
    for peft in [s for s in ("peft", "peft_bf16") if s in systems and "ptune" in systems]:
        out[f"ptune_over_{peft}"] = {size: {
            "train_examples_per_s": round(r["ptune"]["train_examples_per_s"] / r[peft]["train_examples_per_s"], 2),
            "predict_rows_per_s": round(r["ptune"]["predict_rows_per_s"] / r[peft]["predict_rows_per_s"], 2),
            "peak_memory": round(peak_mb(r["ptune"]) / peak_mb(r[peft]), 2)}
            for size in sizes for r in [results[size]]}
    return out


def print_table(out: dict) -> None:
    lines = [summary_line(out["machine"]),
             f"{'size':5} {'system':9} {'dtype':8} {'params M':>8} {'load s':>6} {'train ex/s':>10} {'rows/s':>7} "
             f"{'peak MB':>8} {'of bf16':>8} {'of fp32':>8}"]
    for size in out["sizes"]:
        for system in out["systems"]:
            r = out["results"][size][system]
            lines.append(f"{size:5} {system:9} {r['dtype']:8} {r['parameters'] / 1e6:8.0f} {r['load_s']:6.1f} "
                         f"{r['train_examples_per_s']:10.2f} {r['predict_rows_per_s']:7.2f} {peak_mb(r):8.0f} "
                         f"{r['train_fraction_of_bf16_matmul']:8.3f} {r['train_fraction_of_fp32_matmul']:8.3f}")
    for peft in ("peft", "peft_bf16"):
        for size, r in out["growth"].get(f"ptune_over_{peft}", {}).items():
            lines.append(f"{size}: ptune/{peft} train {r['train_examples_per_s']}x, predict "
                         f"{r['predict_rows_per_s']}x, peak memory {r['peak_memory']}x")
    print("\n".join(lines), file=sys.stderr)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.role:
        return child_main(args)
    from random_models import SHAPES

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SHAPES] + [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown size or system: {', '.join(unknown)} (sizes: {', '.join(SHAPES)})")
    machine = describe()
    models = {size: build_model(size, args.models_root, args.tokenizer) for size in sizes}
    results = {}
    for size in sizes:
        results[size] = {}
        for system in systems:
            results[size][system] = run_child(args, system, models[size], machine)
            print(f"{size} {system}: {results[size][system]['wall_s']:.0f} s", file=sys.stderr)
    out = {"machine": machine, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "sizes": sizes,
           "systems": systems, "device": args.device, "ptune_set": args.ptune_set,
           "no_cudnn_attention": args.no_cudnn_attention, "steps": args.steps,
           "predict_rows": args.predict_rows, "batch": BATCH, "results": results,
           "growth": growth(results, sizes, systems)}
    print(json.dumps(out))
    print_table(out)


if __name__ == "__main__":
    main()
