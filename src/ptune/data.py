"""Data: read rows from files or HF datasets, render them through a template into token ids, collate batches.

Every problem with the input is a ``DataError`` naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError, DataError
from .template import Field, Target, Template, Text, Virtual

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Table:
    """Rows read from one source; ``source`` names it in error messages, rows count from 1."""
    source: str
    columns: list[str]
    rows: list[dict[str, str]]

    def __len__(self):
        return len(self.rows)

    def column(self, name: str) -> list[str]:
        return [r[name] for r in self.rows]


def read_table(source: str | Path, fmt: str = "auto", split: str = "train") -> Table:
    source = str(source)
    if source.startswith("hf:"):
        return _read_hf(source, split)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file")
    if fmt == "auto":
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unknown data format {path.suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(sorted(set(FORMATS)))} or set data.format")
    elif fmt not in set(FORMATS.values()):  # --format on the command line is free text
        raise DataError(f"{path}: unknown data format {fmt!r}; use one of {', '.join(sorted(set(FORMATS.values())))}")
    try:
        data = path.read_bytes()
    except OSError as err:  # permissions, a FIFO, a vanished file
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if fmt == "parquet":
        table = _read_parquet(path, data)
    else:
        text = _decode(path, data)
        table = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    if not table.rows:
        raise DataError(f"{path}: no data rows")
    return table


def _decode(path: Path, data: bytes) -> str:
    # the BOM is cut off by hand: "utf-8-sig" would count the error offset from after it
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        line = data[:offset].count(b"\n") + 1
        raise DataError(f"{path}: not valid UTF-8 at byte offset {offset} (line {line}); "
                        "re-save the file as UTF-8") from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    if not text.strip():
        raise DataError(f"{path}: empty file")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header or len(set(header)) != len(header) or any(not h for h in header):
            raise DataError(f"{path}: header has empty or repeated column names: {header}")
        rows = []
        for values in reader:
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if len(values) != len(header):
                raise DataError(f"{path}: row {len(rows) + 1} (line {reader.line_num}) has {len(values)} fields, "
                                f"the header has {len(header)}")
            rows.append(dict(zip(header, values)))
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: {err}") from None
    return Table(str(path), header, rows)


def _read_jsonl(path: Path, text: str) -> Table:
    rows, columns = [], []
    # split on "\n" only: str.splitlines() would also cut at U+2028 and friends, which JSON strings may hold
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # a 5000-digit number, nesting too deep
            raise DataError(f"{path}: line {number}: cannot read this JSON ({type(err).__name__})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(obj).__name__}")
        row = {str(k): _as_text(v) for k, v in obj.items()}
        for k in row:
            if k not in columns:
                columns.append(k)
        rows.append(row)
    if not rows and not text.strip():
        raise DataError(f"{path}: empty file")
    return Table(str(path), columns, rows)


def _read_parquet(path: Path, raw: bytes) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = pq.read_table(pa.BufferReader(raw))
        rows = [{str(k): _as_text(v) for k, v in r.items()} for r in data.to_pylist()]
    except Exception as err:  # pyarrow raises several types for broken files (and for values it cannot convert)
        raise DataError(f"{path}: cannot read Parquet: {' '.join(str(err).split())}") from None
    return Table(str(path), [str(c) for c in data.column_names], rows)


def _read_hf(source: str, split: str) -> Table:
    """``hf:NAME`` or ``hf:NAME:CONFIG``: a dataset from the Hugging Face hub (or its local cache)."""
    parts = source[3:].split(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading hub datasets needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 else None, split=split)
    except Exception as err:  # network, missing split, missing dataset
        raise DataError(f"{source} (split {split!r}): cannot load: {err}") from None
    rows = [{k: _as_text(v) for k, v in r.items()} for r in ds]
    if not rows:
        raise DataError(f"{source} (split {split!r}): no rows")
    return Table(f"{source}[{split}]", list(ds.column_names), rows)


def _as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)  # default: bytes, dates and such from Parquet


def check_table(table: Table, columns: list[str], *, required: bool = True) -> None:
    """Every named column present, and (where required) non-empty in every row."""
    for name in columns:
        if name not in table.columns:
            raise DataError(f"{table.source}: missing column {name!r}; columns present: "
                            f"{', '.join(map(repr, table.columns))}")
    if required:
        for i, row in enumerate(table.rows, 1):
            for name in columns:
                value = row.get(name)
                if value is None or not str(value).strip():
                    raise DataError(f"{table.source}: row {i}: field {name!r} is empty")


# ---------------------------------------------------------------------------------------------------------------
# Rendering rows through a template


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

    def __len__(self):
        return len(self.input_ids)


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
        return self._pieces({f: "" for f in self.template.fields})[1]

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer(self.target_prefix() + text, add_special_tokens=False)["input_ids"]

    def _pieces(self, row: dict[str, str]):
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
                pieces.append(("field", pending + row[self.field_map.get(seg.name, seg.name)]))
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
        pieces, _ = self._pieces({f: "" for f in self.template.fields})
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
        pieces, _ = self._pieces(row)
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
    if all(e.label_index is not None for e in examples):
        out["label_index"] = torch.tensor([e.label_index for e in examples], dtype=torch.long)
    if device is not None:
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out
