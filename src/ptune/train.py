"""One training loop: train(cfg, out_dir) -> summary. Also cross-validation over the same loop.

AdamW on the encoder only, linear warmup and decay, gradient clipping, evaluation on dev every epoch (or every N
steps), best checkpoint kept, early stopping, resumable state saved atomically, metrics as JSONL and a PNG plot.
On the CPU a run is repeatable: data order comes from (seed, epoch), the frozen model has no dropout, and the
encoder has none either.
"""

from __future__ import annotations

import json
import math
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import Config
from .data import Encoded, Table
from .errors import CheckpointError, PtuneError
from .labels import LabelSpace
from .model import PTuningModel
from .session import Session, check_inputs, load_training_tables, open_session, report_truncated, split_dev
from .template import parse_template


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


@dataclass
class Progress:
    """Everything needed to continue a run exactly where it stopped."""
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    done: bool = False


class _CtrlC:
    """The first Ctrl-C sets a flag that the loop reads between steps, so the state it saves is that of a whole
    step; a second one stops at once (and the last saved state stays as it was)."""

    def __init__(self):
        self.hit = False
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._old = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.default_int_handler)


@torch.no_grad()
def mean_loss(model: PTuningModel, session: Session, examples: list[Encoded]) -> float:
    model.eval()
    total, count = 0.0, 0
    bs = session.cfg.train.eval_batch_size
    for start in range(0, len(examples), bs):
        batch = session.task.batch(examples[start:start + bs], session.device)
        logp, mask = model.token_logprobs(batch)
        total += -logp.sum().item()
        count += int(mask.sum())
    return total / max(count, 1)


def evaluate(model: PTuningModel, session: Session, table: Table, show_progress: bool = False) -> dict:
    """Dev/test metrics for ``table`` (accuracy, macro-F1, P@1 or exact match, plus loss)."""
    bar = tqdm(total=len(table), desc="evaluate", disable=not show_progress, leave=False)
    preds = session.predict(model, table.rows, progress=bar.update)
    bar.close()
    metrics = session.task.metrics(table.rows, preds)
    examples, _ = session.task.train_examples(table)
    if examples:
        metrics["loss"] = mean_loss(model, session, examples)
    return metrics


