"""The paper's experiments, one command each: ``ptune bench lama`` (LAMA knowledge probing, manual prompt vs
P-tuning, P@1) and ``ptune bench fewshot`` (few-shot classification: zero-shot manual prompt vs P-tuning with LSTM
and MLP encoders vs plain prompt tuning, several seeds). Data are read from a path argument, never copied."""

from __future__ import annotations

import json

import click


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _model_options(f):
    f = click.option("--model", default="embedded:SmolLM2-135M-Instruct", show_default=True,
                     help="Base model: folder, hub id, .gguf, or the embedded one.")(f)
    f = click.option("--dtype", default="auto", type=click.Choice(["auto", "float32", "bfloat16"]),
                     show_default=True)(f)
    f = click.option("--device", default="auto", show_default=True)(f)
    f = click.option("--lr", type=float, default=1e-2, show_default=True)(f)
    f = click.option("--batch-size", type=int, default=None, help="Training batch size.")(f)
    f = click.option("--epochs", type=int, default=None, help="Training epochs.")(f)
    f = click.option("--seed", type=int, default=42, show_default=True,
                     help="Seed for the capped samples (lama: also for training).")(f)
    f = click.option("--quiet", is_flag=True, help="No progress bars.")(f)
    return f


def register(main: click.Group) -> None:
    @main.group()
    def bench():
        """Reproduce the paper's experiments (LAMA probing, few-shot classification)."""

    @bench.command()
    @click.option("--data", default=None, help="The LAMA folder (default: $PTUNE_SHARED_DATA/lama or "
                  "../shared/data/lama).")
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                  help="Where results.json, results.md, lama.png (and per-relation runs/) go.")
    @click.option("--relations", default=None, help="Comma-separated relation ids, e.g. P108,P463 (default: all).")
    @click.option("--vocab", default="29k", type=click.Choice(["29k", "34k"]), show_default=True)
    @click.option("--shape", default=None, help="P-tuning template shape a,b,c = [P*a] {sub_label} [P*b] [TARGET] "
                  "[P*c] (default 3,3,0 for a causal LM, 3,3,3 for a masked LM).")
    @click.option("--encoder", default="lstm", type=click.Choice(["lstm", "mlp", "embedding"]), show_default=True)
    @click.option("--max-train", type=int, default=None, help="Cap training facts per relation (random sample).")
    @click.option("--max-dev", type=int, default=200, show_default=True, help="Cap dev facts per relation.")
    @click.option("--max-test", type=int, default=None, help="Cap test facts per relation (default: all).")
    @click.option("--eval-every", type=int, default=0, help="Evaluate on dev every N steps (0: each epoch).")
    @click.option("--patience", type=int, default=3, show_default=True, help="Early stopping patience.")
    @_model_options
    def lama(data, out_dir, relations, vocab, shape, encoder, max_train, max_dev, max_test, eval_every, patience,
             model, dtype, device, lr, batch_size, epochs, seed, quiet):
        """LAMA T-REx probing: manual prompt vs P-tuning per relation (P@1 on test)."""
        from .lama import base_config, run_lama
        from .loaders import parse_shape, shared_data_dir

        cfg = base_config(model, dtype=dtype, device=device, lr=lr, batch_size=batch_size or 16,
                          epochs=epochs or 3, eval_every=eval_every, patience=patience, seed=seed, encoder=encoder)
        report = run_lama(data or shared_data_dir() / "lama", out_dir, relations=_csv(relations), vocab=vocab,
                          shape=parse_shape(shape) if shape else None, max_train=max_train, max_dev=max_dev,
                          max_test=max_test, cfg=cfg, show_progress=not quiet)
        click.echo(json.dumps(report["mean"], indent=2))
        click.echo(f"wrote {out_dir}/results.json, results.md, lama.png ({report['seconds']:.0f} s)", err=True)

    @bench.command()
    @click.option("--data", default=None, help="The shared data folder holding sst2/, superglue_fewglue/, agnews/, "
                  "trec/, raft/ (default: $PTUNE_SHARED_DATA or ../shared/data).")
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                  help="Where results.json and results.md go.")
    @click.option("--tasks", default="sst2,rte", show_default=True,
                  help="Comma-separated: sst2, rte, cb, boolq, wic, agnews, trec, raft:<task>.")
    @click.option("--seeds", default="1,2", show_default=True, help="Comma-separated seeds.")
    @click.option("--k", type=int, default=32, show_default=True,
                  help="Training examples sampled for SST-2, AG News, TREC (FewGLUE has its fixed 32).")
    @click.option("--max-eval", type=int, default=200, show_default=True,
                  help="Cap evaluation rows (a fixed random sample, the same for every method; 0: all).")
    @click.option("--methods", default="zero_shot,lstm,mlp,embedding", show_default=True)
    @click.option("--folds", type=int, default=4, show_default=True, help="Cross-validation folds for RAFT tasks.")
    @_model_options
    def fewshot(data, out_dir, tasks, seeds, k, max_eval, methods, folds, model, dtype, device, lr, batch_size,
                epochs, seed, quiet):
        """Few-shot classification: zero-shot manual prompt vs P-tuning (lstm, mlp) vs prompt tuning (embedding)."""
        from .fewshot import run_fewshot
        from .loaders import shared_data_dir

        report = run_fewshot(data or shared_data_dir(), out_dir, tasks=_csv(tasks), seeds=[int(s) for s in
                             _csv(seeds)], k=k, max_eval=max_eval or None, methods=_csv(methods), folds=folds,
                             model=model, dtype=dtype, device=device, lr=lr, batch_size=batch_size or 8,
                             epochs=epochs or 10, data_seed=seed, show_progress=not quiet)
        click.echo(json.dumps(report["summary"], indent=2))
        click.echo(f"wrote {out_dir}/results.json, results.md ({report['seconds']:.0f} s)", err=True)
