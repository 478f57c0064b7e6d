"""How much of a search's first rung its time budget covered, per kind of candidate (``space.KINDS``).

A search that runs out of time before every candidate was scored once has chosen among those it scored alone; the
report says how many of each kind that was, which kinds were never scored, and about what budget would have
reached them, from the seconds the scored candidates took.
"""

from __future__ import annotations

import math


def kind_counts(kinds: list[str], scored: set[int]) -> list[dict]:
    """Per kind, in the order the kinds first appear in ``kinds``: how many of its candidates were scored.

    Args:
        kinds (`list[str]`): each candidate's kind, in candidate order.
        scored (`set[int]`): the indices of the candidates scored (on the first rung, or at all).

    Returns:
        `list[dict]`: ``{"kind", "scored", "of"}`` per kind.

    Example:
        >>> kind_counts(["probe", "deep", "probe"], {0})
        [{'kind': 'probe', 'scored': 1, 'of': 2}, {'kind': 'deep', 'scored': 0, 'of': 1}]
    """
    order = list(dict.fromkeys(kinds))
    return [{"kind": kind, "scored": sum(kinds[i] == kind for i in scored), "of": kinds.count(kind)}
            for kind in order]


def estimated_seconds(kinds: list[str], costs: dict[int, float], upto: int) -> float:
    """Seconds to score candidates ``0 .. upto`` once: the measured seconds where a candidate was scored, otherwise
    the mean measured for its kind, or for a kind never scored the dearest kind's mean (an upper guess).

    Args:
        kinds (`list[str]`): each candidate's kind, in candidate order.
        costs (`dict[int, float]`): seconds per candidate scored, by index (at least one).
        upto (`int`): the last candidate's index.

    Returns:
        `float`: seconds.

    Example:
        >>> estimated_seconds(["probe", "prompt", "deep"], {0: 2.0, 1: 10.0}, upto=2)
        22.0
    """
    means = {kind: sum(s for i, s in costs.items() if kinds[i] == kind) / sum(kinds[i] == kind for i in costs)
             for kind in {kinds[i] for i in costs}}
    dearest = max(means.values())
    return sum(costs[i] if i in costs else means.get(kinds[i], dearest) for i in range(upto + 1))


def coverage_notes(kinds: list[str], costs: dict[int, float], share: int = 1) -> list[str]:
    """What the report and stderr say when the first rung was cut short: how many candidates of each kind were
    scored, which kinds never were, and the budget that would have scored them; nothing when every candidate was
    scored (or none).

    Args:
        kinds (`list[str]`): each candidate's kind, in candidate order (the order the first rung scores them).
        costs (`dict[int, float]`): seconds each candidate scored took on its first rung, by index.
        share (`int`): the first rung's share of the budget is ``1/share`` (the number of rungs with halving).

    Returns:
        `list[str]`: sentences, one per line of the report.

    Example:
        >>> coverage_notes(["probe", "deep", "probe", "deep"], {0: 60.0}, share=3)[1].split(" (at")[0]
        'Never scored: deep (2 candidates); a budget of about 12 min would have scored them all'
    """
    if not costs or len(costs) >= len(kinds):
        return []
    counts = kind_counts(kinds, set(costs))
    how = "at the seconds measured per candidate" + (f", the first rung getting 1/{share} of it" if share > 1 else "")
    notes = [f"The time budget ran out before the first rung's end: {len(costs)} of {len(kinds)} candidates scored ("
             + ", ".join(f"{c['kind']} {c['scored']} of {c['of']}" for c in counts)
             + "); the choice is among those scored only."]
    for c in counts:
        if not c["scored"]:
            last = max(i for i, kind in enumerate(kinds) if kind == c["kind"])
            minutes = math.ceil(estimated_seconds(kinds, costs, last) * share / 60)
            notes.append(f"Never scored: {c['kind']} ({c['of']} candidates); a budget of about {minutes} min would "
                         f"have scored them all ({how}).")
    minutes = math.ceil(estimated_seconds(kinds, costs, len(kinds) - 1) * share / 60)
    notes.append(f"A budget of about {minutes} min would score all {len(kinds)} candidates on the first rung.")
    return notes