def fit(session: Session, train: Table, dev: Table | None, out_dir: Path | None = None, *, resume: bool = False,
        show_progress: bool = True, seed: int | None = None) -> tuple[PTuningModel, Progress]:
    """Train a fresh (or resumed) encoder on ``train``; keep the best on ``dev`` (the last one without dev)."""
    cfg = session.cfg
    tc = cfg.train
    seed = tc.seed if seed is None else seed
    model = session.new_model(seed)
    examples, skipped = session.task.train_examples(train)
    if not examples:
        raise PtuneError(f"{train.source}: no usable training rows ({skipped} skipped)")
    if skipped:
        print(f"note: {skipped} of {len(train)} training rows skipped (target is not a single token)", file=sys.stderr)
    truncated = sum(e.truncated for e in examples)
    if truncated:
        print(f"note: {truncated} of {len(examples)} training rows have data fields truncated to fit "
              f"{session.task.renderer.max_length} tokens (virtual tokens and the target are kept)", file=sys.stderr)
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / tc.batch_size)
    total = tc.max_steps or tc.epochs * steps_per_epoch
    warmup = int(tc.warmup_ratio * total)
    metric = cfg.metric
    prog = Progress()
    if resume:
        if out_dir is None or not checkpoint.has_state(out_dir):
            raise PtuneError(f"--resume: {out_dir} holds no training state to resume from")
        encoder_state, saved = checkpoint.load_state(out_dir, optimizer)
        try:
            model.load_trainable_state(encoder_state)
            prog = Progress(**saved)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{out_dir / checkpoint.STATE}: does not fit this config's encoder ({err}); "
                                  "was the config changed since?") from None
        if prog.done:
            print(f"{out_dir}: training already finished at step {prog.step}; nothing to resume", file=sys.stderr)
            return model, prog

    def save_state(plot: bool = True):
        if out_dir is not None:
            checkpoint.save_state(out_dir, encoder_state=model.trainable_state(), optimizer=optimizer,
                                  progress=prog.__dict__)
            write_metrics(out_dir, prog.history, metric, plot)

    def save_best():
        if out_dir is not None:
            save_inference(session, model, out_dir, extra={"training": {"step": prog.step, "metric": metric,
                                                                        "best": prog.best}})

    def run_eval() -> bool:
        """Evaluate, keep the best; True when early stopping says stop."""
        record = {"step": prog.step, "epoch": prog.epoch + prog.step_in_epoch / steps_per_epoch}
        if dev is None:
            prog.history.append(record | {"kind": "checkpoint"})
            save_best()
            return False
        metrics = evaluate(model, session, dev)
        prog.history.append(record | {"kind": "dev", **metrics})
        value = metrics.get(metric)
        if value is not None and better(metric, value, prog.best):
            prog.best, prog.best_step, prog.bad_evals = value, prog.step, 0
            save_best()
        else:
            prog.bad_evals += 1
        model.train()
        return bool(tc.patience) and prog.bad_evals >= tc.patience

    bar = tqdm(total=total, initial=prog.step, desc="train", disable=not show_progress, unit="step")
    model.train()
    t0 = time.perf_counter()
    whole = True  # False while the state in memory is half-updated (inside a step's update and bookkeeping)
    kept = f"; the last good checkpoint is kept in {out_dir}" if out_dir else ""
    with _CtrlC() as ctrl_c:
        try:
            while prog.step < total and not prog.done:
                order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1000 + prog.epoch))
                batches = [order[i:i + tc.batch_size].tolist() for i in range(0, len(order), tc.batch_size)]
                while prog.step_in_epoch < len(batches) and prog.step < total:
                    if ctrl_c.hit:
                        raise KeyboardInterrupt
                    batch = session.task.batch([examples[i] for i in batches[prog.step_in_epoch]], session.device)
                    loss = model.loss(batch)
                    if not torch.isfinite(loss):
                        raise PtuneError(f"loss became {loss.item()} at step {prog.step}; stopped{kept}; try a lower "
                                         "train.lr")
                    loss.backward()
                    # the norm is taken even without clipping: an infinite gradient would turn the weights into NaN
                    norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or math.inf)
                    if not torch.isfinite(norm):
                        raise PtuneError(f"gradient norm became {norm.item()} at step {prog.step}; stopped{kept}; "
                                         "try a lower train.lr")
                    for group in optimizer.param_groups:
                        group["lr"] = tc.lr * lr_factor(prog.step, total, warmup)
                    whole = False
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    prog.step += 1
                    prog.step_in_epoch += 1
                    prog.history.append({"kind": "train", "step": prog.step, "loss": loss.item(),
                                         "lr": optimizer.param_groups[0]["lr"]})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", epoch=prog.epoch + 1)
                    stop = False
                    if tc.eval_every and prog.step % tc.eval_every == 0:
                        stop = run_eval()
                    if tc.save_every and prog.step % tc.save_every == 0:
                        save_state(plot=False)  # the curves are redrawn at evaluations; every step would be slow
                    if stop:
                        prog.done = True
                    whole = True
                    if stop:
                        break
                if prog.step_in_epoch >= len(batches):
                    whole = False
                    prog.epoch += 1
                    prog.step_in_epoch = 0
                    if not tc.eval_every and run_eval():
                        prog.done = True
                    save_state()
                    whole = True
            whole = False
            if prog.history and prog.history[-1].get("kind") == "train":
                run_eval()  # the steps since the last evaluation (max_steps inside an epoch, or eval_every)
            prog.done = True
            save_state()
        except KeyboardInterrupt:
            if out_dir is None:
                raise PtuneError(f"interrupted at step {prog.step}") from None
            if whole:
                save_state()
                raise PtuneError(f"interrupted at step {prog.step}; state saved; resume with: ptune train CONFIG "
                                 f"--out {out_dir} --resume") from None
            raise PtuneError(f"interrupted inside step {prog.step}; the state saved before it is kept; resume with: "
                             f"ptune train CONFIG --out {out_dir} --resume") from None
        finally:
            bar.close()
    elapsed = time.perf_counter() - t0
    prog.history.append({"kind": "summary", "seconds": elapsed, "steps": prog.step,
                         "examples_per_s": prog.step * tc.batch_size / max(elapsed, 1e-9)})
    if out_dir is not None:
        write_metrics(out_dir, prog.history, metric)
    # the model to return is the best one seen
    if out_dir is not None and dev is not None and (out_dir / checkpoint.MANIFEST).is_file():
        _, enc, _ = checkpoint.load_model(out_dir)
        model.load_trainable_state(enc)
    model.eval()
    return model, prog


def save_inference(session: Session, model: PTuningModel, out_dir: Path, extra: dict | None = None) -> None:
    was_training = model.training
    model.eval()
    table = model.prompt_table()
    labels = session.task.labels.to_dict() if session.task.labels else None
    checkpoint.save_model(out_dir, config=session.cfg.to_dict(), labels=labels, base=session.base.identity,
                          encoder_state=model.trainable_state(), prompts=table, extra=extra)
    model.train(was_training)


def write_metrics(out_dir: Path, history: list[dict], metric: str, plot: bool = True) -> None:
    lines = "".join(json.dumps(h) + "\n" for h in history)
    checkpoint.write_atomic(out_dir / "metrics.jsonl", lines.encode())
    if plot:
        plot_curves(history, metric, out_dir / "curves.png")


