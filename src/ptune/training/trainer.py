"""
AdamW on the encoder only, linear warmup and decay, gradient clipping, evaluation on dev every epoch (or every N
steps), best checkpoint kept, early stopping, resumable state saved atomically, metrics as JSONL and a PNG plot.
On the CPU a run is repeatable: data order comes from (seed, epoch), the frozen model has no dropout, and the
encoder has none either.

``Trainer`` is the loop, one method a step of it (``setup``, ``resume``, ``step``, ``evaluate``, ``save``,
``train``); ``fit`` builds one and runs it, after self-training has grown the training rows or distillation has
labelled unlabeled rows where the config asks.
"""

from __future__ import annotations

import contextlib
import functools
import math
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
from ..evaluator import evaluate
from ..modeling.base import packed_bin_tokens
from ..modeling.components import Supports
from ..modeling.ptuning import PTuningModel
from ..session import Session
from ..tasks.calibration import fit_prior_offsets
from .distillation import SoftRows, distil
from .distributed import LossStep, check_batch_split, clip_gradients, make_accelerator, on_main
from .logging import MetricLogger
from .saving import save_inference
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
    """Everything needed to continue a run exactly where it stopped (saved as ``state.json``'s ``progress``)."""
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    done: bool = False


def packing_bins(model: PTuningModel, tc, supports: Supports) -> int:
    """Places per bin where this model's training batches are packed (``train.packing``), else 0 (padded batches):
    where the session's head and prompt allow it (``supports.packing``: label words, a causal model of a family
    ``modeling.base.packable`` accepts), for a model that scores continuations, without ``compile`` or a sliding
    window that ``max_length`` reaches (a custom mask leaves the window out).

    Args:
        model (PTuningModel): the model to train.
        tc: the ``train`` section of the config.
        supports (Supports): what the session's head and prompt allow (``Session.supports``).

    Returns:
        int: the bin size, or 0.

    Example:
        >>> packing_bins(session.new_model(), session.cfg.train, session.supports)  # doctest: +SKIP
        345
    """
    window = getattr(model, "window", None)
    if not tc.packing or tc.compile or not supports.packing or not model.can_score_continuations \
            or (window is not None and tc.max_length >= window):
        return 0
    return packed_bin_tokens(model.base.config)


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


