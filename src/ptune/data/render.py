"""Rendering: a row through a template into token ids (virtual positions marked, data fields cut to fit), and
collation of rendered rows into padded batches."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, DataError
from ..template import Field, Target, Template, Text, Virtual


@dataclass
class Encoded:
    """One model input. ``virtual_index[t]`` is the prompt-table row at position t (-1: a real token);
    ``labels[t]`` is the target token at t (-100 elsewhere). A seq2seq input holds no target: its target tokens are
    ``decoder_labels``, predicted on the decoder side (None for causal and masked LMs)."""
    input_ids: list[int]
    virtual_index: list[int]
    labels: list[int]
    truncated: bool = False
    decoder_labels: list[int] | None = None
    label_index: int | None = None
    """Classification training rows: the gold label's index (for the ``classify`` objective and class weights)."""
    weight: float | None = None
    """The row's weight in the loss (a soft-labelled row's ``train.distill_weight``, times its label's probability
    where the row is given once per label); None: 1, a labelled row."""
    soft_probs: list[float] | None = None
    """A soft-labelled row given once for all its labels: its label distribution, which the loss reads from one
    pass (``label_index`` is then its most likely label, whose word is the target)."""

    def __len__(self):
        return len(self.input_ids)


def split_shared_prefix(rows: list[Encoded], length: int) -> tuple[Encoded | None, list[Encoded]]:
    """The leading tokens every one of ``rows`` has alike, taken out once, and each row's rest: the one place a
    shared prefix is cut off (training batches, label scoring, mixed batches). At most ``length`` tokens go, and
    every row keeps at least one token of its own.

    Args:
        rows (list[Encoded]): rendered rows, unpadded; the caller vouches that their first ``length`` tokens match
            (``Renderer.shared_prefix_length``, ``tasks.mixed.common_text_prefix``).
        length (int): the most tokens to take out.

    Returns:
        tuple[Encoded | None, list[Encoded]]: the prefix (its ids and virtual indices, no labels) and the rows
        after it; ``(None, rows)`` where nothing is taken out.

    Example:
        >>> prefix, rest = split_shared_prefix([Encoded([1, 2, 3], [0, -1, -1], [-100] * 3)], 2)
        >>> prefix.input_ids, rest[0].input_ids
        ([1, 2], [3])
    """
    n = min([length] + [len(e) - 1 for e in rows])
    if n <= 0:
        return None, rows
    prefix = Encoded(rows[0].input_ids[:n], rows[0].virtual_index[:n], [])
    rest = [Encoded(e.input_ids[n:], e.virtual_index[n:], e.labels[n:], e.truncated, None, e.label_index, e.weight,
                    e.soft_probs) for e in rows]
    return prefix, rest


