"""Successive halving: every candidate on a cheap rung (a fraction of its epochs), the best third promoted to the
next, until the last rung trains with the full epochs; the time budget is shared out between the rungs.

The scoring itself (cross-validation on the same folds) is the caller's: ``successive_halving`` only decides who
is scored at which rung, and stops starting new scores when a rung's share of the budget is spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

ETA = 3  # keep the best third at every rung; each rung trains three times as long


def rung_fractions(n: int, max_epochs: int, eta: int = ETA) -> list[float]:
    """The share of its epochs a candidate trains for at each rung, last rung 1.0: as many rungs as the candidates
    can be thinned by ``eta`` and the epochs divided by it (at least one; one rung is a plain search).

    Args:
        n (`int`): the number of candidates.
        max_epochs (`int`): the most epochs any candidate trains for.
        eta (`int`): the thinning factor.

    Returns:
        `list[float]`: e.g. ``[1/9, 1/3, 1.0]``.

    Example:
        >>> rung_fractions(40, 10)
        [0.1111111111111111, 0.3333333333333333, 1.0]
    """
    rungs = 1
    while eta ** rungs < n and eta ** rungs <= max_epochs:
        rungs += 1
    return [float(eta) ** -(rungs - 1 - k) for k in range(rungs)]


def rung_epochs(epochs: int, fraction: float) -> int:
    """A candidate's epochs at a rung: its own ``epochs`` times the rung's fraction, at least one."""
    return max(1, round(epochs * fraction))


@dataclass
class Reached:
    """Where a candidate stopped: its last rung (0 first) and its score there."""
    rung: int
    score: float


def successive_halving(n: int, fractions: list[float], score: Callable[[int, int, float], float], budget: float,
                       clock: Callable[[], float] = time.perf_counter, eta: int = ETA) -> dict[int, Reached]:
    """Score candidates rung by rung, promoting the best ``1/eta`` (at least one) to the next rung.

    The budget is shared out: rung k starts no new score after ``start + budget * (k + 1) / rungs``, so what a
    rung leaves unspent goes to the next ones, and the whole search overruns the budget by at most one score.
    Where the budget cut the first rung short and time is left when the last rung is done, the candidates not yet
    scored get a bracket of their own, the same way, in the time left. Ties keep the candidate listed first.

    Args:
        n (`int`): the number of candidates, scored as ``0 .. n-1`` in that order on the first rung.
        fractions (`list[float]`): each rung's share of the epochs (``rung_fractions``).
        score (`Callable[[int, int, float], float]`): ``score(candidate, rung, fraction)``, higher is better.
        budget (`float`): seconds; 0: no limit.
        clock (`Callable[[], float]`): the time in seconds.
        eta (`int`): the thinning factor.

    Returns:
        `dict[int, Reached]`: per candidate scored, its last rung and score there (candidates never scored,
        for lack of time, are absent).

    Example:
        >>> reached = successive_halving(9, [1 / 3, 1.0], lambda i, rung, f: -abs(i - 4) * f, budget=0)
        >>> {i: r.rung for i, r in reached.items() if r.rung == 1}
        {3: 1, 4: 1, 5: 1}
    """
    start, reached = clock(), {}
    while len(reached) < n:
        left = budget - (clock() - start) if budget else 0.0
        if budget and left <= 0:
            break
        bracket = one_bracket([i for i in range(n) if i not in reached], fractions, score, left, clock, eta)
        if not bracket:
            break
        reached |= bracket
    return reached


def one_bracket(todo: list[int], fractions: list[float], score: Callable[[int, int, float], float], budget: float,
                clock: Callable[[], float], eta: int) -> dict[int, Reached]:
    """``successive_halving``'s rungs over the candidates ``todo``, within ``budget`` seconds (0: no limit)."""
    start = clock()
    reached: dict[int, Reached] = {}
    for rung, fraction in enumerate(fractions):
        deadline = start + budget * (rung + 1) / len(fractions)
        done = []
        for i in todo:
            if budget and clock() >= deadline:
                break
            reached[i] = Reached(rung, score(i, rung, fraction))
            done.append(i)
        if not done or rung == len(fractions) - 1:
            break
        keep = max(1, math.ceil(len(done) / eta))
        todo = sorted(done, key=lambda i: (-reached[i].score, i))[:keep]
        todo.sort()
    return reached
