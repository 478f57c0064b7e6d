"""Causal scoring with the KV cache: a shared prefix run once (``run_prefix``, kept by ``PrefixCache``) and repeated
for a batch (``repeated``, ``after_prefix``) or, where a sliding window could cut in, joined to every row
(``joined``); and the log-probabilities of several continuations of the same inputs from one run of them
(``word_logprobs``).

    inputs (B, T) run once, left-padded      their last position scores every word's first token
    the words' longer prefixes, as a tree    each prefix (``PrefixTree``) runs once per row on the cached inputs, a
                                             few thousand places per call, seeing only the inputs and its own
                                             shorter prefixes (a 4D mask); then cropped off again
    or, word by word                         each longer word's tokens but the last run on the cached inputs (models
                                             that take no custom mask, or that a sliding window could cut)

Words that share leading tokens (``card arrival``, ``card linking``) share their nodes: ``card`` runs once.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
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


def cache_argument(base: nn.Module) -> str | None:
    """The name of ``base``'s KV-cache argument: ``cache`` from transformers 5.x on, ``past_key_values`` before
    (None: it takes none)."""
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None


def run_prefix(base: nn.Module, cache_arg: str, embeds: torch.Tensor, start: KeysValues | None = None
               ) -> KeysValues:
    """Run one prefix ``embeds`` (1, P, d) through ``base``; each layer's keys and values (1, heads, P, head_dim).
    ``cache_arg``: the name of the base's KV-cache argument. ``start``: keys and values already before the prefix
    (a deep prompt's, S places), which the prefix attends to and the result begins with: (1, heads, S+P,
    head_dim)."""
    cache = new_cache() if start is None else repeated(start, 1)
    offset = 0 if start is None else start[0][0].shape[2]
    base(inputs_embeds=embeds, use_cache=True, logits_to_keep=1,
         position_ids=torch.arange(offset, offset + embeds.shape[1], device=embeds.device)[None],
         **{cache_arg: cache})
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
    positions. A packed batch's custom mask (bins, 1, L, L) gains n columns every place sees: (bins, 1, L, n+L)."""
    return torch.cat([mask.new_ones(*mask.shape[:-1], n), mask], dim=-1), positions + n


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


# logits per model call of the prefix tree (rows x nodes x vocabulary, float32: half a gigabyte), so 2,730 places
# per call for a 50k vocabulary: few, large calls, since on a busy CPU each of a call's many small operations waits
# for the cores (a batch of 16 banking_77 rows ran 1.4x as fast as at 512 places per call; docs/benchmarks.md)
TREE_LOGITS = 2 ** 27