@dataclass
class Renderer:
    """Turns a row (and optionally a target text) into an ``Encoded`` input.

    For a seq2seq model the row is the encoder input, with nothing at [TARGET]; the target goes to the decoder.
    Each piece is tokenized on its own so that data fields can be truncated exactly. Whitespace at the end of anchor
    text moves onto the next field or the target (" Paris" is one natural token); next to virtual tokens it is dropped.
    """
    template: Template
    tokenizer: object
    kind: str  # "causal" | "masked" | "seq2seq"
    max_length: int
    field_map: dict[str, str] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    """Data columns whose cells may be empty or missing (``data.optional_fields``): a missing one reads as ``""``."""

    def __post_init__(self):
        tok = self.tokenizer
        with_special = tok("a")["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        start = _find(with_special, plain)
        self.prefix_ids = list(with_special[:start]) if start >= 0 else []
        self.suffix_ids = list(with_special[start + len(plain):]) if start >= 0 else []
        if self.kind == "causal":
            self.suffix_ids = []  # the target is last
        self._text_cache: dict[str, list[int]] = {}
        budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids) - self.template.n_virtual
        if budget < 1:  # a config error: no row could ever fit
            raise ConfigError(f"task.template has {self.template.n_virtual} virtual tokens (plus "
                              f"{len(self.prefix_ids) + len(self.suffix_ids)} special), more than fit in "
                              f"{self.max_length} tokens (train.max_length, capped at the model's context)")

    def _ids(self, text: str) -> list[int]:
        if text not in self._text_cache:
            self._text_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._text_cache[text]

    def target_prefix(self) -> str:
        """Whitespace that the template puts before the target (e.g. ' ' in 'Label : [TARGET]'); none for seq2seq,
        whose target starts the decoder's text."""
        if self.kind == "seq2seq":
            return ""
        return self.pieces(self.empty_row())[1]

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer(self.target_prefix() + text, add_special_tokens=False)["input_ids"]

    def empty_row(self) -> dict[str, str]:
        """A row whose every field the template reads is empty, keyed by data column (``data.columns`` applied)."""
        return {self.field_map.get(f, f): "" for f in self.template.fields}

    def cell(self, row: dict[str, str | None], column: str) -> str:
        """The text of ``row``'s cell in ``column``; an optional column's missing (or None) cell is ``""``."""
        if column in self.optional:
            return row.get(column) or ""
        return row[column]

    def pieces(self, row: dict[str, str]):
        """(list of (kind, payload), whitespace before the target)."""
        pieces: list[tuple[str, object]] = []
        pending = ""
        target_space = ""
        for seg in self.template.segments:
            if isinstance(seg, Text):
                if not seg.text.strip():
                    pending += seg.text
                    continue
                body = seg.text.rstrip()
                pieces.append(("text", pending + body))
                pending = seg.text[len(body):]
            elif isinstance(seg, Field):
                pieces.append(("field", pending + self.cell(row, self.field_map.get(seg.name, seg.name))))
                pending = ""
            elif isinstance(seg, Virtual):
                pieces.append(("virtual", seg.count))
                pending = ""
            elif isinstance(seg, Target):
                pieces.append(("target", None))
                target_space, pending = pending, ""
        return pieces, target_space

    def shared_prefix_length(self) -> int:
        """How many leading tokens every row's input shares: special tokens, virtual tokens and anchor text before
        the first data field (each piece is tokenized on its own, so these never depend on the row)."""
        pieces, _ = self.pieces(self.empty_row())
        n = len(self.prefix_ids)
        for kind, payload in pieces:
            if kind in ("field", "target"):
                break
            n += payload if kind == "virtual" else len(self._ids(payload))
        return n

    def encode(self, row: dict[str, str], target: list[int] | None = None) -> Encoded:
        """Render ``row``; ``target`` token ids fill the target slot (masked LM: as [MASK]s with labels there;
        seq2seq: the slot stays empty and the target becomes ``decoder_labels``). With no target, a causal input
        stops where the target would start (for generation and probing)."""
        pieces, _ = self.pieces(row)
        parts = [(kind, self._ids(p) if kind == "text" else
                  self.tokenizer(p, add_special_tokens=False)["input_ids"] if kind == "field" else p)
                 for kind, p in pieces]
        target = list(target or [])
        if self.kind == "masked" and not target:
            raise DataError("a masked LM needs the target's length to place [MASK] tokens")
        in_input = 0 if self.kind == "seq2seq" else len(target)  # the decoder's tokens do not count here
        fixed = len(self.prefix_ids) + len(self.suffix_ids) + in_input + sum(
            p if k == "virtual" else len(p) for k, p in parts if k not in ("field", "target"))
        field_room = self.max_length - fixed
        field_lengths = [len(p) for k, p in parts if k == "field"]
        truncated = sum(field_lengths) > field_room
        if truncated:
            if field_room < len(field_lengths):
                raise DataError(f"template and target need {fixed} tokens, more than max_length {self.max_length}")
            limits = _fair_limits(field_lengths, field_room)
            it = iter(limits)
            parts = [(k, p[:next(it)] if k == "field" else p) for k, p in parts]

        ids, virt, labels = list(self.prefix_ids), [-1] * len(self.prefix_ids), [-100] * len(self.prefix_ids)
        next_virtual = 0
        for kind, payload in parts:
            if kind == "virtual":
                ids += [self.tokenizer.pad_token_id] * payload
                virt += list(range(next_virtual, next_virtual + payload))
                labels += [-100] * payload
                next_virtual += payload
            elif kind == "target":
                if self.kind == "seq2seq":
                    continue
                if self.kind == "masked":
                    ids += [self.tokenizer.mask_token_id] * len(target)
                else:
                    ids += target
                virt += [-1] * len(target)
                labels += target
            else:
                ids += payload
                virt += [-1] * len(payload)
                labels += [-100] * len(payload)
        ids += self.suffix_ids
        virt += [-1] * len(self.suffix_ids)
        labels += [-100] * len(self.suffix_ids)
        return Encoded(ids, virt, labels, truncated, target if self.kind == "seq2seq" else None)


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    return -1


