"""Packed training batches for causal LMs: a batch's rows laid end to end in a few sequences ("bins"), each row
attending only to itself and to the prefix every row shares, so that no pad is computed. The loss and gradients are
the padded batch's (up to floating-point rounding).

    padded (B, T)          [pad pad x x x y] [x x x x x y] [pad pad pad x x y]
    packed (bins, L)       [prefix | x x x y | x x x x x y | x x y]   one bin here; the mask keeps rows apart

A bin holds its own copy of the shared prefix (the virtual tokens and anchor text every row starts with). Bins are
filled first-fit, longest rows first, up to ``bin_tokens`` places; the attention inside a bin grows with the square
of its length, so the caller sizes bins where that stays small next to the rest of the model (``packed_bin_tokens``
in modeling).
"""

from __future__ import annotations

import torch

from .render import Encoded, label_fields

PREFIX, PAD = -1, -2  # segment ids of the shared prefix and of a bin's padding (rows are 0..B-1)


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows (by index) grouped into bins of at most ``capacity`` places, longest rows first, each into the first bin
    with room (a row longer than ``capacity`` gets a bin of its own).

    Args:
        lengths (list[int]): each row's length in places.
        capacity (int): places per bin.

    Returns:
        list[list[int]]: row indices per bin.

    Example:
        >>> first_fit([5, 3, 4, 2], 8)
        [[0, 1], [2, 3]]
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), None)
        if j is None:
            bins.append([]), room.append(capacity)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= lengths[i]
    return bins


def target_width(rows: list[Encoded]) -> int:
    """How many trailing columns hold targets in the left-padded batch of ``rows`` (its ``k``)."""
    return max(len(e) - next((t for t, lab in enumerate(e.labels) if lab != -100), len(e)) for e in rows)


def pack(rows: list[Encoded], prefix: Encoded | None, bin_tokens: int, device=None) -> dict[str, torch.Tensor]:
    """The packed batch of ``rows`` (each what follows the shared ``prefix``; targets at their ends).

    Args:
        rows (list[Encoded]): the batch's rows without the shared prefix.
        prefix (Encoded | None): the tokens every row starts with (None: rows start on their own).
        bin_tokens (int): places per bin, the prefix included.
        device: where the tensors go (None: the CPU).

    Returns:
        dict[str, torch.Tensor]: ``packed_ids``, ``packed_virtual``, ``packed_positions`` (bins, L);
        ``packed_mask`` (bins, 1, L, L), True where a place may attend; ``target_places`` (B, k): the flat place
        (bin * L + place) whose logits predict each target column; ``labels`` (B, k), -100 where a row's target is
        shorter; and ``render.label_fields``' tensors (``label_index``, ``row_weight``, ``soft_probs``).

    Example:
        >>> batch = pack([Encoded([5, 6, 7], [-1, -1, -1], [-100, -100, 7])], None, 64)
        >>> batch["packed_ids"].shape, batch["target_places"].tolist()
        (torch.Size([1, 3]), [[1]])
    """
    p_ids, p_virtual = (torch.tensor(prefix.input_ids, dtype=torch.long), torch.tensor(prefix.virtual_index)) \
        if prefix is not None else (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    n_prefix, k = len(p_ids), target_width(rows)
    bins = first_fit([len(e) for e in rows], max(bin_tokens - n_prefix, 1))
    width = n_prefix + max(sum(len(rows[i]) for i in b) for b in bins)
    ids = torch.zeros(len(bins), width, dtype=torch.long)
    virtual = torch.full((len(bins), width), -1, dtype=torch.long)
    positions = torch.zeros(len(bins), width, dtype=torch.long)
    segment = torch.full((len(bins), width), PAD, dtype=torch.long)
    places = torch.zeros(len(rows), k, dtype=torch.long)
    for j, members in enumerate(bins):
        ids[j, :n_prefix], virtual[j, :n_prefix] = p_ids, p_virtual
        positions[j, :n_prefix], segment[j, :n_prefix] = torch.arange(n_prefix), PREFIX
        start = n_prefix
        for i in members:
            e, n = rows[i], len(rows[i])
            ids[j, start:start + n], virtual[j, start:start + n] = torch.tensor(e.input_ids), torch.tensor(e.virtual_index)
            positions[j, start:start + n] = n_prefix + torch.arange(n)
            segment[j, start:start + n] = i
            # column c of the last k predicts from the place before it; before a row's first token that is the
            # prefix's last place (columns there without a target are masked by their -100 label)
            before = start + n - k - 1 + torch.arange(k)
            places[i] = j * width + torch.where(before >= start, before, n_prefix - 1 if n_prefix else start)
            start += n
    labels = torch.tensor([[-100] * (k - min(k, len(e))) + e.labels[-k:] for e in rows], dtype=torch.long)
    out = {"packed_ids": ids, "packed_virtual": virtual, "packed_positions": positions,
           "packed_mask": attention_mask(segment), "target_places": places, "labels": labels}
    out |= label_fields(rows)
    return out if device is None else {name: t.to(device) for name, t in out.items()}


def attention_mask(segment: torch.Tensor) -> torch.Tensor:
    """(bins, 1, L, L) boolean: a place attends to the places up to it of its own row and of the shared prefix; a
    pad attends only to itself (a place that sees nothing would give NaN).

    Args:
        segment (torch.Tensor): (bins, L) each place's row, ``PREFIX`` or ``PAD``.
    """
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)  # (bins, L, 1), (bins, 1, L)
    same = (query == key) & (query != PAD)
    sees_prefix = (key == PREFIX) & (query != PAD)
    own = torch.eye(length, dtype=torch.bool)
    return ((same | sees_prefix) & causal | own).unsqueeze(1)