def plot_curves(history: list[dict], metric: str, path: Path) -> None:
    """Training loss per step and the dev metric per evaluation, on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if h.get("kind") == "train"]
    dev = [h for h in history if h.get("kind") == "dev"]
    if not train:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in train], [h["loss"] for h in train], color="tab:blue", alpha=0.6, label="train loss")
    if dev and "loss" in dev[0]:
        ax.plot([h["step"] for h in dev], [h["loss"] for h in dev], "o-", color="tab:cyan", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if dev and metric != "loss" and metric in dev[0]:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in dev], [h[metric] for h in dev], "s-", color="tab:orange", label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric}")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("ptune training")
    fig.tight_layout()
    buf = __import__("io").BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    checkpoint.write_atomic(path, buf.getvalue())


def prepare(cfg: Config) -> tuple[Session, Table, Table | None]:
    """Read and check all data first (a bad row stops the run before a model is loaded or a file written)."""
    train, dev = load_training_tables(cfg)
    template = parse_template(cfg.task.template)
    check_inputs(cfg, template, train, labelled=True)
    if dev is not None:
        check_inputs(cfg, template, dev, labelled=True)
    labels = None
    if cfg.task.type == "classification":  # labels too are checked before the model is loaded
        labels = LabelSpace.build(cfg.task.verbalizer, train.column(cfg.task.label_column))
        for table in (train, dev) if dev is not None else (train,):
            for i, row in enumerate(table.rows, 1):
                labels.index(row[cfg.task.label_column], where=f"{table.source}: row {i}: ")
    session = open_session(cfg, labels=labels)
    session.task.check(train)
    if dev is not None:
        session.task.check(dev)
    if dev is None and cfg.data.dev_fraction:
        train, dev = split_dev(cfg, train, cfg.data.dev_fraction, cfg.train.seed)
    return session, train, dev


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Train and write the checkpoint directory; return a summary (best dev metrics, test metrics if given)."""
    out_dir = Path(out_dir)
    if not resume and ((out_dir / checkpoint.MANIFEST).exists() or checkpoint.has_state(out_dir)):
        raise PtuneError(f"{out_dir} already holds a checkpoint; choose another --out, or --resume it")
    if resume and not checkpoint.has_state(out_dir):
        raise PtuneError(f"--resume: {out_dir} holds no training state to resume from")
    session, train_table, dev = prepare(cfg)
    test = None
    if cfg.data.test:
        from .session import read_split

        test = read_split(cfg, "test")
        check_inputs(cfg, session.template, test, labelled=True)
        session.task.check(test)
    for table, what in ((dev, "dev rows"), (test, "test rows")):
        if table is not None:
            report_truncated(session, table, what)
    # no mkdir here: the folder appears with the first checkpoint, so a run that fails on its data writes nothing
    model, prog = fit(session, train_table, dev, out_dir, resume=resume, show_progress=show_progress)
    summary = {"out": str(out_dir), "steps": prog.step, "best_" + cfg.metric: prog.best}
    if dev is not None:
        summary["dev"] = evaluate(model, session, dev)
    if test is not None:
        summary["test"] = evaluate(model, session, test)
    return summary


def stratified_folds(labels: list[str], k: int, seed: int) -> list[list[int]]:
    """k folds of row indices; each label's rows are dealt round-robin after a seeded shuffle, so every fold gets
    its share of each class and no row is in two folds."""
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    offset = 0
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(i)
        offset += len(idx)
    return [sorted(f) for f in folds]


def cross_validate(cfg: Config, *, folds: int | None = None, seeds: list[int] | None = None,
                   session: Session | None = None, train_table: Table | None = None,
                   show_progress: bool = True) -> dict:
    """k-fold cross-validation over the training rows: held-out metrics per fold, with mean and spread."""
    if session is None:
        session, train_table, _ = prepare(cfg)
    k = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    rows = train_table.rows
    key = [r[cfg.task.label_column] if cfg.task.type == "classification" else "" for r in rows]
    results = []
    t0 = time.perf_counter()
    for seed in seeds:
        for f, held in enumerate(stratified_folds(key, k, seed)):
            held_set = set(held)
            tr = Table(train_table.source, train_table.columns, [r for i, r in enumerate(rows) if i not in held_set])
            te = Table(f"{train_table.source} fold {f + 1}", train_table.columns, [rows[i] for i in held])
            model, _ = fit(session, tr, None, None, show_progress=show_progress, seed=seed)
            metrics = evaluate(model, session, te)
            metrics.update(fold=f + 1, seed=seed)
            results.append(metrics)
            if show_progress:
                shown = {k_: round(v, 4) for k_, v in metrics.items() if isinstance(v, float)}
                print(f"seed {seed} fold {f + 1}/{k}: {shown}")
    summary = {"folds": k, "seeds": seeds, "runs": results, "seconds": time.perf_counter() - t0}
    for name in results[0]:
        values = [r[name] for r in results if isinstance(r.get(name), float)]
        if values and name not in ("fold", "seed"):
            summary[name] = {"mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary
