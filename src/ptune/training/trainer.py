"""
AdamW on the encoder only, linear warmup and decay, gradient clipping, evaluation on dev every epoch (or every N
steps), best checkpoint kept, early stopping, resumable state saved atomically, metrics as JSONL and a PNG plot.
On the CPU a run is repeatable: data order comes from (seed, epoch), the frozen model has no dropout, and the
encoder has none either.
"""


from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import checkpoint
from ..data.tables import Table
from ..errors import CheckpointError, PtuneError
from ..evaluation.evaluator import evaluate
from ..modeling.ptuning import PTuningModel
from ..session import Session
from ..tasks.calibration import prior_offsets
from .distributed import _Step, check_batch_split, make_accelerator, on_main
from .logging import write_metrics
from .self_training import pseudo_labelled


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


def fit(session: Session, train: Table, dev: Table | None, out_dir: Path | None = None, *, resume: bool = False,
        show_progress: bool = True, seed: int | None = None, self_train: bool = True) -> tuple[PTuningModel, Progress]:
    """Train a fresh (or resumed) encoder on ``train``; keep the best on ``dev`` (the last one without dev).

    Under ``accelerate launch`` with N processes, each global batch of ``train.batch_size`` rows (the same order as a
    single process, from (seed, epoch)) is split into N disjoint shards, one per process; DDP all-reduces the
    encoder's gradients. Each process scales its summed target NLL by N / (target tokens in the whole global batch),
    so the averaged gradient is that of the single-process loss (the mean over the global batch's target tokens).
    Only the main process evaluates, writes files and shows progress; the others follow its decisions."""
    cfg = session.cfg
    tc = cfg.train
    seed = tc.seed if seed is None else seed
    if self_train and tc.self_train_rows:
        if session.unlabeled is None:
            raise PtuneError("train.self_train_rows is set but no unlabeled rows were read (data.unlabeled)")
        train = pseudo_labelled(session, train, seed, show_progress)  # (deterministic: a resume redoes it alike)
    from accelerate.utils import DistributedType

    acc = make_accelerator(tc, session.device)
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    check_batch_split(tc.batch_size, world)
    show_progress = show_progress and main
    model = session.new_model(seed)
    examples, skipped = session.task.train_examples(train)
    if not examples:
        raise PtuneError(f"{train.source}: no usable training rows ({skipped} skipped)")
    if skipped and main:
        print(f"note: {skipped} of {len(train)} training rows skipped (target is not a single token)", file=sys.stderr)
    truncated = sum(e.truncated for e in examples)
    if truncated and main:
        print(f"note: {truncated} of {len(examples)} training rows have data fields truncated to fit "
              f"{session.task.renderer.max_length} tokens (virtual tokens and the target are kept)", file=sys.stderr)
    linear_head = model.classifier is not None
    if linear_head and not resume:
        # the prompt is trained against a classifier already fitted to the untrained prompt's states, and the
        # classifier is fitted again to the trained prompt's states at the end (below); only the encoder takes steps
        session.task.fit_head(model, examples, tc.eval_batch_size, session.device)
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    accum = tc.grad_accum
    batches_per_epoch = math.ceil(len(examples) / tc.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)  # an optimizer step takes up to grad_accum batches
    total = tc.max_steps or tc.epochs * steps_per_epoch
    if linear_head and model.encoder.n_virtual == 0:
        total = 0  # the linear probe: nothing but the classifier, fitted above and again below
    warmup = int(tc.warmup_ratio * total)
    metric = cfg.metric
    prog = Progress()
    if resume:
        def load():
            if out_dir is None or not checkpoint.has_state(out_dir):
                raise PtuneError(f"--resume: {out_dir} holds no training state to resume from")
            encoder_state, saved = checkpoint.load_state(out_dir, optimizer)
            return encoder_state, saved, optimizer.state_dict() if world > 1 else None

        # the main process reads the state (--out need not be shared between machines) and hands it to the others
        encoder_state, saved, opt_state = on_main(acc, load)
        if not main:
            optimizer.load_state_dict(opt_state)
        try:
            model.load_trainable_state(encoder_state)
            prog = Progress(**saved)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{out_dir / checkpoint.STATE}: does not fit this config's encoder ({err}); "
                                  "was the config changed since?") from None
        if prog.done:
            if main:
                print(f"{out_dir}: training already finished at step {prog.step}; nothing to resume",
                      file=sys.stderr)
            return model, prog

    step_module = _Step(model, session.task.make_loss(examples), sharded=world > 1)
    share_prefix = tc.share_prefix and model.can_score_continuations and not linear_head  # (pools every position)
    if world > 1:
        # DDP syncs the encoder only: the frozen base's weights and buffers (identical on every process) are never
        # broadcast, at the start or at each forward
        frozen = [n for n, p in step_module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in step_module.named_buffers()]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step_module, frozen)
    step_fn, opt = acc.prepare(step_module, optimizer)

    def save_state(plot: bool = True):
        def save():
            checkpoint.save_state(out_dir, encoder_state=model.trainable_state(), optimizer=optimizer,
                                  progress=prog.__dict__)
            write_metrics(out_dir, prog.history, metric, plot)

        if out_dir is not None:
            on_main(acc, save)

    best_in_memory: dict = {}  # without an output folder, the best encoder is kept here instead

    def save_best():
        if out_dir is not None:
            save_inference(session, model, out_dir, seed=seed,
                           extra={"training": {"step": prog.step, "metric": metric, "best": prog.best}})
        elif dev is not None:
            best_in_memory.update({k: v.detach().clone() for k, v in model.trainable_state().items()})

    def evaluate_and_keep() -> tuple[bool, tuple, dict]:
        record = {"step": prog.step, "epoch": prog.epoch + prog.step_in_epoch / steps_per_epoch}
        if dev is None:
            prog.history.append(record | {"kind": "checkpoint"})
            save_best()
            return False, (prog.best, prog.best_step, prog.bad_evals), prog.history[-1]
        metrics = evaluate(model, session, dev)
        prog.history.append(record | {"kind": "dev", **metrics})
        value = metrics.get(metric)
        if value is not None and better(metric, value, prog.best):
            prog.best, prog.best_step, prog.bad_evals = value, prog.step, 0
            save_best()
        else:
            prog.bad_evals += 1
        model.train()
        stop = bool(tc.patience) and prog.bad_evals >= tc.patience
        return stop, (prog.best, prog.best_step, prog.bad_evals), prog.history[-1]

    def run_eval() -> bool:
        """Evaluate (on the main process), keep the best; True when early stopping says stop (on every process)."""
        stop, counters, record = on_main(acc, evaluate_and_keep)
        if not main:  # the others keep the main process's counters and history: all agree on what comes next
            prog.best, prog.best_step, prog.bad_evals = counters
            prog.history.append(record)
        return stop

    def micro_step(rows: list[int], last: bool, scale: float) -> float:
        """Forward and backward this process's shard of one global batch (gradients are all-reduced after the
        ``last`` batch of a step only); return the global batch's mean loss (over target tokens or rows)."""
        shard = rows[rank::world]
        batch = session.task.batch([examples[i] for i in (shard or rows[:1])], session.device, share_prefix)
        with contextlib.nullcontext() if last else acc.no_sync(step_fn):
            nll, count = step_fn(batch)
            if world == 1:
                loss = nll  # already the mean
                value = loss.item()
            else:
                if not shard:  # a short last batch left this process nothing: it still takes part, with weight 0
                    nll, count = nll * 0, count * 0
                totals = acc.reduce(torch.stack([nll.detach().float(), count.float()]), "sum")
                weight = max(totals[1].item(), 1e-12)  # target tokens (or row weights) in the global batch
                value = totals[0].item() / weight
                loss = nll * (world / weight)  # DDP averages the N gradients: their mean is the global mean's
            acc.backward(loss * scale if scale != 1 else loss)
        return value

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
                groups = [batches[i:i + accum] for i in range(0, len(batches), accum)]
                while prog.step_in_epoch < len(groups) and prog.step < total:
                    hit = ctrl_c.hit
                    if world > 1:  # every process stops at the same step
                        hit = bool(acc.reduce(torch.tensor(float(hit), device=acc.device), "sum").item())
                    if hit:
                        raise KeyboardInterrupt
                    group = groups[prog.step_in_epoch]
                    # accelerator.backward divides by grad_accum; a short last group is weighted as a whole one
                    scale = accum / len(group)
                    losses = [micro_step(rows, j == len(group) - 1, scale) for j, rows in enumerate(group)]
                    loss_value = losses[0] if len(losses) == 1 else sum(losses) / len(losses)
                    if not math.isfinite(loss_value):
                        raise PtuneError(f"loss became {loss_value} at step {prog.step}; stopped{kept}; try a lower "
                                         "train.lr")
                    # the norm is taken even without clipping: an infinite gradient would turn the weights into NaN
                    if acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                DistributedType.MULTI_GPU):
                        acc.unscale_gradients()  # fp16's loss scale, if any; DDP's gradients are already averaged
                        norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or math.inf)
                    else:  # DeepSpeed, FSDP: their own way
                        norm = acc.clip_grad_norm_(params, tc.grad_clip or math.inf)
                    if not torch.isfinite(norm) and acc.scaler is None:  # fp16 on a GPU: the loss scaler skips it
                        raise PtuneError(f"gradient norm became {norm.item()} at step {prog.step}; stopped{kept}; "
                                         "try a lower train.lr")
                    for group_ in optimizer.param_groups:
                        group_["lr"] = tc.lr * lr_factor(prog.step, total, warmup)
                    whole = False
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    prog.step += 1
                    prog.step_in_epoch += 1
                    prog.history.append({"kind": "train", "step": prog.step, "loss": loss_value,
                                         "lr": optimizer.param_groups[0]["lr"]})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", epoch=prog.epoch + 1)
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
                if prog.step_in_epoch >= len(groups):
                    whole = False
                    prog.epoch += 1
                    prog.step_in_epoch = 0
                    if not tc.eval_every and run_eval():
                        prog.done = True
                    save_state()
                    whole = True
            whole = False
            if (prog.history and prog.history[-1].get("kind") == "train") or total == 0:
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
                         "examples_per_s": prog.step * tc.batch_size * accum / max(elapsed, 1e-9)})
    if out_dir is not None:
        on_main(acc, lambda: write_metrics(out_dir, prog.history, metric))
    # the model to return is the best one seen (read by the main process, handed to the others)
    if out_dir is not None and dev is not None:
        enc = on_main(acc, lambda: checkpoint.load_model(out_dir)[1]
                      if (out_dir / checkpoint.MANIFEST).is_file() else None)
        if enc is not None:
            model.load_trainable_state(enc)
    elif dev is not None and best_in_memory:
        model.load_trainable_state(best_in_memory)
    model.eval()
    refit = linear_head
    if refit:
        session.task.fit_head(model, examples, tc.eval_batch_size, session.device)
    if session.task.cfg.type == "classification" and session.task.cfg.calibrate == "prior":
        fit_label_offsets(session, model, train, seed)
        refit = True
    if refit and out_dir is not None and (out_dir / checkpoint.MANIFEST).is_file():
        # the kept model, now with its final classifier and/or offsets
        training = checkpoint.load_model(out_dir)[0].get("training")
        on_main(acc, lambda: save_inference(session, model, out_dir, seed=seed, extra={"training": training}))
    return model, prog


def fit_label_offsets(session: Session, model: PTuningModel, train: Table, seed: int) -> None:
    """``task.calibrate: prior``: per-label offsets that make the model's mean label distribution on a seeded sample
    of the unlabeled rows equal the training rows' label shares. A model that ranks rows well but puts its
    threshold in the wrong place (all rows to the majority label, say) is moved back; the offsets are fitted on
    rows whose labels nobody knows, so no held-out label is used."""

    if session.unlabeled is None or not session.unlabeled.rows:
        raise PtuneError("task.calibrate is 'prior' but no unlabeled rows were read (data.unlabeled)")
    pool = list(session.unlabeled.rows)
    random.Random(seed).shuffle(pool)
    pool = pool[:session.task.cfg.prior_rows]
    labels = session.task.labels
    counts = torch.tensor([0.5] * len(labels.labels), dtype=torch.float64)  # +0.5: no label's share is zero
    for row in train.rows:
        counts[labels.index(row[session.task.cfg.label_column])] += 1
    logp = session.task.raw_scores(model, pool, session.cfg.train.eval_batch_size, session.device)
    model.label_offsets = prior_offsets(logp, counts / counts.sum()).to(logp.device)


def save_inference(session: Session, model: PTuningModel, out_dir: Path, extra: dict | None = None,
                   seed: int | None = None) -> None:
    """Write the inference checkpoint; ``seed``: the training seed actually used, where a caller overrode the
    config's (ensemble members), so the manifest says how to retrain it."""
    was_training = model.training
    model.eval()
    table = model.prompt_table()
    labels = session.task.labels.to_dict() if session.task.labels else None
    config = session.cfg.to_dict()
    if seed is not None:
        config["train"]["seed"] = seed
    if model.label_offsets is not None:
        extra = dict(extra or {}) | {"label_offsets": dict(zip(session.task.labels.labels,
                                                               model.label_offsets.tolist()))}
    checkpoint.save_model(out_dir, config=config, labels=labels, base=session.base.identity,
                          encoder_state=model.trainable_state(), prompts=table, extra=extra)
    model.train(was_training)
