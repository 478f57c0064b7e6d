"""One training loop: train(cfg, out_dir) -> summary. Also cross-validation over the same loop.

AdamW on the encoder only, linear warmup and decay, gradient clipping, evaluation on dev every epoch (or every N
steps), best checkpoint kept, early stopping, resumable state saved atomically, metrics as JSONL and a PNG plot.
On the CPU a run is repeatable: data order comes from (seed, epoch), the frozen model has no dropout, and the
encoder has none either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint
from .config import Config
from .data import Encoded, Table
from .errors import CheckpointError, ConfigError, PtuneError
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
    """Mean target-token NLL (``task.head: linear``: the classifier's mean cross-entropy over rows)."""
    model.eval()
    total, count = 0.0, 0
    bs = session.cfg.train.eval_batch_size
    for start in range(0, len(examples), bs):
        batch = session.task.batch(examples[start:start + bs], session.device)
        if model.classifier is not None:
            logp = F.log_softmax(model.class_logits(batch), dim=-1)
            total += -logp.gather(1, batch["label_index"].unsqueeze(1)).sum().item()
            count += len(logp)
            continue
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


class _Step(torch.nn.Module):
    """What Accelerate prepares (DDP wraps, autocast applies to): one forward of the P-tuning model and the task's
    loss. Sharded (several processes), it returns a shard's summed loss and its weight (target tokens, or row
    weights); one process returns the mean. The frozen base is inside but excluded from DDP's bookkeeping (its
    parameters need no gradient and are never broadcast)."""

    def __init__(self, model: PTuningModel, loss_fn, sharded: bool):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.sharded = sharded

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        total, weight = self.loss_fn(self.model, batch)
        if not self.sharded:  # one process: the mean over the batch
            return total / weight.float().clamp(min=1e-12), None
        return total, weight


def make_accelerator(tc, device: torch.device):
    """The run's ``accelerate.Accelerator``: data-parallel processes (under ``accelerate launch``/torchrun), mixed
    precision and gradient accumulation from ``train.mixed_precision`` and ``train.grad_accum``. ptune places the
    model itself (``model.device``; one GPU per process in a distributed run)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        # one process may train several configs in turn (tests, search, cv); Accelerate keeps its state process-wide
        # and refuses a second precision or device kind, so a single process starts it afresh for every run
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    try:
        return Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum,
                           cpu=device.type == "cpu", device_placement=False)
    except ValueError as err:  # a precision this hardware lacks
        raise ConfigError(f"train.mixed_precision={tc.mixed_precision!r}: {' '.join(str(err).split())}") from None


def check_batch_split(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                          f"({processes}): each process takes batch_size / {processes} rows of every batch")


def on_main(acc, fn):
    """Run ``fn`` on the main process only and hand its result (or its error) to every process, so that all of them
    go on, or stop, together."""
    if acc is None or acc.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box = [None, None]
    if acc.is_main_process:
        try:
            box[0] = fn()
        except Exception as err:  # noqa: BLE001  (re-raised below, on every process)
            box[1] = err
    broadcast_object_list(box, from_process=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


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
    from .tasks import prior_offsets

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


def distributed_state(cfg: Config):
    """Accelerate's process state when this process is one of several (``accelerate launch``, torchrun), else None.
    Starting it joins the process group (gloo on CPUs, NCCL on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate.state import PartialState

    state = PartialState(cpu=cfg.model.device == "cpu")
    return state if state.num_processes > 1 else None


def process_device(cfg: Config) -> torch.device | None:
    """Where this process's copy of the frozen model goes: its own GPU in a multi-GPU run (``model.device`` ``auto``
    or ``cuda``), else wherever ``model.device`` says."""
    state = distributed_state(cfg)
    if state is None or cfg.model.device not in ("auto", "cuda"):
        return None
    return state.device


def prepare(cfg: Config, hold_out_dev: bool = True) -> tuple[Session, Table, Table | None]:
    """Read and check all data first (a bad row stops the run before a model is loaded or a file written).

    ``hold_out_dev``: without a dev file, split ``data.dev_fraction`` of the training rows off as dev. Cross-validation
    passes False: it takes each fold's dev from that fold's training rows (``fold_dev``), so every row is scored."""
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
    session = open_session(cfg, labels=labels, device=process_device(cfg))
    session.task.check(train)
    if dev is not None:
        session.task.check(dev)
    if cfg.data.unlabeled:
        from .session import read_split

        session.unlabeled = read_split(cfg, "unlabeled")
        check_inputs(cfg, template, session.unlabeled, labelled=False)
    if hold_out_dev:
        train, dev = fold_dev(cfg, train, dev, cfg.train.seed)
    return session, train, dev


def fold_dev(cfg: Config, train: Table, dev: Table | None, seed: int) -> tuple[Table, Table | None]:
    """(the rows a model trains on, the dev rows that pick its best epoch and, with ``train.patience``, stop it
    early): the dev file's rows where there is one, else ``data.dev_fraction`` of ``train`` (stratified, seeded; in
    cross-validation, of the fold's own training rows, never its held-out ones); neither: no dev, the last epoch is
    kept. ``prepare`` applies the same rule to a plain training run."""
    if dev is None and cfg.data.dev_fraction:
        return split_dev(cfg, train, cfg.data.dev_fraction, seed)
    return train, dev


def pseudo_labelled(session: Session, train: Table, seed: int, show_progress: bool = False) -> Table:
    """Self-training: ``train`` plus the unlabeled rows a model trained on it is surest of, each label taking its
    share of the training rows (so the majority class does not take them all)."""
    tc = session.cfg.train
    label_column = session.cfg.task.label_column
    teacher, _ = fit(session, train, None, None, show_progress=show_progress, seed=seed, self_train=False)
    pool = list(session.unlabeled.rows)
    random.Random(seed).shuffle(pool)
    pool = pool[:tc.self_train_pool]
    preds = session.predict(teacher, pool)
    labels = session.task.labels.labels
    probs = label_probabilities(session, preds)
    counts = [sum(r[label_column] == l for r in train.rows) for l in labels]
    added = []
    for li, label in enumerate(labels):
        want = round(tc.self_train_rows * counts[li] / len(train.rows))
        mine = [i for i in range(len(pool)) if int(probs[i].argmax()) == li]
        mine.sort(key=lambda i: -float(probs[i, li]))
        added += [{**pool[i], label_column: label} for i in mine[:want]]
    return Table(f"{train.source} + {len(added)} self-labelled rows of {session.unlabeled.source}",
                 train.columns + [c for c in [label_column] if c not in train.columns], train.rows + added)


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Train and write the checkpoint directory; return a summary (best dev metrics, test metrics if given)."""
    out_dir = Path(out_dir)
    dist = distributed_state(cfg)  # None in a single process; else only the main process looks at --out
    if dist is not None:
        check_batch_split(cfg.train.batch_size, dist.num_processes)

    def check_out():
        if not resume and ((out_dir / checkpoint.MANIFEST).exists() or checkpoint.has_state(out_dir)):
            raise PtuneError(f"{out_dir} already holds a checkpoint; choose another --out, or --resume it")
        if resume and not checkpoint.has_state(out_dir):
            raise PtuneError(f"--resume: {out_dir} holds no training state to resume from")

    on_main(dist, check_out)
    session, train_table, dev = prepare(cfg)
    test = None
    if cfg.data.test:
        from .session import read_split

        test = read_split(cfg, "test")
        check_inputs(cfg, session.template, test, labelled=True)
        session.task.check(test)
    for table, what in ((dev, "dev rows"), (test, "test rows")):
        if table is not None and (dist is None or dist.is_main_process):
            report_truncated(session, table, what)
    # no mkdir here: the folder appears with the first checkpoint, so a run that fails on its data writes nothing
    model, prog = fit(session, train_table, dev, out_dir, resume=resume, show_progress=show_progress)

    def summarise() -> dict:
        summary = {"out": str(out_dir), "steps": prog.step, "best_" + cfg.metric: prog.best}
        if dev is not None:
            summary["dev"] = evaluate(model, session, dev)
        if test is not None:
            summary["test"] = evaluate(model, session, test)
        return summary

    return on_main(dist, summarise)  # evaluated once, on the main process; every process returns it


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
                   session: Session | None = None, train_table: Table | None = None, dev_table: Table | None = None,
                   show_progress: bool = True, variants: list[dict] | None = None, ensemble: int = 1) -> dict:
    """k-fold cross-validation over the training rows: held-out metrics per fold, with mean and spread.

    Early stopping inside each fold: with a dev file (``dev_table``) or ``data.dev_fraction``, each fold model keeps
    its best epoch on dev rows that are not in its held-out fold, and stops early after ``train.patience`` bad
    evaluations (``fold_dev``); otherwise it trains for all its epochs.

    ``variants``: prediction-time settings (``task`` fields such as ``calibrate``) to score as well, each on the
    same fold models, so that they cost no extra training; the summary then holds one entry per variant under
    ``variants`` (the first variant's figures are also the summary's own).

    ``ensemble``: train that many models per fold (training seeds ``seed``, ``seed + 100``, ...) and score the
    mean of their label probabilities (classification only); each member's own figures go under ``members``, so
    the two can be compared on the same folds."""
    if ensemble < 1:
        raise PtuneError(f"ensemble must be at least 1, got {ensemble}")
    if session is None:
        session, train_table, dev_table = prepare(cfg, hold_out_dev=False)
    if ensemble > 1 and cfg.task.type != "classification":
        raise PtuneError(f"ensemble averages label probabilities, so it needs a classification task, "
                         f"not {cfg.task.type!r}")
    k = folds or cfg.train.cv_folds
    seeds = seeds or [cfg.train.seed]
    variants = variants or [{}]
    rows = train_table.rows
    key = [r[cfg.task.label_column] if cfg.task.type == "classification" else "" for r in rows]
    task_cfg = session.task.cfg
    needs_offsets = any(v.get("calibrate") == "prior" for v in variants)
    if needs_offsets and session.unlabeled is None:
        raise PtuneError("the variant task.calibrate: prior needs unlabeled rows (data.unlabeled)")
    results: list[list[dict]] = [[] for _ in variants]
    members: list[list[dict]] = [[] for _ in variants]  # each ensemble member alone
    t0 = time.perf_counter()

    def show(seed, f, settings, metrics, what=""):
        if show_progress:
            shown = {k_: round(v_, 4) for k_, v_ in metrics.items() if isinstance(v_, float)}
            label = f" {settings}" if settings else ""
            print(f"seed {seed} fold {f + 1}/{k}{label}{what}: {shown}")

    def fold_model(tr: Table, seed_: int) -> PTuningModel:
        model_, _ = fit(session, *fold_dev(cfg, tr, dev_table, seed_), None, show_progress=show_progress, seed=seed_)
        if needs_offsets and model_.label_offsets is None:  # a prediction-time variant asks for them
            fit_label_offsets(session, model_, tr, seed_)
        return model_

    try:
        for seed in seeds:
            for f, held in enumerate(stratified_folds(key, k, seed)):
                held_set = set(held)
                tr = Table(train_table.source, train_table.columns,
                           [r for i, r in enumerate(rows) if i not in held_set])
                te = Table(f"{train_table.source} fold {f + 1}", train_table.columns, [rows[i] for i in held])
                if ensemble == 1:
                    model = fold_model(tr, seed)
                    for v, settings in enumerate(variants):
                        session.task.cfg = dataclasses.replace(task_cfg, **settings)
                        metrics = evaluate(model, session, te) | {"fold": f + 1, "seed": seed}
                        results[v].append(metrics)
                        show(seed, f, settings, metrics)
                    continue
                probs: list[torch.Tensor | None] = [None] * len(variants)
                for m in range(ensemble):
                    model = fold_model(tr, seed + 100 * m)
                    for v, settings in enumerate(variants):
                        session.task.cfg = dataclasses.replace(task_cfg, **settings)
                        preds = session.predict(model, te.rows)
                        metrics = session.task.metrics(te.rows, preds) | {"fold": f + 1, "seed": seed,
                                                                          "member": m + 1}
                        members[v].append(metrics)
                        show(seed, f, settings, metrics, f" member {m + 1}")
                        p = label_probabilities(session, preds)
                        probs[v] = p if probs[v] is None else probs[v] + p
                for v, settings in enumerate(variants):
                    labels = session.task.labels.labels
                    preds = [{"prediction": labels[int(i)]} for i in probs[v].argmax(-1)]
                    metrics = session.task.metrics(te.rows, preds) | {"fold": f + 1, "seed": seed}
                    results[v].append(metrics)
                    show(seed, f, settings, metrics, f" ensemble of {ensemble}")
    finally:
        session.task.cfg = task_cfg
    seconds = time.perf_counter() - t0
    summaries = [_summarise(runs) | {"settings": settings} for runs, settings in zip(results, variants)]
    if ensemble > 1:
        for s_, runs in zip(summaries, members):
            s_["members"] = _summarise(runs)
    summary = {"folds": k, "seeds": seeds, "seconds": seconds, "ensemble": ensemble,
               **{name: v for name, v in summaries[0].items() if name != "settings"}}
    if len(variants) > 1:
        summary["variants"] = summaries
    return summary


def label_probabilities(session: Session, predictions: list[dict]) -> torch.Tensor:
    """(rows, labels) probabilities from predictions' label scores (log-probabilities, normalised over labels)."""
    labels = session.task.labels.labels
    return torch.softmax(torch.tensor([[p["scores"][l] for l in labels] for p in predictions]), dim=-1)


def _summarise(runs: list[dict]) -> dict:
    """Mean and spread of each metric over the folds (and seeds)."""
    out: dict = {"runs": runs}
    for name in runs[0]:
        values = [r[name] for r in runs if isinstance(r.get(name), float)]
        if values and name not in ("fold", "seed"):
            out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out