def _fair_limits(lengths: list[int], room: int) -> list[int]:
    """Cut the longest fields first so that together they fit in ``room`` tokens."""
    limits = list(lengths)
    while sum(limits) > room:
        i = max(range(len(limits)), key=lambda j: limits[j])
        limits[i] -= 1
    return limits


def collate(examples: list[Encoded], pad_id: int, side: str = "left", device=None) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest row (dynamic padding). Pads go on the outside only, so they never sit between
    virtual tokens and the text; position ids count real tokens, so they are the same under either side.
    Seq2seq rows also give ``decoder_labels`` (B, K): their targets, right-padded with -100."""
    width = max(len(e) for e in examples)
    out = {k: torch.full((len(examples), width), v, dtype=torch.long)
           for k, v in (("input_ids", pad_id), ("virtual_index", -1), ("labels", -100), ("attention_mask", 0))}
    for i, e in enumerate(examples):
        sl = slice(width - len(e), width) if side == "left" else slice(0, len(e))
        out["input_ids"][i, sl] = torch.tensor(e.input_ids)
        out["virtual_index"][i, sl] = torch.tensor(e.virtual_index)
        out["labels"][i, sl] = torch.tensor(e.labels)
        out["attention_mask"][i, sl] = 1
    out["position_ids"] = (out["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    if examples[0].decoder_labels is not None:
        k = max(len(e.decoder_labels) for e in examples)
        out["decoder_labels"] = torch.tensor([e.decoder_labels + [-100] * (k - len(e.decoder_labels))
                                              for e in examples], dtype=torch.long).reshape(len(examples), k)
    out |= label_fields(examples)
    return out if device is None else to_device(out, device)


def label_fields(examples: list[Encoded]) -> dict[str, torch.Tensor]:
    """A training batch's per-row label tensors (padded and packed batches alike): ``label_index`` (B,) where every
    row has one; ``row_weight`` (B,) float, 1 where a row has none, where any row has a weight; ``soft_probs``
    (B, labels), zeros for a labelled row, where any row carries its label distribution."""
    out = {}
    if all(e.label_index is not None for e in examples):
        out["label_index"] = torch.tensor([e.label_index for e in examples], dtype=torch.long)
    if any(e.weight is not None for e in examples):
        out["row_weight"] = torch.tensor([1.0 if e.weight is None else e.weight for e in examples])
    soft = [e.soft_probs for e in examples]
    if any(p is not None for p in soft):
        n = len(next(p for p in soft if p is not None))
        out["soft_probs"] = torch.tensor([p if p is not None else [0.0] * n for p in soft], dtype=torch.float32)
    return out


def to_device(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; to a CUDA GPU through pinned (page-locked) host memory, so that the copy runs
    asynchronously (``non_blocking``) while the host prepares what comes next.

    Args:
        tensors (`dict[str, torch.Tensor]`): the batch, on the CPU.
        device (`torch.device | str`): where the model runs.

    Returns:
        `dict[str, torch.Tensor]`: the same tensors on ``device``.

    Example:
        >>> to_device({"input_ids": torch.zeros(2, 5, dtype=torch.long)}, "cpu")["input_ids"].shape
        torch.Size([2, 5])
    """
    device = torch.device(device)
    pinned = device.type == "cuda"
    return {k: (v.pin_memory() if pinned else v).to(device, non_blocking=pinned) for k, v in tensors.items()}