class Trainer:
    """Trains a fresh (or resumed) prompt encoder on ``train`` and keeps the best on ``dev`` (the last one without
    dev).

    Under ``accelerate launch`` with N processes, each global batch of ``train.batch_size`` rows (the same order as a
    single process, from (seed, epoch)) is split into N disjoint shards, one per process; DDP all-reduces the
    encoder's gradients. Each process scales its summed target NLL by N / (target tokens in the whole global batch),
    so the averaged gradient is that of the single-process loss (the mean over the global batch's target tokens).
    Only the main process evaluates, writes files and shows progress; the others follow its decisions.

    Args:
        session (Session): the config, frozen base model and task.
        train (Table): the training rows (already grown by self-training where asked: see ``fit``).
        dev (Table | None): rows that choose the best evaluation and drive early stopping; None keeps the last.
        out_dir (Path | None): where the inference checkpoint, the resumable state (``state.json``),
            ``metrics.jsonl`` and ``curves.png`` go; None writes nothing (the best encoder is kept in memory).
        seed (int | None): the seed of the encoder's initialisation and the data order; None: ``train.seed``.
        show_progress (bool): a progress bar on the main process.
        soft (SoftRows | None): soft-labelled rows trained on beside ``train`` (``distillation``).

    Example:
        >>> trainer = Trainer(session, train, dev, Path("run"))
        >>> trainer.setup()  # or setup(resume=True) to continue from run/state.json
        >>> model, progress = trainer.train()
        >>> progress.step, progress.best
    """

    def __init__(self, session: Session, train: Table, dev: Table | None, out_dir: Path | None = None, *,
                 seed: int | None = None, show_progress: bool = True, soft: SoftRows | None = None):
        self.session = session
        self.train_table = train
        self.soft = soft
        self.dev = dev
        self.out_dir = out_dir
        self.tc = session.cfg.train
        self.metric = session.cfg.metric
        self.seed = self.tc.seed if seed is None else seed
        self.show_progress = show_progress
        self.progress = Progress()
        self._best_in_memory: dict = {}  # without an output folder, the best encoder is kept here instead
        self._whole = True  # False while the state in memory is half-updated (inside a step's update and bookkeeping)

    # -- setup -------------------------------------------------------------------------------------------------------

    def setup(self, resume: bool = False) -> None:
        """Build the accelerator, a fresh seeded model, the optimizer and the schedule; with ``resume``, restore the
        state saved in ``out_dir``. Nothing is trained yet."""
        self._setup_accelerator()
        self._setup_model(fit_head=not resume)
        self._setup_optimizer()
        if resume:
            self.resume()
        self.metrics = MetricLogger(self.progress.history, self.out_dir, self.metric)
        if not self.progress.done:
            self._setup_step()

    def _setup_accelerator(self) -> None:
        self.acc = make_accelerator(self.tc, self.session.device, self.session.base.model.dtype)
        self.world, self.rank, self.main = self.acc.num_processes, self.acc.process_index, self.acc.is_main_process
        check_batch_split(self.tc.batch_size, self.world)

    def _setup_model(self, fit_head: bool) -> None:
        self.model = self.session.new_model(self.seed)
        if self.tc.gradient_checkpointing:
            self.model.use_gradient_checkpointing()
        if self.tc.compile:
            self.model.use_compiled_base()
        self.examples = self._training_examples()
        self.linear_head = self.session.head.fits_classifier
        if self.linear_head and fit_head:
            # the prompt is trained against a classifier already fitted to the untrained prompt's states, and the
            # classifier is fitted again to the trained prompt's states at the end (_finish); only the encoder steps
            self.session.task.fit_head(self.model, self.examples, self.tc.eval_batch_size, self.session.device)

    def _training_examples(self) -> list:
        train, task = self.train_table, self.session.task
        examples, skipped = task.train_examples(train)
        if not examples:
            raise PtuneError(f"{train.source}: no usable training rows ({skipped} skipped)")
        if self.soft is not None:
            examples = examples + task.soft_examples(self.soft.rows, self.soft.probs, self.soft.weight)
        if skipped and self.main:
            print(f"note: {skipped} of {len(train)} training rows skipped (target is not a single token)",
                  file=sys.stderr)
        truncated = sum(e.truncated for e in examples)
        if truncated and self.main:
            print(f"note: {truncated} of {len(examples)} training rows have data fields truncated to fit "
                  f"{task.renderer.max_length} tokens (virtual tokens and the target are kept)", file=sys.stderr)
        return examples

    def _setup_optimizer(self) -> None:
        tc = self.tc
        deep = [] if self.model.deep is None else list(self.model.deep.parameters())  # encoder.deep_tokens
        self.params = [p for p in [*self.model.encoder.parameters(), *deep] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay)
        batches_per_epoch = math.ceil(len(self.examples) / tc.batch_size)
        self.steps_per_epoch = math.ceil(batches_per_epoch / tc.grad_accum)  # a step takes up to grad_accum batches
        self.total = tc.max_steps or tc.epochs * self.steps_per_epoch
        if self.linear_head and self.model.encoder.n_virtual == 0 and self.model.deep is None:
            self.total = 0  # the linear probe: nothing but the classifier, fitted in setup and again in _finish
        self.warmup = int(tc.warmup_ratio * self.total)

    def _setup_step(self) -> None:
        """Wrap the forward and loss for Accelerate (DDP, autocast) and prepare the optimizer."""
        step_module = LossStep(self.model, self.session.task.make_loss(self.examples), sharded=self.world > 1)
        supports = self.session.supports
        self.pack = packing_bins(self.model, self.tc, supports)
        # the shared-prefix batching scores label continuations (a linear head pools every position instead); a
        # checkpointed block run again in the backward pass would append its keys to the prefix's cache a second
        # time, unless the batch is packed (each bin then holds the prefix itself, no cache)
        self.share_prefix = self.tc.share_prefix and supports.prefix_sharing and self.model.can_score_continuations \
            and (self.pack > 0 or not self.tc.gradient_checkpointing)
        if self.world > 1:
            # DDP syncs the encoder only: the frozen base's weights and buffers (identical on every process) are
            # never broadcast, at the start or at each forward
            frozen = [n for n, p in step_module.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in step_module.named_buffers()]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step_module, frozen)
        self.step_fn, self.opt = self.acc.prepare(step_module, self.optimizer)

    def resume(self) -> None:
        """Restore the encoder, the optimizer's moments and the progress (history included) from ``out_dir``. The
        main process reads them (--out need not be shared between machines) and hands them to the others."""
        out_dir = self.out_dir

        def load():
            if out_dir is None or not checkpoint.has_state(out_dir):
                raise PtuneError(f"--resume: {out_dir} holds no training state to resume from")
            encoder_state, saved = checkpoint.load_state(out_dir, self.optimizer)
            return encoder_state, saved, self.optimizer.state_dict() if self.world > 1 else None

        encoder_state, saved, opt_state = on_main(self.acc, load)
        if not self.main:
            self.optimizer.load_state_dict(opt_state)
        try:
            self.model.load_trainable_state(encoder_state)
            self.progress = Progress(**saved)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{out_dir / checkpoint.STATE}: does not fit this config's encoder ({err}); "
                                  "was the config changed since?") from None
        if self.progress.done and self.main:
            print(f"{out_dir}: training already finished at step {self.progress.step}; nothing to resume",
                  file=sys.stderr)

    # -- the loop ----------------------------------------------------------------------------------------------------

    def train(self) -> tuple[PTuningModel, Progress]:
        """Run the steps left (after ``setup``), then restore the best model and finish it.

        Returns:
            tuple[PTuningModel, Progress]: the best model seen (the last without dev), in eval mode, with its final
            classifier and label offsets where the config has them; and the run's progress and history.
        """
        if self.progress.done:  # a finished run resumed: nothing to do
            return self.model, self.progress
        start = time.perf_counter()
        self._run()
        elapsed = time.perf_counter() - start
        self.metrics.log({"kind": "summary", "seconds": elapsed, "steps": self.progress.step,
                          "examples_per_s": self.progress.step * self.tc.batch_size * self.tc.grad_accum
                          / max(elapsed, 1e-9)})
        if self.out_dir is not None:
            on_main(self.acc, self.metrics.write)
        self._restore_best()
        self._finish()
        return self.model, self.progress

    def _run(self) -> None:
        """The epochs, under the Ctrl-C handler, turning an interruption into an error that says what was kept."""
        bar = tqdm(total=self.total, initial=self.progress.step, desc="train", unit="step",
                   disable=not (self.show_progress and self.main))
        self.model.train()
        with _CtrlC() as ctrl_c:
            try:
                self._epochs(ctrl_c, bar)
            except KeyboardInterrupt:
                raise self._interrupted() from None
            finally:
                bar.close()

    def _epochs(self, ctrl_c: _CtrlC, bar) -> None:
        prog = self.progress
        while prog.step < self.total and not prog.done:
            groups = self._epoch_groups(prog.epoch)
            while prog.step_in_epoch < len(groups) and prog.step < self.total:
                self._stop_if_interrupted(ctrl_c)
                loss = self.step(groups[prog.step_in_epoch])
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=prog.epoch + 1)
                if self._after_step():
                    break
            if prog.step_in_epoch >= len(groups):
                self._end_epoch()
        self._whole = False
        if (self.metrics.last or {}).get("kind") == "train" or self.total == 0:
            self.evaluate()  # the steps since the last evaluation (max_steps inside an epoch, or eval_every)
        prog.done = True
        self.save(plot=False)  # train() draws the curves once, after the summary record

    def _epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's global batches of row indices (order from (seed, epoch)), grouped grad_accum to a step."""
        size, accum = self.tc.batch_size, self.tc.grad_accum
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        batches = [order[i:i + size].tolist() for i in range(0, len(order), size)]
        return [batches[i:i + accum] for i in range(0, len(batches), accum)]

    def _stop_if_interrupted(self, ctrl_c: _CtrlC) -> None:
        hit = ctrl_c.hit
        if self.world > 1:  # every process stops at the same step
            hit = bool(self.acc.reduce(torch.tensor(float(hit), device=self.acc.device), "sum").item())
        if hit:
            raise KeyboardInterrupt

    def step(self, group: list[list[int]]) -> float:
        """One optimizer step over ``group`` (up to grad_accum global batches of row indices); return its loss."""
        prog = self.progress
        scale = self.tc.grad_accum / len(group)  # backward divides by grad_accum: a short last group counts whole
        losses = [self._micro_step(rows, j == len(group) - 1, scale) for j, rows in enumerate(group)]
        loss = losses[0] if len(losses) == 1 else sum(losses) / len(losses)
        if not math.isfinite(loss):
            raise self._diverged("loss", loss)
        norm = clip_gradients(self.acc, self.params, self.tc.grad_clip or math.inf)
        if not torch.isfinite(norm) and self.acc.scaler is None:  # fp16 on a GPU: the loss scaler skips the step
            raise self._diverged("gradient norm", norm.item())
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.tc.lr * lr_factor(prog.step, self.total, self.warmup)
        self._whole = False
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        prog.step += 1
        prog.step_in_epoch += 1
        self.metrics.log({"kind": "train", "step": prog.step, "loss": loss,
                          "lr": self.optimizer.param_groups[0]["lr"]})
        return loss

    def _micro_step(self, rows: list[int], last: bool, scale: float) -> float:
        """Forward and backward this process's shard of one global batch (gradients are all-reduced after the
        ``last`` batch of a step only); return the global batch's mean loss (over target tokens or rows)."""
        acc, world = self.acc, self.world
        shard = rows[self.rank::world]
        batch = self.session.task.batch([self.examples[i] for i in (shard or rows[:1])], self.session.device,
                                        self.share_prefix, self.pack)
        with contextlib.nullcontext() if last else acc.no_sync(self.step_fn):
            nll, count = self.step_fn(batch)
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

    def _after_step(self) -> bool:
        """Evaluate and save where eval_every and save_every say; True when early stopping ends the run."""
        tc, prog = self.tc, self.progress
        stop = False
        if tc.eval_every and prog.step % tc.eval_every == 0:
            stop = self.evaluate()
        if tc.save_every and prog.step % tc.save_every == 0:
            self.save(plot=False)  # the curves are redrawn at evaluations; every step would be slow
        if stop:
            prog.done = True
        self._whole = True
        return stop

    def _end_epoch(self) -> None:
        prog = self.progress
        self._whole = False
        prog.epoch += 1
        prog.step_in_epoch = 0
        if not self.tc.eval_every and self.evaluate():
            prog.done = True
        self.save()
        self._whole = True

    def _diverged(self, what: str, value: float) -> PtuneError:
        kept = f"; the last good checkpoint is kept in {self.out_dir}" if self.out_dir else ""
        return PtuneError(f"{what} became {value} at step {self.progress.step}; stopped{kept}; try a lower train.lr")

    def _interrupted(self) -> PtuneError:
        """The error for Ctrl-C: the state is saved when the one in memory is that of a whole step."""
        step, out_dir = self.progress.step, self.out_dir
        if out_dir is None:
            return PtuneError(f"interrupted at step {step}")
        if self._whole:
            self.save()
            return PtuneError(f"interrupted at step {step}; state saved; resume with: ptune train CONFIG "
                              f"--out {out_dir} --resume")
        return PtuneError(f"interrupted inside step {step}; the state saved before it is kept; resume with: "
                          f"ptune train CONFIG --out {out_dir} --resume")

    # -- evaluation and checkpoints ----------------------------------------------------------------------------------

    def evaluate(self) -> bool:
        """Evaluate on dev (on the main process) and keep the best; return True when early stopping says stop. The
        other processes take the main process's counters and record, so all agree on what comes next."""
        stop, counters, record = on_main(self.acc, self._evaluate_and_keep)
        if not self.main:
            prog = self.progress
            prog.best, prog.best_step, prog.bad_evals = counters
            self.metrics.log(record)
        return stop

    def _evaluate_and_keep(self) -> tuple[bool, tuple, dict]:
        prog = self.progress
        record = {"step": prog.step, "epoch": prog.epoch + prog.step_in_epoch / self.steps_per_epoch}
        if self.dev is None:
            record = self.metrics.log(record | {"kind": "checkpoint"})
            self._save_best()
            return False, (prog.best, prog.best_step, prog.bad_evals), record
        metrics = evaluate(self.model, self.session, self.dev)
        record = self.metrics.log(record | {"kind": "dev", **metrics})
        value = metrics.get(self.metric)
        if value is not None and better(self.metric, value, prog.best):
            prog.best, prog.best_step, prog.bad_evals = value, prog.step, 0
            self._save_best()
        else:
            prog.bad_evals += 1
        self.model.train()
        stop = bool(self.tc.patience) and prog.bad_evals >= self.tc.patience
        return stop, (prog.best, prog.best_step, prog.bad_evals), record

    def _save_best(self) -> None:
        prog = self.progress
        if self.out_dir is not None:
            save_inference(self.session, self.model, self.out_dir, seed=self.seed,
                           extra={"training": {"step": prog.step, "metric": self.metric, "best": prog.best}})
        elif self.dev is not None:
            self._best_in_memory.update({k: v.detach().clone() for k, v in self.model.trainable_state().items()})

    def save(self, plot: bool = True) -> None:
        """Write the resumable state (encoder, optimizer, progress) and the metrics, on the main process; nothing
        without an output folder."""
        if self.out_dir is None:
            return

        def write():
            checkpoint.save_state(self.out_dir, encoder_state=self.model.trainable_state(), optimizer=self.optimizer,
                                  progress=self.progress.__dict__)
            self.metrics.write(plot)

        on_main(self.acc, write)

    def _restore_best(self) -> None:
        """Load the best model seen (read by the main process, handed to the others) into ``self.model``."""
        out_dir = self.out_dir
        if out_dir is not None and self.dev is not None:
            enc = on_main(self.acc, lambda: checkpoint.load_model(out_dir)[1]
                          if (out_dir / checkpoint.MANIFEST).is_file() else None)
            if enc is not None:
                self.model.load_trainable_state(enc)
        elif self.dev is not None and self._best_in_memory:
            self.model.load_trainable_state(self._best_in_memory)
        self.model.eval()

    def _finish(self) -> None:
        """Refit the linear head to the kept prompt, fit prior offsets, and save the kept model with them."""
        session, model, out_dir = self.session, self.model, self.out_dir
        refit = self.linear_head
        if refit:
            session.task.fit_head(model, self.examples, self.tc.eval_batch_size, session.device)
        if session.task.cfg.type == "classification" and session.task.cfg.calibrate == "prior":
            fit_label_offsets(session, model, self.train_table, self.seed)
            refit = True
        if refit and out_dir is not None and (out_dir / checkpoint.MANIFEST).is_file():
            training = checkpoint.load_model(out_dir)[0].get("training")
            on_main(self.acc, lambda: save_inference(session, model, out_dir, seed=self.seed,
                                                     extra={"training": training}))


