"""The ``ptune`` command: parse, call a library function, print. Errors of ours print one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import PtuneError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PtuneError as err:
            message = str(err)
        except OSError as err:  # disk full, no permission, a missing folder for --out: the system's words suffice
            message = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
        # one line, even when the message quotes a multi-line YAML or pyarrow error
        click.echo(f"ptune: error: {' '.join(message.split())}", err=True)
        sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="ptune")
def main():
    """P-tuning for frozen Hugging Face language models: train, evaluate, predict, demo."""


_set = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                    help="Override a config value, e.g. --set train.lr=3e-2 (repeatable).")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@_set
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(config, out_dir, overrides, resume, quiet):
    """Train a prompt encoder and write the checkpoint directory."""
    from .config import load_config
    from .training.run import train as run

    cfg = load_config(config, overrides)
    summary = run(cfg, out_dir, resume=resume, show_progress=not quiet)
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:  # under `accelerate launch`, one summary, not one per process
        click.echo(json.dumps(summary, indent=2))
    if state.num_processes > 1:
        # Leave the process group together and on purpose, then exit without interpreter finalisation: gloo's worker
        # threads can still hold work objects whose teardown during finalisation aborts the process ("terminate
        # called without an active exception"; pytorch/pytorch PR 179291), which fails the whole launch although
        # training finished. Every file is already written (fsync, rename), so skipping finalisation loses nothing.
        import gc
        import os
        import sys

        state.wait_for_everyone()
        gc.collect()
        state.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@_set
@click.option("--folds", type=int, default=None, help="Number of folds (default: train.cv_folds).")
@click.option("--seeds", default=None, help="Comma-separated seeds, one repeat of k folds each.")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models per fold (training seeds seed, seed+100, ...), scored by their mean label "
                   "probabilities; each member's own figures are reported too.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the JSON here too.")
@click.option("--quiet", is_flag=True)
def cv(config, overrides, folds, seeds, ensemble, out_file, quiet):
    """Estimate held-out metrics by stratified k-fold cross-validation over the training rows."""
    from .config import load_config
    from .evaluation.cv import cross_validate

    cfg = load_config(config, overrides)
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    summary = cross_validate(cfg, folds=folds, seeds=seed_list, show_progress=not quiet, ensemble=ensemble)
    text = json.dumps(summary, indent=2)
    if out_file:
        Path(out_file).write_text(text)
    click.echo(text)


_checkpoints = click.argument("checkpoint_dirs", nargs=-1, required=True, metavar="CHECKPOINT_DIR...",
                              type=click.Path(file_okay=False))


@main.command("eval")
@_checkpoints
@click.option("--data", required=True, help="Labelled rows to score.")
@click.option("--format", "fmt", default="auto")
@click.option("--quiet", is_flag=True)
def eval_(checkpoint_dirs, data, fmt, quiet):
    """Print metrics as JSON (accuracy, macro_f1, n; p@1 for probing). Several checkpoints of one classification
    task are scored as an ensemble (mean label probabilities)."""

    from .inference import Ensemble

    predictor = Ensemble.load(list(checkpoint_dirs))
    click.echo(json.dumps(predictor.evaluate_file(data, fmt, show_progress=not quiet), indent=2))


@main.command()
@_checkpoints
@click.option("--data", required=True, help="Rows to predict (labels not needed).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="JSONL output file.")
@click.option("--format", "fmt", default="auto")
@click.option("--quiet", is_flag=True)
def predict(checkpoint_dirs, data, out_file, fmt, quiet):
    """Write one JSON object per row: its fields plus `prediction` (and `scores` per label). Several checkpoints
    of one classification task predict as an ensemble (mean label probabilities; scores are their logs)."""
    from .checkpoint import write_atomic
    from .inference import Ensemble

    predictor = Ensemble.load(list(checkpoint_dirs))
    table, preds = predictor.predict_file(data, fmt, show_progress=not quiet)
    lines = "".join(json.dumps({**row, **p}, ensure_ascii=False) + "\n" for row, p in zip(table.rows, preds))
    write_atomic(Path(out_file).resolve(), lines.encode())
    click.echo(f"wrote {len(preds)} predictions to {out_file}", err=True)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where the chosen recipe's checkpoint and the search report (search.md/json/png) go.")
@_set
@click.option("--quiet", is_flag=True)
def search(config, out_dir, overrides, quiet):
    """Cross-validated search over the config's `search.space`; retrain the best and write its checkpoint."""

    from .evaluation.search import render_table, run_search

    report = run_search(config, out_dir, overrides, show_progress=not quiet)
    click.echo(render_table(report["candidates"], report["best"]))
    click.echo(f"chosen: candidate {report['best']}; checkpoint in {out_dir}; took {report['seconds']:.0f} s")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--manual", required=True, help="Manual template without virtual tokens, e.g. "
              "'Tweet text : {Tweet text} Label : [TARGET]'.")
@_set
@click.option("--folds", type=int, default=None)
@click.option("--seeds", default=None, help="Comma-separated seeds.")
def baselines(config, manual, overrides, folds, seeds):
    """Majority class and zero-shot manual prompt on the same folds as `ptune cv`."""
    from .config import load_config
    from .evaluation.baselines import baselines as run

    cfg = load_config(config, overrides)
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    click.echo(json.dumps(run(cfg, manual, folds, seed_list), indent=2))


@main.command()
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Where to keep the demo checkpoint (default: a temporary folder).")
@click.option("--quiet", is_flag=True)
def demo(out_dir, quiet):
    """Train on the bundled customer-messages set with the embedded model, evaluate on held-out rows, predict."""
    from .demo import run_demo

    run_demo(out_dir, show_progress=not quiet)


from .interop.peft import register as _register_interop  # noqa: E402  (export, import)
from .serve import register as _register_serve  # noqa: E402  (serve)

_register_interop(main)
_register_serve(main)

from .bench import register as _register_bench  # noqa: E402  (bench lama, bench fewshot)

_register_bench(main)


if __name__ == "__main__":
    main()
