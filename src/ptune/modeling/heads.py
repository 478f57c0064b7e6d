"""Heads over the frozen model: its LM head made fast and exact (``adapt_lm_head``, ``float32_scoring``), the
linear classifier of ``task.head: linear`` (``LinearHead``) and the forward pass that stops at one block to feed it
(``block_output``)."""

from __future__ import annotations

import contextlib
import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

SCORING_TOP_K = 64  # scoring: the most likely tokens per position whose logits are recomputed in float32


def lm_head(base: nn.Module) -> nn.Module | None:
    """The model's output projection to the vocabulary, where it has one."""
    return base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None


def adapt_lm_head(base: nn.Module) -> None:
    """Make the frozen model's LM head fast (``fold_head_input``) and exact (``float32_head``); idempotent, so every
    model over the same base shares one adapted head.

    This is the one place where ptune changes a module of the base model after it is built, and it does so on the
    head's instance (a forward pre-hook and, for a bfloat16/float16 head, the instance's ``forward``), leaving its
    weights, its state dict and every other module as they were. A head of ptune's own over the decoder body's
    hidden states would leave the base untouched, but the logits are not the head's output alone in every family:
    transformers applies family-specific steps after the head inside each model's forward (Gemma 2's
    ``final_logit_softcapping``, Cohere's ``logit_scale``, ...), and ``base.generate`` calls the base's own head.
    Adapting the head in place keeps every family's logits exactly its own."""
    head = lm_head(base)
    if isinstance(head, nn.Module):
        fold_head_input(head)
        float32_head(head)


def dense_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the first argument copied to a dense layout where its strides are not those of a freshly
    allocated tensor of its shape."""
    x = args[0]
    dense = [1] * x.dim()  # the strides of a freshly allocated tensor of this shape
    for i in range(x.dim() - 2, -1, -1):
        dense[i] = dense[i + 1] * x.shape[i + 1]
    if list(x.stride()) != dense:  # (is_contiguous() overlooks odd strides on size-1 dims; matmul does not)
        x = x.clone(memory_format=torch.contiguous_format)
    return (x,) + args[1:]


def fold_head_input(head: nn.Module) -> None:
    """Make the LM head's input contiguous. With ``logits_to_keep`` the head gets a strided slice (B, k, d) of the
    hidden states, which ``F.linear`` cannot fold into one matrix product: torch then runs a batched product against
    the (V, d) weight expanded and copied once per row (450 MB per step for a batch of 8 here, half the step's
    time). Copying the small slice instead gives the same numbers."""
    if not getattr(head, "_ptune_contiguous", False):
        head.register_forward_pre_hook(dense_input)
        head._ptune_contiguous = True


def float32_head(head: nn.Module) -> None:
    """Compute the LM head in float32 when the model runs in bfloat16 or float16. Label scores are differences of
    logits of size 16 to 64, which bfloat16 holds to steps of 0.125 to 0.25: two labels' log-odds then tie exactly
    for many rows and the tie, not the model, picks the label. The head's weight is copied once to float32 (the
    base's own, maybe tied, weight is untouched).

    Training and evaluation compute every logit in float32. Label scoring (``float32_scoring``) computes the
    vocabulary in bfloat16, about 4x faster on this CPU, then recomputes in float32 the logits that decide the
    scores: the scored tokens' (exact, so no ties) and each position's ``SCORING_TOP_K`` largest, which carry nearly
    all of the log-softmax normaliser (the effect on real label scores is measured in docs/benchmarks.md; the
    tests bound the difference on a tiny model)."""
    if not isinstance(head, nn.Linear) or head.weight.dtype not in (torch.bfloat16, torch.float16):
        return
    if getattr(head, "_ptune_float32", False):
        return
    # non-persistent buffers: they follow the model's .to(device) and stay out of every state dict
    head.register_buffer("_ptune_weight32", head.weight.detach().float(), persistent=False)
    head.register_buffer("_ptune_bias32", None if head.bias is None else head.bias.detach().float(), persistent=False)
    head._ptune_scored_ids = None  # set within float32_scoring
    head.forward = functools.partial(float32_linear, head)  # the instance's forward; hooks still run around it
    head._ptune_float32 = True


TOP_K_ROWS = 512  # positions whose top-k weight rows are copied at once: a bounded copy however many positions


def top_logits(head: nn.Linear, x32: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(..., k) float32 logits of each position's own tokens ``top`` (..., k) from its float32 input ``x32``
    (..., d), ``TOP_K_ROWS`` positions at a time."""
    flat_x, flat_top = x32.reshape(-1, x32.shape[-1]), top.reshape(-1, top.shape[-1])
    parts = []
    for i in range(0, max(1, flat_top.shape[0]), TOP_K_ROWS):
        ids = flat_top[i:i + TOP_K_ROWS]
        part = (head._ptune_weight32[ids] @ flat_x[i:i + TOP_K_ROWS].unsqueeze(-1)).squeeze(-1)  # (n, k)
        parts.append(part if head._ptune_bias32 is None else part + head._ptune_bias32[ids])
    return torch.cat(parts).view(top.shape)


