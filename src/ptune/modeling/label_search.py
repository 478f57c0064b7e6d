"""Best-first search over label words: the exact scores of each row's few best labels without running every word.

A word's log-likelihood only falls as its tokens are added (each token's log-probability is at most 0), so what a
prefix of the word has scored bounds every word that goes on from it (``task.score: mean``: the prefix's sum over
the longest such word's length). The words' prefix tree (``scoring.PrefixTree``) is run node by node, each row's
most promising open nodes first, and a node is left unrun once its bound falls below the row's ``keep``-th best
label score so far: no word through it can reach the best ``keep`` labels.

    the rows run once               their last position scores every word's first token (one-token words are done)
    each round, per row             the open nodes of highest bound (``SEARCH_WIDTH``) run after the row, with
                                    their ancestors (``scoring.node_logprobs``); their children and the words they
                                    complete are scored
    until                           no row has an open node whose bound reaches its keep-th best label

The words and labels the search reaches have the scores the full tree gives them (to floating-point noise); the
others are -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .scoring import PrefixTree, node_logprobs

# open nodes run per row and model call: enough that a row needs few calls (banking_77's 77 intents, zero-shot, on
# one thread: 17 calls and 10.3 s for 32 rows at 4, 6 calls and 8.7 s at 16, 4 calls and 9.3 s at 64), few enough
# that nodes a better word would have ruled out are seldom run
SEARCH_WIDTH = 16


@dataclass(frozen=True)
class WordSearch:
    """What the search needs beyond the words.

    Args:
        labels (`list[int]`): each word's label (a label may have several words; its score is their best).
        keep (`int`): how many best labels per row must come out exact.
        mean (`bool`): a word scores its mean token log-probability (``task.score: mean``), else the sum.
    """

    labels: list[int]
    keep: int
    mean: bool


def follows(tree: PrefixTree, words: list[list[int]]) -> list[list[tuple[int, int, int]]]:
    """Per node, what running it scores: (the next token, the child node it reaches or -1, the word it ends or
    -1).

    Example:
        >>> follows(PrefixTree.of([[5, 6, 7], [5, 8]]), [[5, 6, 7], [5, 8]])
        [[(6, 1, -1), (8, -1, 1)], [(7, -1, 0)]]
    """
    out: list[list[tuple[int, int, int]]] = [[] for _ in tree.tokens]
    for wi, (word, path) in enumerate(zip(words, tree.paths)):
        for k in range(1, len(word)):
            last = k == len(word) - 1
            out[path[k - 1]].append((word[k], -1 if last else path[k], wi if last else -1))
    return out


class SearchState:
    """Per row: each word's log-likelihood so far (-inf: not reached), each node's prefix sum (nan: its parent has
    not run) and whether it has run."""

    def __init__(self, first: torch.Tensor, words: list[list[int]], search: WordSearch):
        rows = first.shape[0]
        self.words, self.search, self.tree = words, search, PrefixTree.of(words)
        self.follow = follows(self.tree, words)
        self.lengths = torch.tensor([len(w) for w in words], dtype=torch.float)
        self.reach = torch.ones(len(self.tree.tokens))  # the longest word through each node
        for word, path in zip(words, self.tree.paths):
            for node in path:
                self.reach[node] = max(self.reach[node].item(), len(word))
        self.sums = torch.full((rows, len(words)), -math.inf)  # (B, W)
        single = [i for i, w in enumerate(words) if len(w) == 1]
        self.sums[:, single] = first[:, [words[i][0] for i in single]]
        self.node_sums = torch.full((rows, len(self.tree.tokens)), math.nan)  # (B, N)
        tops = [i for i, p in enumerate(self.tree.parents) if p < 0]
        self.node_sums[:, tops] = first[:, [self.tree.tokens[i] for i in tops]]
        self.ran = torch.zeros(rows, len(self.tree.tokens), dtype=torch.bool)

    def floor(self) -> torch.Tensor:
        """(B,): each row's keep-th best label score so far (-inf while fewer labels have one)."""
        scores = self.sums / self.lengths if self.search.mean else self.sums
        index = torch.tensor(self.search.labels).expand_as(scores)
        labels = torch.full((scores.shape[0], max(self.search.labels) + 1), -math.inf)
        labels = labels.scatter_reduce(1, index, scores, reduce="amax")
        return labels.topk(min(self.search.keep, labels.shape[1]), dim=1).values[:, -1]

    def next_nodes(self) -> list[list[int]]:
        """Per row, the open nodes to run next (best bound first, at most ``SEARCH_WIDTH``); all empty: done."""
        bound = self.node_sums / self.reach if self.search.mean else self.node_sums
        open_ = ~self.ran & ~bound.isnan() & (bound >= self.floor()[:, None])
        ranked = bound.masked_fill(~open_, -math.inf).topk(min(SEARCH_WIDTH, bound.shape[1]), dim=1)
        return [[n for n, ok in zip(idx.tolist(), o[idx].tolist()) if ok] for idx, o in zip(ranked.indices, open_)]

    def with_ancestors(self, nodes: list[int]) -> list[int]:
        """``nodes`` and every ancestor of theirs, parents first (a parent's index is below its children's)."""
        out = set()
        for node in nodes:
            while node >= 0 and node not in out:
                out.add(node)
                node = self.tree.parents[node]
        return sorted(out)

    def record(self, row: int, nodes: list[int], run: list[int], logp: torch.Tensor, column: dict[int, int]):
        """What running ``run`` (``nodes`` with their ancestors) after ``row`` gave, (n, S) ``logp``: the scores of
        the children and words of ``nodes``."""
        for j, node in enumerate(run):
            if node not in nodes:
                continue
            base = self.node_sums[row, node].item()
            for token, child, word in self.follow[node]:
                value = base + logp[j, column[token]].item()
                if child >= 0:
                    self.node_sums[row, child] = value
                else:
                    self.sums[row, word] = value
            self.ran[row, node] = True


def best_word_sums(base: nn.Module, cache_arg: str, mask: torch.Tensor, positions: torch.Tensor, cache,
                   first: torch.Tensor, words: list[list[int]], search: WordSearch) -> torch.Tensor:
    """Each word's log-likelihood (the sum of its tokens') after every row held in ``cache``, as far as the search
    needs it.

    Args:
        base, cache_arg, mask, positions, cache: the rows after their run, as ``scoring.node_logprobs`` takes them.
        first (`torch.Tensor`): (B, V) the log-probabilities of each row's next token.
        words (`list[list[int]]`): every label word's token ids.
        search (`WordSearch`): the words' labels, how many best labels to find, how words score.

    Returns:
        `torch.Tensor`: (B, W) float32 on the CPU; -inf for the words the search proved cannot reach a row's
        ``keep`` best labels.
    """
    state = SearchState(first.float().cpu(), words, search)
    scored = sorted({t for word in words for t in word[1:]})
    column = {t: i for i, t in enumerate(scored)}
    scored_ids = torch.tensor(scored, dtype=torch.long, device=mask.device)
    while True:
        nodes = state.next_nodes()
        if not any(nodes):
            return state.sums
        run = [state.with_ancestors(n) for n in nodes]
        logp = node_logprobs(base, cache_arg, mask, positions, cache, state.tree, run, scored_ids).float().cpu()
        for row, (row_nodes, row_run) in enumerate(zip(nodes, run)):
            state.record(row, row_nodes, row_run, logp[row], column)
