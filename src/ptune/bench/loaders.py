"""Readers for the benchmark data sets (LAMA T-REx, FewGLUE, SST-2, AG News, TREC, RAFT), each returning
``ptune.data.Table`` objects. The data stay where they are: every function takes the folder or file as an argument.

Only formats ptune's own reader does not cover are parsed here (AG News: TSV without a header; TREC: Latin-1 lines
``COARSE:fine question``); the others go through ``ptune.data.read_table``.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from ..data.tables import Table, read_table
from ..errors import DataError, PtuneError


def shared_data_dir() -> Path:
    """``$PTUNE_SHARED_DATA`` or ``../shared/data`` (relative to the working directory)."""
    return Path(os.environ.get("PTUNE_SHARED_DATA", "../shared/data"))


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise PtuneError(f"{path}: {what} data folder not found; pass --data PATH (the shared data is not part of "
                         "the repository)")
    return path


# ---------------------------------------------------------------------------------------------------------------
# LAMA

def _json_objects(text: str, source: str) -> list[dict]:
    """JSON objects one per line, also when a file's single line lacks its newline or several are glued together."""
    out, dec, pos = [], json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{source}: not valid JSON at character {pos} ({err.msg})") from None
        out.append(obj)


def relation_templates(lama_dir: str | Path) -> dict[str, dict]:
    """Relation id -> its record (``template`` like ``"[X] works for [Y] ."``, ``label``, ...): from
    ``relations.jsonl``, else from the per-relation files in ``single_relations/``."""
    lama_dir = Path(lama_dir)
    records: list[dict] = []
    if (lama_dir / "relations.jsonl").is_file():
        records = _json_objects((lama_dir / "relations.jsonl").read_text(encoding="utf-8"), "relations.jsonl")
    else:
        for path in sorted((lama_dir / "single_relations").glob("*.jsonl")):
            records += _json_objects(path.read_text(encoding="utf-8"), str(path))
    return {r["relation"]: r for r in records if "relation" in r and "template" in r}


def convert_template(raw: str, kind: str, field: str = "sub_label") -> tuple[str | None, str]:
    """A LAMA template (``[X]`` subject, ``[Y]`` object) as a ptune template; returns (template or None, note).

    Masked LM: ``[X] works for [Y] .`` -> ``{sub_label} works for [TARGET] .``.
    Causal LM: the target must come last, so the text after ``[Y]`` is dropped (``"[X] is a [Y] by profession ."`` ->
    ``{sub_label} is a [TARGET]``, noted); a template whose ``[Y]`` comes before ``[X]`` cannot be written with the
    target last, so None is returned with the reason.
    """
    if raw.count("[X]") != 1 or raw.count("[Y]") != 1:
        return None, f"template {raw!r} does not hold exactly one [X] and one [Y]"
    escaped = raw.replace("{", "{{").replace("}", "}}")
    if kind == "masked":
        return " ".join(escaped.replace("[X]", "{" + field + "}").replace("[Y]", "[TARGET]").split()), ""
    x, y = escaped.index("[X]"), escaped.index("[Y]")
    if y < x:
        return None, f"object [Y] comes before subject [X] in {raw!r}: no causal-LM prompt with the target last"
    head, tail = escaped[:y], escaped[y + 3:]
    note = "" if re.fullmatch(r"\s*[.?!]?\s*", tail) else f"causal LM: text after [Y] dropped ({tail.strip()!r})"
    return " ".join((head.replace("[X]", "{" + field + "}") + "[TARGET]").split()), note


def ptuning_template(shape: tuple[int, int, int], kind: str, field: str = "sub_label") -> str:
    """The paper's template shapes: (a, b, c) -> ``[P*a] {sub_label} [P*b] [TARGET] [P*c]`` (zero runs left out).
    A causal LM needs c == 0 (nothing after the target)."""
    a, b, c = shape
    if kind == "causal" and c:
        raise PtuneError(f"template shape {a},{b},{c}: a causal LM needs nothing after the target; use {a},{b},0")
    if a + b + c == 0:
        raise PtuneError("template shape 0,0,0 has no virtual tokens")
    parts = ([f"[P*{a}]"] if a else []) + ["{" + field + "}"] + ([f"[P*{b}]"] if b else []) + ["[TARGET]"] + \
        ([f"[P*{c}]"] if c else [])
    return " ".join(parts)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0:
        raise PtuneError(f"--shape {text!r}: expected three counts such as 3,3,0")
    return parts  # type: ignore[return-value]


def lama_relation_files(lama_dir: str | Path, relation: str) -> dict:
    """Paths of a relation's train/dev/test (None where missing) and where its test comes from.

    The official test file (``fact-retrieval/original/<rel>/test.jsonl``) is used where present. For the 13 relations
    whose test file is missing, PROVENANCE.md names ParaRel's ``pararel_trex_lms_vocab/<rel>.jsonl`` as the closest
    stand-in (LAMA T-REx facts filtered to the shared BERT/RoBERTa vocabulary, i.e. a LAMA-29k-like set, "not the
    official files; use with care"); it is used and marked ``test_source: pararel-standin``."""
    lama_dir = Path(lama_dir)
    folder = lama_dir / "fact-retrieval" / "original" / relation
    files: dict = {s: (folder / f"{s}.jsonl" if (folder / f"{s}.jsonl").is_file() else None)
                   for s in ("train", "dev", "test")}
    source = "original"
    if files["test"] is None:
        standin = lama_dir / "pararel_trex_lms_vocab" / f"{relation}.jsonl"
        files["test"], source = (standin, "pararel-standin") if standin.is_file() else (None, "missing")
    files["test_source"] = source
    return files