def float32_linear(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``float32_head``'s forward: (..., d) -> (..., V) float32 logits. Outside ``float32_scoring`` (or while
    autograd records) every logit is computed in float32; within, the vocabulary in the head's dtype and the scored
    tokens and each position's ``SCORING_TOP_K`` largest again in float32."""
    scored = head._ptune_scored_ids
    if scored is None or torch.is_grad_enabled():
        return F.linear(x.float(), head._ptune_weight32, head._ptune_bias32)
    logits = F.linear(x.to(head.weight.dtype), head.weight, head.bias).float()  # (..., V), bfloat16-rounded
    x32 = x.float()
    k = min(SCORING_TOP_K, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # (..., k): a different k rows of the weight per position
    logits.scatter_(-1, top, top_logits(head, x32, top))
    # the scored tokens are the same at every position: one matrix product, not a copy of their weight rows per
    # position (with many labels' words, hundreds of rows copied for every position: a tenth of the scoring time)
    scored = scored.to(logits.device)
    bias = None if head._ptune_bias32 is None else head._ptune_bias32[scored]
    logits[..., scored] = F.linear(x32, head._ptune_weight32[scored], bias)
    return logits


@contextlib.contextmanager
def float32_scoring(base: nn.Module, token_ids: list[int]):
    """Within: the base's float32 head (``float32_head``) computes the vocabulary in bfloat16 and recomputes in
    float32 only ``token_ids`` (the words being scored) and each position's most likely tokens. No effect on a
    float32 model or while autograd records."""
    head = lm_head(base)
    if not getattr(head, "_ptune_float32", False):
        yield
        return
    head._ptune_scored_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
    try:
        yield
    finally:
        head._ptune_scored_ids = None


POOLINGS = ("mean", "last")  # task.head_pooling: how a row's states at one layer become one vector


class LinearHead(nn.Module):
    """``task.head: linear``: the pooled hidden state of one layer, standardised with the training rows' mean and
    spread (the middle layers of a decoder have a few dimensions hundreds of times larger than the rest), then a
    linear map to the labels. ``fit`` solves its convex problem to convergence: with 50 rows, a few dozen Adam
    steps leave a linear classifier far from its optimum.

    Args:
        dim (`int`): the width d of the pooled hidden states.
        n_labels (`int`): the number of labels.
        layer (`int`): which block's output is pooled (1-based; ``task.head_layer``).
        pooling (`str`, defaults to ``"mean"``): ``mean`` of the row's real positions, or the ``last`` real
            position's state (``task.head_pooling``).

    Inputs:
        features (`torch.Tensor`): (B, d) pooled hidden states (``PTuningModel.pooled_states``).

    Returns:
        `torch.Tensor`: (B, labels) logits.

    Example:
        >>> head = LinearHead(dim=576, n_labels=2, layer=15)
        >>> head.fit(features, labels)  # (N, 576), (N,)
        >>> head(features).shape
        torch.Size([N, 2])
    """

    def __init__(self, dim: int, n_labels: int, layer: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.layer = layer  # 1-based: the output of the layer-th block is pooled
        self.pooling = pooling
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.linear = nn.Linear(dim, n_labels)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) states and (B, T) attention mask -> (B, d): the mean over real positions, or the state at the
        last real one (where a causal model has read the whole row; pads on either side are skipped)."""
        keep = mask.unsqueeze(-1).float()
        if self.pooling == "mean":
            return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
        places = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        last = (mask.long() * places).argmax(1)  # (B,): the highest real position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, labels)
        return self.linear((features.float() - self.mean) / self.scale)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Standardise on ``features`` (N, d) and fit the weights by L2-regularised logistic regression (penalty
        1/(2N) |W|^2, scikit-learn's C=1), ``weights`` per label, with L-BFGS."""
        features = features.float()
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0, correction=0) + 1e-4)
        x = (features - self.mean) / self.scale
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        opt = torch.optim.LBFGS(self.linear.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")
        w = None if weights is None else weights.to(x.device).float()

        def objective():
            opt.zero_grad()
            value = F.cross_entropy(self.linear(x), labels.to(x.device), weight=w) \
                + 0.5 / len(x) * self.linear.weight.pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(objective)


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The base model's list of transformer blocks (``model.layers`` for Llama-likes, ``transformer.h`` for GPT-2)."""
    n = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", None)
    for module in base.base_model.children():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(base).__name__}")


class _StopAt(Exception):
    """Carries a block's output out of the forward pass: the blocks above it and the LM head never run."""

    def __init__(self, hidden):
        self.hidden = hidden


_stop_here = threading.local()  # which block ends the current thread's forward pass; none: None


def _stop_hook(module, args, output):
    if getattr(_stop_here, "block", None) is module:
        raise _StopAt(output[0] if isinstance(output, tuple) else output)


def block_output(base: nn.Module, layer: int, **forward_kwargs) -> torch.Tensor:
    """(B, T, d): the output of the ``layer``-th block (1-based) of ``base``'s decoder body for these inputs.

    The forward pass stops there, so the blocks above it never run. transformers offers no "stop at block k"
    switch, and ``output_hidden_states`` would run them all; a forward hook on that block, there for this call only
    (and inert for other threads running the same model meanwhile), ends the pass with an exception that carries
    the block's output out."""
    block = decoder_layers(base)[layer - 1]
    handle = block.register_forward_hook(_stop_hook)
    _stop_here.block = block
    try:
        base.base_model(**forward_kwargs)
    except _StopAt as stop:
        return stop.hidden
    finally:
        _stop_here.block = None
        handle.remove()
    raise RuntimeError(f"block {layer} never ran")