def fit(session: Session, train: Table, dev: Table | None, out_dir: Path | None = None, *, resume: bool = False,
        show_progress: bool = True, seed: int | None = None, self_train: bool = True,
        held_out: Table | None = None) -> tuple[PTuningModel, Progress]:
    """Train a fresh (or resumed) encoder on ``train``; keep the best on ``dev`` (the last one without dev).

    With ``train.self_train_rows`` (and ``self_train``), a teacher is trained on ``train`` first and the unlabeled
    rows it is surest of join the training rows (``with_pseudo_labels``); with ``train.distill_teachers``, an
    ensemble of teachers trained on ``train`` labels unlabeled rows with probabilities, which the model trains on
    beside ``train`` (``distillation.distil``). Teachers see ``train`` only, and unlabeled rows equal to ``dev`` or
    ``held_out`` rows are left out. Deterministic, so a resume redoes it alike.

    Args:
        session (Session): the config, frozen base model and task (and the unlabeled rows, where read).
        train (Table): the labelled training rows.
        dev (Table | None): rows that choose the best evaluation and drive early stopping; None keeps the last.
        out_dir (Path | None): the checkpoint folder (inference checkpoint, resumable state, metrics, curves);
            None writes nothing.
        resume (bool): continue from the state saved in ``out_dir``.
        show_progress (bool): a progress bar (main process).
        seed (int | None): overrides ``train.seed`` (encoder initialisation, data order, samples).
        self_train (bool): False skips self-training and distillation even where the config asks for them.
        held_out (Table | None): rows the model is judged on (a cross-validation fold's, a test file's): no
            unlabeled row equal to one of them is labelled by a teacher.

    Returns:
        tuple[PTuningModel, Progress]: the kept model (eval mode) and the run's progress, whose ``history`` holds a
        record per step (``kind`` train), evaluation (dev, or checkpoint without dev) and a closing summary.

    Example:
        >>> session, train, dev = prepare(cfg)
        >>> model, progress = fit(session, train, dev, Path("run"), show_progress=False)
        >>> [h["loss"] for h in progress.history if h["kind"] == "train"][-1]
    """
    seed = session.cfg.train.seed if seed is None else seed
    tc, soft = session.cfg.train, None
    if self_train and tc.self_train_rows:
        train = with_pseudo_labels(session, train, seed, show_progress, exclude=[dev, held_out])
    if self_train and tc.distill_teachers:
        soft = distil(session, train, seed, functools.partial(train_teacher, show_progress=show_progress),
                      exclude=[dev, held_out])
    trainer = Trainer(session, train, dev, out_dir, seed=seed, show_progress=show_progress, soft=soft)
    trainer.setup(resume=resume)
    return trainer.train()


