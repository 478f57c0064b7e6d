"""Causal scoring with the KV cache: a shared prefix run once (``run_prefix``, kept by ``PrefixCache``) and repeated
for a batch (``repeated``, ``after_prefix``) or, where a sliding window could cut in, joined to every row
(``joined``); and the log-probabilities of several continuations of the same inputs from one run of them
(``word_logprobs``).

    inputs (B, T) run once, left-padded      their last position scores every word's first token
    each longer word, its tokens but the last run on the cached inputs, then cropped off again
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values (rows, heads, P, head_dim)


def new_cache():
    """An empty KV cache."""
    from transformers import DynamicCache

    # no config: every layer keeps all its keys, since a sliding-window layer's cache drops those past its window
    # and cannot be cropped back to the shared inputs (the attention mask applies the window instead)
    return DynamicCache()


def run_prefix(base: nn.Module, cache_arg: str, embeds: torch.Tensor) -> KeysValues:
    """Run one prefix ``embeds`` (1, P, d) through ``base``; each layer's keys and values (1, heads, P, head_dim).
    ``cache_arg``: the name of the base's KV-cache argument."""
    cache = new_cache()
    base(inputs_embeds=embeds, use_cache=True, logits_to_keep=1,
         position_ids=torch.arange(embeds.shape[1], device=embeds.device)[None], **{cache_arg: cache})
    return [(layer.keys, layer.values) for layer in cache.layers]


def repeated(kv: KeysValues, rows: int):
    """A fresh cache holding the prefix's keys and values once per row: (rows, heads, P, head_dim) per layer."""
    cache = new_cache()
    for i, (k, v) in enumerate(kv):
        cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
    return cache


def after_prefix(mask: torch.Tensor, positions: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask (B, n+T) and position ids (B, T) of left-padded rows (B, T) that follow an n-token prefix
    held in the cache. The rows' own pads sit between the prefix and their text: masked out, and not counted in
    positions."""
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1), positions + n


def joined(prefix: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
    """The shared prefix (1, P, d) put back before every left-padded row (B, T, d), the rows' pads moved to the
    front: the rows as they would be without a shared prefix. Returns embeds (B, P+T, d), the attention mask and the
    position ids (B, P+T)."""
    rows, n = embeds.shape[0], prefix.shape[1]
    embeds = torch.cat([prefix.expand(rows, -1, -1), embeds], dim=1)  # (B, P+T, d)
    mask = torch.cat([mask.new_ones(rows, n), mask], dim=1)  # (B, P+T)
    positions = torch.cat([torch.arange(n, device=mask.device).expand(rows, n), positions + n], dim=1)
    order = torch.sort(mask, dim=1, stable=True).indices  # pads (0) first, then the real tokens in their order
    return embeds.gather(1, order.unsqueeze(-1).expand_as(embeds)), mask.gather(1, order), positions.gather(1, order)


class PrefixCache:
    """The keys and values of one prefix (the one every row shares), kept until ``clear`` (a new prompt table).

    Example:
        >>> cache = PrefixCache()
        >>> kv = cache.get((ids, virtual), lambda: run_prefix(base, "past_key_values", embeds))  # runs
        >>> kv = cache.get((ids, virtual), lambda: run_prefix(base, "past_key_values", embeds))  # cached
    """

    def __init__(self):
        self.entry: tuple[tuple, KeysValues] | None = None  # (the prefix's key, its keys and values)

    def get(self, key: tuple, compute: Callable[[], KeysValues]) -> KeysValues:
        """The keys and values for ``key``, from ``compute()`` unless they are the ones kept."""
        if self.entry is None or self.entry[0] != key:
            self.entry = (key, compute())
        return self.entry[1]

    def clear(self) -> None:
        self.entry = None


def word_logprobs(base: nn.Module, cache_arg: str, embeds: torch.Tensor, mask: torch.Tensor,
                  positions: torch.Tensor, cache, words: list[list[int]]) -> list[torch.Tensor]:
    """Each word's token log-probabilities after every row of ``embeds`` (B, T, d), left-padded, with ``mask`` and
    ``positions`` (the mask also covers whatever ``cache`` holds before the rows). The rows run once: their last
    position scores every word's first token, and a longer word's other tokens run on the cached rows, which are
    cropped back afterwards. Returns, per word, (B, len(word))."""
    out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
               logits_to_keep=1, **{cache_arg: cache})
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
    rows = mask.shape[0]
    result = []
    for word in words:
        scores = [first[:, word[0]]]
        if len(word) > 1:
            n = len(word) - 1
            ids = torch.tensor([word[:-1]], device=mask.device).expand(rows, n)  # (B, n)
            step_mask = torch.cat([mask, mask.new_ones(rows, n)], dim=1)
            step_pos = positions[:, -1:] + 1 + torch.arange(n, device=positions.device)  # (B, n)
            logits = base(inputs_embeds=base.get_input_embeddings()(ids), attention_mask=step_mask,
                          position_ids=step_pos, use_cache=True, **{cache_arg: cache}).logits  # (B, n, V)
            logp = F.log_softmax(logits.float(), dim=-1)
            rest = torch.tensor(word[1:], device=logp.device)
            scores += list(logp.gather(-1, rest.expand(rows, n).unsqueeze(-1)).squeeze(-1).unbind(1))
            cache.crop(-n)  # drop this word's n positions: back to the shared inputs for the next word
        result.append(torch.stack(scores, dim=1))  # (B, len(word))
    return result
