"""Tables: read rows from CSV, TSV, JSONL, Parquet files or HF datasets, and check the columns a run needs.

Every problem with the input is a ``DataError`` naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

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
        row = {str(k): cell_text(v) for k, v in obj.items()}
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
        rows = [{str(k): cell_text(v) for k, v in r.items()} for r in data.to_pylist()]
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
        # never a dataset's loading script (datasets 3 and older run one only when trusted; 4 and later refuse any)
        ds = datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 else None, split=split,
                                   trust_remote_code=False)
    except Exception as err:  # network, missing split, missing dataset
        raise DataError(f"{source} (split {split!r}): cannot load: {err}") from None
    rows = [{k: cell_text(v) for k, v in r.items()} for r in ds]
    if not rows:
        raise DataError(f"{source} (split {split!r}): no rows")
    return Table(f"{source}[{split}]", list(ds.column_names), rows)


def cell_text(value) -> str | None:
    """A cell as the text the tasks read: None stays missing, booleans are ``true``/``false``, numbers their usual
    text, anything else (lists, mappings, bytes, dates from Parquet) JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)  # default: bytes, dates and such from Parquet


def check_table(table: Table, columns: list[str], *, required: bool = True, optional: set[str] = frozenset(),
                empty_hint: str = "") -> None:
    """Every named column present, and (where required) non-empty in every row but in the ``optional`` columns,
    whose cells may be empty or missing. ``empty_hint`` ends the message about an empty cell (how to allow one)."""
    for name in columns:
        if name not in table.columns:
            raise DataError(f"{table.source}: missing column {name!r}; columns present: "
                            f"{', '.join(map(repr, table.columns))}")
    if required:
        checked = [name for name in columns if name not in optional]
        for i, row in enumerate(table.rows, 1):
            for name in checked:
                value = row.get(name)
                if value is None or not str(value).strip():
                    raise DataError(f"{table.source}: row {i}: field {name!r} is empty{empty_hint}")


# ---------------------------------------------------------------------------------------------------------------
# Rendering rows through a template

