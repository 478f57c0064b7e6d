"""Deep prompts (P-tuning v2): n trained key/value positions before the text at every layer of the frozen model,
held in its KV cache, instead of (or beside) the input-layer virtual tokens.

    DeepPromptEncoder()   (n, L*2*H*D)   the flat table, last axis ordered (layer, key-or-value, kv head, head dim)
                                         as PEFT's prefix tuning stores it: view(n, 2L, H, D), 2l keys, 2l+1 values
    deep_keys_values()    per layer      keys and values (1, H, n, D) for a fresh cache (``scoring.repeated``)

The rows then run as after a prefix n tokens long already in the cache: the attention mask gains n ones on the left
and the position ids count from n (``scoring.after_prefix``), exactly as behind a shared prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .scoring import KeysValues, run_prefix

DEEP_ENCODERS = ("mlp", "table")


@dataclass(frozen=True)
class KVLayout:
    """The shape of a base model's KV cache, which a deep prompt fills: ``layers`` layers of ``heads`` key/value
    heads of width ``head_dim``.

    Example:
        >>> KVLayout(30, 3, 64).width  # SmolLM2-135M: 30 layers x keys and values x 3 heads x 64
        11520
    """
    layers: int
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        """The flat table's width, L*2*H*D."""
        return self.layers * 2 * self.heads * self.head_dim


def kv_layout(base: nn.Module, cache_arg: str) -> KVLayout:
    """The KV cache's layout of ``base``, read from the cache one token leaves (the config can mislead: Falcon's
    multi-query attention keeps one key/value head whatever ``num_attention_heads`` says).

    Args:
        base (`torch.nn.Module`): the frozen causal LM.
        cache_arg (`str`): the name of its KV-cache argument.

    Returns:
        `KVLayout`; raises `ValueError` where the layers' shapes differ (a table of one width cannot fill them).

    Example:
        >>> kv_layout(smollm2, "past_key_values")
        KVLayout(layers=30, heads=3, head_dim=64)
    """
    embeddings = base.get_input_embeddings().weight
    with torch.no_grad():
        kv = run_prefix(base, cache_arg, embeddings.new_zeros(1, 1, embeddings.shape[1]))
    shapes = {tuple(k.shape[1::2]) for k, v in kv} | {tuple(v.shape[1::2]) for k, v in kv}
    if len(shapes) != 1:
        raise ValueError(f"its layers keep keys and values of different shapes (heads, head_dim) {sorted(shapes)}")
    heads, head_dim = shapes.pop()
    return KVLayout(len(kv), heads, head_dim)


class DeepPromptEncoder(nn.Module):
    """The trainable deep prompt: n positions' keys and values at every layer, as one flat table.

    ``mlp`` is P-tuning v2's reparameterisation: an (n, d) embedding through Linear(d, hidden) -> tanh ->
    Linear(hidden, L*2*H*D). ``table`` is the flat table itself, trained directly.

    Args:
        n (`int`): prefix positions per layer (``encoder.deep_tokens``).
        dim (`int`): the base model's embedding width d (the ``mlp`` embedding's width).
        layout (`KVLayout`): the base's KV cache layout.
        kind (`str`, defaults to ``"mlp"``): ``mlp`` or ``table`` (``encoder.deep_encoder``).
        hidden_size (`int`, defaults to 128): the ``mlp``'s hidden width (``encoder.hidden_size``).
        init (`torch.Tensor`, *optional*): (n, L*2*H*D) the ``table``'s start; default N(0, 1), as PEFT's prefix
            tuning starts its table.

    Returns (``forward()``):
        `torch.Tensor`: (n, L*2*H*D) the flat table.

    Example:
        >>> encoder = DeepPromptEncoder(8, 576, KVLayout(30, 3, 64), "table")
        >>> encoder().shape
        torch.Size([8, 11520])
    """

    def __init__(self, n: int, dim: int, layout: KVLayout, kind: str = "mlp", hidden_size: int = 128,
                 init: torch.Tensor | None = None):
        super().__init__()
        if kind not in DEEP_ENCODERS:
            raise ValueError(f"deep prompt encoder {kind!r}: expected one of {', '.join(DEEP_ENCODERS)}")
        self.layout = layout
        self.kind = kind
        if kind == "table":
            start = init.detach().clone().float() if init is not None else torch.randn(n, layout.width)
            self.table = nn.Parameter(start)  # (n, L*2*H*D)
        else:
            self.table = nn.Parameter(torch.randn(n, dim))  # (n, d): the reparameterisation's input
            self.mlp = nn.Sequential(nn.Linear(dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, layout.width))

    @property
    def n_tokens(self) -> int:
        return self.table.shape[0]

    def forward(self) -> torch.Tensor:  # -> (n, L*2*H*D)
        return self.table if self.kind == "table" else self.mlp(self.table)