def list_relations(lama_dir: str | Path) -> list[str]:
    folder = Path(lama_dir) / "fact-retrieval" / "original"
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda r: int(r[1:]) if r[1:].isdigit() else 0)


def read_lama(path: str | Path) -> Table:
    """A LAMA jsonl file (fields ``sub_label``, ``obj_label`` and others) as a Table."""
    table = read_table(path, "jsonl")
    for name in ("sub_label", "obj_label"):
        if name not in table.columns:
            raise DataError(f"{path}: no {name!r} field; fields present: {', '.join(table.columns)}")
    return table


def vocab_words(path: str | Path, key: str = "bert-base-cased") -> list[str]:
    """The word list of a LAMA vocabulary file: a JSON list, or a mapping model name -> list (``29k-vocab.json`` and
    ``34k-vocab.json`` hold one list per model; LAMA-29k/34k filter facts by the ``bert-base-cased`` list)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        if key not in data:
            raise DataError(f"{path}: no vocabulary for {key!r}; it has {', '.join(data)}")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of words (or a mapping of lists)")
    return [str(w) for w in data]


def filter_rows(table: Table, keep, source_note: str = "") -> Table:
    return Table(table.source + source_note, list(table.columns), [r for r in table.rows if keep(r)])


def sample_rows(table: Table, n: int | None, seed: int, note: str = "sample") -> Table:
    """``n`` rows drawn without replacement (all rows, in order, when n is None or not smaller)."""
    if not n or n >= len(table):
        return table
    rows = random.Random(seed).sample(table.rows, n)
    return Table(f"{table.source} ({note} {n})", list(table.columns), rows)


def balanced_sample(table: Table, n: int, seed: int, label_column: str) -> Table:
    """``n`` rows with the labels as even as the table allows: ``n // labels`` of each label, the remainder to
    labels drawn at random; a label with too few rows gives all it has and the others fill its place. Drawn with
    ``random.Random(seed)``; all rows when ``n`` is not smaller than the table.

    Args:
        table (`Table`): the pool.
        n (`int`): rows wanted.
        seed (`int`): the draw's seed.
        label_column (`str`): the column holding the label.

    Returns:
        `Table`: the rows, shuffled.

    Example:
        >>> balanced_sample(pool, 32, seed=1, label_column="label")  # doctest: +SKIP
    """
    if n >= len(table):
        return table
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for row in table.rows:
        by_label.setdefault(row[label_column], []).append(row)
    for rows in by_label.values():
        rng.shuffle(rows)
    labels = sorted(by_label)
    quota = {label: n // len(labels) for label in labels}
    for label in rng.sample(labels, n % len(labels)):
        quota[label] += 1
    chosen = []
    for label in labels:
        chosen += by_label[label][:quota[label]]
    spare = [row for label in labels for row in by_label[label][quota[label]:]]
    chosen += rng.sample(spare, n - len(chosen))
    rng.shuffle(chosen)
    return Table(f"{table.source} (balanced sample {n}, seed {seed})", list(table.columns), chosen)


# ---------------------------------------------------------------------------------------------------------------
# Classification sets

def read_fewglue(path: str | Path) -> Table:
    """A SuperGLUE/FewGLUE jsonl file; booleans become ``true``/``false``."""
    return read_table(path, "jsonl")


def read_sst2(path: str | Path) -> Table:
    """GLUE SST-2 TSV with a ``sentence<TAB>label`` header; trailing spaces of sentences are trimmed."""
    table = read_table(path, "tsv")
    rows = [{**r, "sentence": r["sentence"].strip()} for r in table.rows]
    return Table(table.source, table.columns, rows)


def read_agnews(path: str | Path) -> Table:
    """AG News as the ALPS copy stores it: no header, ``text<TAB>label`` (World, Sports, Business, Sci/Tech)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        text, sep, label = line.rstrip("\r").rpartition("\t")
        if not sep or not text.strip() or not label.strip():
            raise DataError(f"{path}: line {number}: expected text<TAB>label")
        rows.append({"text": text.strip(), "label": label.strip()})
    if not rows:
        raise DataError(f"{path}: no data rows")
    return Table(str(path), ["text", "label"], rows)


def read_trec(path: str | Path) -> Table:
    """TREC question classification (``COARSE:fine question`` per line), decoded as Latin-1 as the original UIUC
    files are; columns ``question``, ``label`` (coarse) and ``fine``."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_bytes().decode("latin-1").split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        head, _, question = line.partition(" ")
        coarse, sep, fine = head.partition(":")
        if not sep or not question.strip():
            raise DataError(f"{path}: line {number}: expected 'COARSE:fine question'")
        rows.append({"question": question.strip(), "label": coarse, "fine": fine})
    if not rows:
        raise DataError(f"{path}: no data rows")
    return Table(str(path), ["question", "label", "fine"], rows)


def read_raft(folder: str | Path) -> tuple[Table, dict]:
    """A RAFT task folder: the 50 labelled rows of ``train.csv`` and ``task.json``."""
    folder = Path(folder)
    table = read_table(folder / "train.csv", "csv")
    info = json.loads((folder / "task.json").read_text(encoding="utf-8")) if (folder / "task.json").is_file() else {}
    return table, info
