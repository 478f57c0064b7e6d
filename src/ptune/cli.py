"""The ``ptune`` command: parse, call a library function, print. Errors of ours print one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import PtuneError
from .files import check_out_file, write_atomic


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
    if out_file:
        check_out_file(out_file)  # before the folds train, not after
    summary = cross_validate(cfg, folds=folds, seeds=seed_list, show_progress=not quiet, ensemble=ensemble)
    text = json.dumps(summary, indent=2)
    if out_file:
        write_atomic(Path(out_file).resolve(), text.encode())
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
@click.option("--top-labels", type=click.IntRange(min=1), default=None,
              help="Score only each row's N best labels (the rest are left out of `scores`): fewer model places "
                   "with many labels. Default: the checkpoint's task.top_labels, else every label.")
@click.option("--quiet", is_flag=True)
def predict(checkpoint_dirs, data, out_file, fmt, top_labels, quiet):
    """Write one JSON object per row: its fields plus `prediction` (and `scores` per label). Several checkpoints
    of one classification task predict as an ensemble (mean label probabilities; scores are their logs)."""
    from .inference import Ensemble

    check_out_file(out_file)  # before the model loads
    predictor = Ensemble.load(list(checkpoint_dirs), top_labels=top_labels)
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
    """Cross-validated search over the config's `search.space`, or without one the built-in space by successive
    halving; retrain the chosen one (the best mean macro-F1, or the zero-shot prompt or a probe where the folds do
    not separate it from the best: search.prefer_simpler) and write its checkpoint and recipe.yaml."""

    from .evaluation.search import render_table, run_search

    report = run_search(config, out_dir, overrides, show_progress=not quiet)
    click.echo(render_table(report["candidates"], report["best"]))
    click.echo(f"chosen: candidate {report['best']}; checkpoint in {out_dir}; took {report['seconds']:.0f} s")
    if report.get("recipe"):
        click.echo(f"the chosen recipe as a config (`ptune train` takes it): {Path(out_dir) / report['recipe']}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--manual", required=True, help="Manual template without virtual tokens, e.g. "
              "'Tweet text : {Tweet text} Label : [TARGET]'.")
@_set
@click.option("--folds", type=int, default=None)
@click.option("--seeds", default=None, help="Comma-separated seeds.")
def baselines(config, manual, overrides, folds, seeds):
    """Majority class, zero-shot manual prompt, sentence embeddings + logistic regression (and, for a linear head,
    the linear probe) on the same folds as `ptune cv`."""
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


# ---------------------------------------------------------------------------------------------------------------
# interop: export, import


def _pairs(values, option: str) -> dict:
    """``LABEL=WORD`` options as {label: word} (a label given twice: {label: [words]})."""
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected LABEL=WORD", param_hint=option)
        key, value = item.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


@main.command("export")
@click.argument("checkpoint_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["peft"]), default="peft", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Adapter folder.")
def export_cmd(checkpoint_dir, fmt, out_dir):
    """Export a checkpoint as a PEFT prompt-tuning adapter (prefix templates, causal LMs), or a deep prompt as a
    prefix-tuning one."""
    from .interop.peft import export_peft

    click.echo(json.dumps(export_peft(checkpoint_dir, out_dir), indent=2))


@main.command("import")
@click.argument("peft_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--template", default=None, help="ptune template; its [P*n] must come first, and a prefix-tuning "
              "adapter's has none (default: the exported one, or '[P*n] {text} [TARGET]' / '{text} [TARGET]').")
@click.option("--model", default=None, help="Base model (default: the adapter's base_model_name_or_path).")
@click.option("--task", "task_type", type=click.Choice(["classification", "generation", "probing"]),
              default=None)
@click.option("--label-column", default=None)
@click.option("--verbalizer", multiple=True, metavar="LABEL=WORD", help="A label and its word (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value.")
def import_cmd(peft_dir, out_dir, template, model, task_type, label_column, verbalizer, overrides):
    """Import a PEFT P-tuning or prompt-tuning adapter as a ptune checkpoint (trainable embedding encoder), or a
    prefix-tuning adapter as a deep prompt (encoder.deep_tokens, deep_encoder table)."""
    from .interop.peft import import_peft

    summary = import_peft(peft_dir, out_dir, template=template, model=model, task_type=task_type,
                          label_column=label_column, verbalizer=_pairs(verbalizer, "--verbalizer"),
                          overrides=overrides)
    click.echo(json.dumps(summary, indent=2))


# ---------------------------------------------------------------------------------------------------------------
# serve

# serving.protocol.Limits' and serving.server.Connections' defaults (checked by a test), kept here so that --help
# imports no server code
SERVE_DEFAULTS = {"max_rows": 64, "batch_wait_ms": 5.0, "max_queue": 1024, "body_timeout": 30.0, "max_streams": 8,
                  "stream_batch": False,
                  "limit_concurrency": 256, "keep_alive_timeout": 5.0, "header_timeout": 10.0, "max_tasks": 1000}
CONNECTION_OPTIONS = ("limit_concurrency", "keep_alive_timeout", "header_timeout")


@main.command("serve")
@click.argument("checkpoints", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--device", default=None, help="Override the checkpoints' model.device.")
@click.option("--max-rows", default=SERVE_DEFAULTS["max_rows"], show_default=True, type=click.IntRange(1, 100000))
@click.option("--batch-wait-ms", default=SERVE_DEFAULTS["batch_wait_ms"], show_default=True,
              type=click.FloatRange(0, 1000))
@click.option("--max-queue", default=SERVE_DEFAULTS["max_queue"], show_default=True, type=click.IntRange(1),
              help="Rows waiting for the model beyond which a request gets 503 with Retry-After at once.")
@click.option("--max-streams", default=SERVE_DEFAULTS["max_streams"], show_default=True, type=click.IntRange(1),
              help="Streamed generations open at once; one more gets 429 with Retry-After.")
@click.option("--stream-batch", is_flag=True, default=SERVE_DEFAULTS["stream_batch"],
              help="Decode the open streams together, one model call per token for all: faster with several "
                   "streams, but a stream's text may differ from the whole answer where rounding turns a near tie.")
@click.option("--limit-concurrency", default=SERVE_DEFAULTS["limit_concurrency"], show_default=True,
              type=click.IntRange(1), help="Open connections beyond which a new request gets 503 at once.")
@click.option("--header-timeout", default=SERVE_DEFAULTS["header_timeout"], show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a connection has to send complete request "
                                                            "headers; then 408 and closed.")
@click.option("--body-timeout", default=SERVE_DEFAULTS["body_timeout"], show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a request body has to arrive; then 408.")
@click.option("--keep-alive-timeout", default=SERVE_DEFAULTS["keep_alive_timeout"], show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds an idle connection stays open after an answer.")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health (repeatable; also read from "
                   "PTUNE_API_KEY, comma-separated). Visible to every user of the machine in ps: prefer "
                   "--api-key-file or PTUNE_API_KEY.")
@click.option("--api-key-file", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="Read the keys from PATH, one per line (blank lines and lines starting with # skipped).")
@click.option("--insecure", is_flag=True, help="Allow listening beyond 127.0.0.1 without an API key.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
              help="Without a key, also answer requests whose Host header is HOST, a name or address (repeatable; "
                   "loopback names always; 0.0.0.0 or :: any address; * any host). With --insecure, the --host "
                   "address is added.")
@click.option("--tasks-dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Allow adding tasks from checkpoints inside DIR (POST /v1/tasks {\"name\", \"path\"}) and "
                   "removing them (DELETE /v1/tasks/NAME) while serving. Given no CHECKPOINTS, serve those "
                   "directly inside DIR, by subfolder name (none: start empty).")
@click.option("--max-tasks", default=SERVE_DEFAULTS["max_tasks"], show_default=True, type=click.IntRange(1),
              help="Tasks served at once, beyond which POST /v1/tasks gets 409 (tasks given at start count).")
def serve_cmd(checkpoints, host, port, device, api_keys, api_key_file, insecure, allowed_hosts, tasks_dir, **limits):
    """Serve checkpoints (DIR or NAME=DIR, one frozen base model shared) over HTTP: native and OpenAI-compatible
    endpoints (/v1/completions, /v1/chat/completions with model = task name). With no CHECKPOINTS, serve those in
    --tasks-dir DIR."""
    import os

    import uvicorn

    from .serving.app import create_app
    from .serving.auth import api_keys_from, check_bind, is_loopback
    from .serving.protocol import Limits
    from .serving.server import Connections, uvicorn_config

    if api_keys:
        click.echo("ptune: warning: a key given with --api-key can be read by every user of this machine (ps); "
                   "use --api-key-file PATH or PTUNE_API_KEY instead", err=True)
    keys = api_keys_from(api_keys, os.environ.get("PTUNE_API_KEY"), api_key_file)
    check_bind(host, keys, insecure)  # before the model loads
    if keys and allowed_hosts:  # with keys any Host is served: a foreign page cannot send the key
        click.echo("ptune: warning: --allowed-host has no effect with API keys (every Host is served to a request "
                   "that carries a key)", err=True)
    if insecure and not is_loopback(host):  # clients reach it by this address (0.0.0.0 or ::: by any address)
        allowed_hosts = (*allowed_hosts, host)
    connections = Connections(**{name: limits.pop(name) for name in CONNECTION_OPTIONS})
    app = create_app(_serve_checkpoints(checkpoints, tasks_dir), device=device, limits=Limits(**limits),
                     api_keys=keys, tasks_dir=tasks_dir, allowed_hosts=allowed_hosts)
    served = ", ".join(app.state.tasks) or f"no task yet (add them with POST /v1/tasks from {tasks_dir})"
    click.echo(f"serving {served} on http://{host}:{port}", err=True)
    server = uvicorn.Server(uvicorn_config(app, host, port, connections))
    try:
        server.run()
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return
    if not server.started:  # e.g. the port is taken: uvicorn has logged why
        raise PtuneError(f"serve: the server did not start on {host}:{port} (see the log above)")


def _serve_checkpoints(checkpoints: tuple[str, ...], tasks_dir: str | None) -> dict[str, str]:
    """The checkpoints named on the command line, else those inside --tasks-dir (the folders skipped are said)."""
    from .serving.tasks import checkpoints_to_serve, parse_checkpoint_args

    if checkpoints:
        return parse_checkpoint_args(list(checkpoints))
    if tasks_dir is None:
        raise PtuneError("serve: give checkpoint directories (DIR or NAME=DIR), or --tasks-dir DIR to serve the "
                         "checkpoints inside DIR and add more while serving")
    found, skipped = checkpoints_to_serve(Path(tasks_dir))
    for line in skipped:
        click.echo(f"ptune: warning: not served: {line}", err=True)
    return found


# ---------------------------------------------------------------------------------------------------------------
# bench: the paper's experiments


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
    from .bench.lama import base_config, run_lama
    from .bench.loaders import parse_shape, shared_data_dir

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
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma-separated seeds.")
@click.option("--k", type=int, default=32, show_default=True,
              help="Training examples sampled, labels balanced, for SST-2, AG News, TREC (FewGLUE has its fixed "
              "32).")
@click.option("--max-eval", type=int, default=1000, show_default=True,
              help="Cap evaluation rows (a fixed random sample, the same for every method; smaller splits whole; "
              "0: all).")
@click.option("--methods", default="majority,zero_shot,chosen", show_default=True,
              help="Comma-separated: majority, zero_shot, embeddings (sentence embeddings + logistic "
              "regression), probe (linear probe, middle layer), residual (P-tuning started at the manual prompt's "
              "words, one fixed recipe), deep (a deep prompt, P-tuning v2, causal LMs), deep_text (the same started "
              "from the label words), unlabeled (PET-style distillation on the train pool's other rows, labels "
              "removed), deep_unlabeled (deep_text distilled so), deep_pvp (the same, every manual prompt teaching "
              "in its own words), deep_pet (deep_pvp with three teachers per prompt), chosen (the "
              "recipe cross-validation on the k rows chooses), and the fixed-budget lstm, mlp, embedding.")
@click.option("--folds", type=int, default=4, show_default=True,
              help="Cross-validation folds over the k rows for the choice (and over RAFT's labelled rows).")
@click.option("--prefer-simpler", type=click.FloatRange(min=0), default=None,
              help="The choice's rule, search.prefer_simpler (default: ptune search's): a candidate that fits less "
              "(zero-shot, then a probe) is chosen where it trails the best mean by at most this many standard "
              "errors over the folds (0: the best mean alone).")
@click.option("--choice-splits", type=click.IntRange(min=1), default=1, show_default=True,
              help="Splits of the k rows the choice cross-validates every candidate on, each of --folds folds: "
              "more steady its means, at that many times the cost.")
@_model_options
def fewshot(data, out_dir, tasks, seeds, k, max_eval, methods, folds, prefer_simpler, choice_splits, model, dtype,
            device, lr, batch_size, epochs, seed, quiet):
    """Few-shot classification: majority class, zero-shot manual prompts, sentence embeddings, the linear probe,
    and the recipe chosen by cross-validation on the k training rows (zero-shot, a linear probe, or P-tuning from
    the manual prompt's words)."""
    from .bench.fewshot import run_fewshot
    from .bench.loaders import shared_data_dir

    report = run_fewshot(data or shared_data_dir(), out_dir, tasks=_csv(tasks), seeds=[int(s) for s in
                         _csv(seeds)], k=k, max_eval=max_eval or None, methods=_csv(methods), folds=folds,
                         model=model, dtype=dtype, device=device, lr=lr, batch_size=batch_size or 8,
                         epochs=epochs or 10, data_seed=seed, show_progress=not quiet, choice_splits=choice_splits,
                         **({} if prefer_simpler is None else {"prefer_simpler": prefer_simpler}))
    click.echo(json.dumps(report["summary"], indent=2))
    click.echo(f"wrote {out_dir}/results.json, results.md ({report['seconds']:.0f} s)", err=True)


if __name__ == "__main__":
    main()