def train_teacher(session: Session, train: Table, soft: SoftRows | None, seed: int,
                  show_progress: bool = False) -> PTuningModel:
    """A teacher: trained by the same loop on ``train`` (and ``soft`` rows, where given), without dev, nothing
    written; its last model, in eval mode.

    Args:
        session (Session): the teacher's session (its template may differ from the run's).
        train (Table): the labelled rows.
        soft (SoftRows | None): soft-labelled rows from a previous round of teachers.
        seed (int): the teacher's seed.
        show_progress (bool): a progress bar while it trains.

    Returns:
        PTuningModel: the trained teacher.

    Example:
        >>> teacher = train_teacher(session, train, None, seed=1)
    """
    trainer = Trainer(session, train, None, None, seed=seed, show_progress=show_progress, soft=soft)
    trainer.setup()
    return trainer.train()[0]


def with_pseudo_labels(session: Session, train: Table, seed: int, show_progress: bool = False,
                       exclude: list[Table | None] = ()) -> Table:
    """Self-training: ``train`` plus the unlabeled rows a teacher trained on it is surest of.

    The teacher is trained by the same loop (no dev, nothing written), then ``self_training.pseudo_labelled``
    chooses the rows, each label taking its share of the training rows.

    Args:
        session (Session): the run's session; ``session.unlabeled`` must hold the unlabeled rows.
        train (Table): the labelled training rows.
        seed (int): the teacher's seed and the seed of the unlabeled sample.
        show_progress (bool): a progress bar while the teacher trains.
        exclude (list[Table | None]): rows (held-out, dev) whose inputs are kept out of the unlabeled sample.

    Returns:
        Table: ``train``'s rows followed by the chosen, self-labelled rows (the same rows, in the same order, for
        the same inputs).

    Example:
        >>> grown = with_pseudo_labels(session, train, seed=1)
        >>> len(grown) - len(train) <= session.cfg.train.self_train_rows
        True
    """
    if session.unlabeled is None:
        raise PtuneError("train.self_train_rows is set but no unlabeled rows were read (data.unlabeled)")
    return pseudo_labelled(session, train, train_teacher(session, train, None, seed, show_progress), seed, exclude)


def fit_label_offsets(session: Session, model: PTuningModel, train: Table, seed: int) -> None:
    """``task.calibrate: prior``: set ``model.label_offsets`` to the per-label offsets that make its mean label
    distribution on a seeded sample of the session's unlabeled rows equal ``train``'s label shares
    (``tasks.calibration.fit_prior_offsets``).

    Args:
        session (Session): a classification session whose ``unlabeled`` rows were read.
        model (PTuningModel): the trained model; its ``label_offsets`` ((labels,)) are set here.
        train (Table): the training rows whose label shares (+0.5 each) are the target.
        seed (int): seeds the sample of ``task.prior_rows`` unlabeled rows.

    Returns:
        None.

    Example:
        >>> fit_label_offsets(session, model, train, seed=1)
        >>> model.label_offsets.shape  # (labels,)
    """
    unlabeled = session.unlabeled.rows if session.unlabeled is not None else None
    model.label_offsets = fit_prior_offsets(session.task, model, train.rows, unlabeled, seed,
                                            session.cfg.train.eval_batch_size, session.device)
