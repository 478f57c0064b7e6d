"""Accelerate set-up: one process or several (``accelerate launch``, torchrun), mixed precision, gradient
accumulation; the module Accelerate prepares; gradient clipping; running a step on the main process only."""

from __future__ import annotations

import os

import torch

from ..config import Config
from ..errors import ConfigError
from ..modeling.base import loss_scaling
from ..modeling.ptuning import PTuningModel


class LossStep(torch.nn.Module):
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


def make_accelerator(tc, device: torch.device, base_dtype: torch.dtype = torch.float32):
    """The run's ``accelerate.Accelerator``: data-parallel processes (under ``accelerate launch``/torchrun), mixed
    precision and gradient accumulation from ``train.mixed_precision`` and ``train.grad_accum``. ptune places the
    model itself (``model.device``; one GPU per process in a distributed run). A float16 frozen model on a GPU
    (``model.dtype: auto`` where the GPU lacks bfloat16) gets Accelerate's loss scaler without autocast."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import AutocastKwargs

    precision, handlers = tc.mixed_precision, []
    if precision == "no" and device.type == "cuda" and loss_scaling(base_dtype):
        # the model already runs in float16 and the encoder stays float32: only the scaler is wanted
        precision, handlers = "fp16", [AutocastKwargs(enabled=False)]

    if PartialState._shared_state and PartialState().num_processes == 1:
        # one process may train several configs in turn (tests, search, cv); Accelerate keeps its state process-wide
        # and refuses a second precision or device kind, so a single process starts it afresh for every run
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    try:
        return Accelerator(mixed_precision=precision, gradient_accumulation_steps=tc.grad_accum,
                           cpu=device.type == "cpu", device_placement=False, kwargs_handlers=handlers)
    except ValueError as err:  # a precision this hardware lacks
        raise ConfigError(f"train.mixed_precision={tc.mixed_precision!r}: {' '.join(str(err).split())}") from None


def check_batch_split(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                          f"({processes}): each process takes batch_size / {processes} rows of every batch")


def clip_gradients(acc, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``params`` to ``max_norm`` (``math.inf``: measure only); return their total norm (a
    0-dim tensor), taken even without clipping, so that an infinite gradient is caught before it reaches the weights."""
    from accelerate.utils import DistributedType

    if acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        acc.unscale_gradients()  # fp16's loss scale, if any; DDP's gradients are already averaged
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return acc.clip_grad_norm_(params, max_norm)  # DeepSpeed, FSDP: their own way


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