def deep_keys_values(flat: torch.Tensor, layout: KVLayout, dtype: torch.dtype | None = None) -> KeysValues:
    """Each layer's keys and values (1, H, n, D) from the flat table (n, L*2*H*D) (PEFT's order: along the last
    axis layer, key-or-value, head, head dim), in ``dtype`` (default the table's). ``scoring.repeated`` puts them in
    a fresh cache for a batch.

    Example:
        >>> kv = deep_keys_values(model.deep_table(), model.deep.layout)
        >>> kv[0][0].shape  # layer 0's keys
        torch.Size([1, 3, 8, 64])
    """
    n = flat.shape[0]
    parts = flat.to(dtype or flat.dtype).view(n, 2 * layout.layers, layout.heads, layout.head_dim)
    parts = parts.permute(1, 2, 0, 3).unsqueeze(1)  # (2L, 1, H, n, D)
    return [(parts[2 * layer], parts[2 * layer + 1]) for layer in range(layout.layers)]


def flat_table(kv: KeysValues) -> torch.Tensor:
    """``deep_keys_values``'s inverse: the flat table (n, L*2*H*D) of per-layer keys and values (1, H, n, D) (used
    to start a deep prompt from the keys and values real text leaves in the cache).

    Example:
        >>> torch.equal(flat_table(deep_keys_values(flat, layout)), flat)
        True
    """
    stacked = torch.stack([t[0] for layer in kv for t in layer])  # (2L, H, n, D)
    n = stacked.shape[2]
    return stacked.permute(2, 0, 1, 3).reshape(n, -1)


@torch.no_grad()
def greedy_decode(base: nn.Module, cache_arg: str, inputs: dict, max_new_tokens: int, eos_token_id,
                  pad_token_id: int) -> torch.Tensor:
    """Greedy decoding of left-padded rows behind what their cache already holds (a deep prompt's keys and values):
    ``inputs`` (embeds (B, T, d), attention mask covering the cache and the rows, position ids (B, T), the cache
    under ``cache_arg``) run once, then one token per step on the cache. A row that has given EOS gets pads after
    it, as ``transformers``' ``generate`` does.

    Args:
        base (`torch.nn.Module`): the frozen causal LM.
        cache_arg (`str`): the name of its KV-cache argument (the cache is ``inputs[cache_arg]``).
        inputs (`dict`): the base's keyword inputs for the rows (``PTuningModel.after_shared_prefix``'s).
        max_new_tokens (`int`): the most tokens per row.
        eos_token_id (`int` or `list[int]`), pad_token_id (`int`): ending and padding tokens.

    Returns:
        `torch.Tensor`: (B, at most ``max_new_tokens``) the new tokens.

    Example:
        >>> greedy_decode(model.base, "past_key_values", inputs, 6, tok.eos_token_id, tok.pad_token_id).shape
        torch.Size([4, 6])
    """
    mask, position = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    cache = inputs[cache_arg]
    ends = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else
                        [] if eos_token_id is None else [eos_token_id], device=mask.device)
    logits = base(**dict(inputs, use_cache=True), logits_to_keep=1).logits[:, -1]  # (B, V)
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    tokens = []
    for step in range(max_new_tokens):
        token = logits.argmax(-1).masked_fill(done, pad_token_id)  # (B,)
        tokens.append(token)
        done |= torch.isin(token, ends)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask, position = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1), position + 1
        logits = base(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                      logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]
    return torch.stack(tokens, dim=1) if tokens else mask.new_zeros(mask.shape[0], 0)


def deep_start(n: int, base: nn.Module, cache_arg: str, ids: list[int]) -> torch.Tensor:
    """A flat table (n, L*2*H*D) holding the keys and values the frozen model gives the tokens ``ids`` (cycled or
    cut to n) at places 0..n-1: a deep prompt that starts as that text written before every row.

    Example:
        >>> deep_start(4, model.base, "past_key_values", tok.encode("Is this a complaint ?")).shape
        torch.Size([4, 11520])
    """
    embeddings = base.get_input_embeddings()
    tokens = torch.tensor([[ids[i % len(ids)] for i in range(n)]], device=embeddings.weight.device)
    with torch.no_grad():
        return flat_table(run_prefix(base, cache_arg, embeddings(tokens))).float().cpu()