def tree_places(vocab: int) -> int:
    """Rows x prefix-tree nodes per model call for a ``vocab``-token vocabulary (``TREE_LOGITS``)."""
    return max(1, TREE_LOGITS // max(1, vocab))


@dataclass
class PrefixTree:
    """The proper prefixes of several words (a word's first k tokens, 1 <= k < its length), each once: a node is a
    prefix, run as its last token; its parent is the prefix one token shorter (-1: none, the inputs' last position
    precedes it). Scoring a word's k+1-th token needs the logits after its k-token prefix, so every word's tokens
    but the first are scored from the nodes, and words that open alike share those nodes.

    Example:
        >>> tree = PrefixTree.of([[5, 6, 7], [5, 6, 8], [5, 9], [4]])
        >>> tree.tokens, tree.parents, tree.paths
        ([5, 6], [-1, 0], [[0, 1], [0, 1], [0], []])
    """

    tokens: list[int] = field(default_factory=list)
    """Each node's token (its prefix's last)."""
    parents: list[int] = field(default_factory=list)
    """Each node's parent node, -1 for a one-token prefix; a parent always comes before its children."""
    depths: list[int] = field(default_factory=list)
    """Each node's prefix length: its place after the inputs' last position."""
    paths: list[list[int]] = field(default_factory=list)
    """Per word, the nodes of its proper prefixes, shortest first (``len(word) - 1`` of them)."""

    @classmethod
    def of(cls, words: list[list[int]]) -> "PrefixTree":
        """The tree of ``words``' proper prefixes (token ids), nodes in the order the words first reach them."""
        tree, index = cls(), {}
        for word in words:
            path = []
            for k in range(1, len(word)):
                key = tuple(word[:k])
                if key not in index:
                    index[key] = len(tree.tokens)
                    tree.tokens.append(word[k - 1])
                    tree.parents.append(path[-1] if path else -1)
                    tree.depths.append(k)
                path.append(index[key])
            tree.paths.append(path)
        return tree

    def groups(self, limit: int) -> list[list[int]]:
        """The nodes in runs of whole subtrees under the root, so that a node's ancestors run with it: each run at
        most ``limit`` nodes, unless one subtree alone is larger."""
        subtrees: dict[int, list[int]] = {}  # first-token node -> its subtree's nodes, parents first
        top = []
        for node, parent in enumerate(self.parents):
            top.append(node if parent < 0 else top[parent])
            subtrees.setdefault(top[node], []).append(node)
        runs: list[list[int]] = []
        for nodes in subtrees.values():
            if runs and len(runs[-1]) + len(nodes) <= limit:
                runs[-1] += nodes
            else:
                runs.append(list(nodes))
        return runs

    def sees(self, nodes: list[int]) -> torch.Tensor:
        """(n, n) bool: whether each of ``nodes`` attends to each other one (itself and its ancestors, which are
        among ``nodes`` when they come from ``groups``)."""
        place = {node: i for i, node in enumerate(nodes)}
        out = torch.zeros(len(nodes), len(nodes), dtype=torch.bool)
        for i, node in enumerate(nodes):
            while node >= 0:
                out[i, place[node]] = True
                node = self.parents[node]
        return out


def attention_bias(base: nn.Module, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A custom 4D mask (B, 1, Q, K) of allowed pairs as ``base``'s attention takes it: as is for SDPA, and as an
    additive bias (0 or the dtype's lowest) for eager attention, which adds its mask to the scores."""
    if getattr(base.config, "_attn_implementation", None) != "eager":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                     torch.finfo(dtype).min)


def node_logprobs(base: nn.Module, cache_arg: str, mask: torch.Tensor, positions: torch.Tensor, cache,
                  tree: PrefixTree, nodes: list[list[int]], scored: torch.Tensor) -> torch.Tensor:
    """Run each row's ``nodes`` of ``tree`` after that row, held in ``cache`` (``mask`` (B, K) covers what it
    holds, the rows' last ``positions`` (B, T) place the nodes), each node seeing its row and its own ancestors
    only (which must be among the row's nodes); the cache is cropped back afterwards. Rows with fewer nodes are
    padded with nodes that see their row only. Returns the log-probabilities of the tokens ``scored`` (S,) after
    each row's nodes: (B, n, S), n the longest list."""
    rows, n = mask.shape[0], max(map(len, nodes))
    ids = torch.zeros(rows, n, dtype=torch.long)
    depth = torch.ones(rows, n, dtype=torch.long)
    sees = torch.eye(n, dtype=torch.bool).repeat(rows, 1, 1)  # (B, n, n): padding sees itself
    views: dict[tuple, torch.Tensor] = {}  # rows that run the same nodes share their mask
    for r, row_nodes in enumerate(nodes):
        k = len(row_nodes)
        ids[r, :k] = torch.tensor([tree.tokens[i] for i in row_nodes], dtype=torch.long)
        depth[r, :k] = torch.tensor([tree.depths[i] for i in row_nodes], dtype=torch.long)
        key = tuple(row_nodes)
        if key not in views:
            views[key] = tree.sees(row_nodes)
        sees[r, :k, :k] = views[key]
    step_pos = positions[:, -1:] + depth.to(mask.device)  # (B, n): a node of depth k sits k places after its row
    allowed = torch.cat([mask.bool()[:, None, None, :].expand(rows, 1, n, mask.shape[1]),
                         sees.to(mask.device)[:, None]], dim=-1)  # (B, 1, n, K+n)
    embeds = base.get_input_embeddings()(ids.to(mask.device))
    logits = base(inputs_embeds=embeds, attention_mask=attention_bias(base, allowed, embeds.dtype),
                  position_ids=step_pos, use_cache=True, **{cache_arg: cache}).logits  # (B, n, V)
    cache.crop(-n)  # back to the rows alone for the next run of nodes
    return picked_logprobs(logits, scored)


def picked_logprobs(logits: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """(..., S) float32 log-probabilities of the tokens ``picked`` (S,) from ``logits`` (..., V), which are used up:
    the log-softmax normaliser is computed in their place, so that the largest tensor of the call is not copied."""
    logits = logits.float()  # (no copy where the head gave float32)
    out = logits[..., picked]
    top = logits.amax(-1, keepdim=True)
    return out - logits.sub_(top).exp_().sum(-1, keepdim=True).log_().add_(top)


def later_tokens_by_tree(base: nn.Module, cache_arg: str, mask: torch.Tensor, positions: torch.Tensor, cache,
                         words: list[list[int]]) -> list[torch.Tensor]:
    """Each word's log-probabilities of its tokens after the first, (B, len(word) - 1), from the words'
    ``PrefixTree``: every prefix runs once per row, ``tree_places`` places per call."""
    tree, rows = PrefixTree.of(words), mask.shape[0]
    scored = sorted({t for word in words for t in word[1:]})
    column = {t: i for i, t in enumerate(scored)}
    logp = torch.zeros(rows, len(tree.tokens), len(scored), device=mask.device)  # (B, nodes, S)
    scored_ids = torch.tensor(scored, dtype=torch.long, device=mask.device)
    places = tree_places(base.get_input_embeddings().weight.shape[0])
    for nodes in tree.groups(max(1, places // rows)):
        logp[:, nodes] = node_logprobs(base, cache_arg, mask, positions, cache, tree, [nodes] * rows, scored_ids)
    return [logp[:, path, [column[t] for t in word[1:]]] for word, path in zip(words, tree.paths)]


def later_tokens_by_word(base: nn.Module, cache_arg: str, mask: torch.Tensor, positions: torch.Tensor, cache,
                         words: list[list[int]]) -> list[torch.Tensor]:
    """``later_tokens_by_tree``'s numbers, one call per longer word: its tokens but the last run on the cached rows,
    which are cropped back afterwards (no custom mask: for every causal model)."""
    rows = mask.shape[0]
    result = []
    for word in words:
        n = len(word) - 1
        if n == 0:
            result.append(torch.zeros(rows, 0, device=mask.device))
            continue
        ids = torch.tensor([word[:-1]], device=mask.device).expand(rows, n)  # (B, n)
        step_mask = torch.cat([mask, mask.new_ones(rows, n)], dim=1)
        step_pos = positions[:, -1:] + 1 + torch.arange(n, device=positions.device)  # (B, n)
        logits = base(inputs_embeds=base.get_input_embeddings()(ids), attention_mask=step_mask,
                      position_ids=step_pos, use_cache=True, **{cache_arg: cache}).logits  # (B, n, V)
        logp = F.log_softmax(logits.float(), dim=-1)
        rest = torch.tensor(word[1:], device=logp.device)
        result.append(logp.gather(-1, rest.expand(rows, n).unsqueeze(-1)).squeeze(-1))  # (B, n)
        cache.crop(-n)  # drop this word's n positions: back to the shared inputs for the next word
    return result


def run_rows(base: nn.Module, cache_arg: str, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache) -> tuple[torch.Tensor, object]:
    """Run the left-padded rows ``embeds`` (B, T, d) into ``cache`` (``mask`` also covers whatever it holds before
    them). Returns the log-probabilities of each row's next token (B, V), float32, and the cache."""
    out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
               logits_to_keep=1, **{cache_arg: cache})
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    return F.log_softmax(out.logits[:, -1].float(), dim=-1), cache


def word_logprobs(base: nn.Module, cache_arg: str, embeds: torch.Tensor, mask: torch.Tensor,
                  positions: torch.Tensor, cache, words: list[list[int]], by_tree: bool = True
                  ) -> list[torch.Tensor]:
    """Each word's token log-probabilities after every row of ``embeds`` (B, T, d), left-padded, with ``mask`` and
    ``positions`` (the mask also covers whatever ``cache`` holds before the rows). The rows run once: their last
    position scores every word's first token, and the words' other tokens run on the cached rows, every shared
    prefix once per row (``by_tree``: the base must take a custom 4D mask, and no sliding window reach the words)
    or word by word. Returns, per word, (B, len(word))."""
    first, cache = run_rows(base, cache_arg, embeds, mask, positions, cache)  # (B, V)
    later = (later_tokens_by_tree if by_tree else later_tokens_by_word)(base, cache_arg, mask, positions, cache,
                                                                          words)
    return [torch.cat([first[:, word[:1]], rest.to(first.device)], dim=1) for word, rest in zip(words, later)]
