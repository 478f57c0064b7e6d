"""Fuzzing the parsers that read user input: whatever the input, they return a result or raise ptune's own error
type (a PtuneError subclass that the CLI prints as one line), never anything else."""

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptune.data.tables import read_table
from ptune.errors import PtuneError, TemplateError
from ptune.template import Template, parse_template

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# pieces of the template syntax, whole and broken, so that random joins reach every branch of the parser
TEMPLATE_PIECES = ["[P]", "[P*3]", "[P*0]", "[P*99999]", "[P*", "[P*-1]", "[TARGET]", "[MASK]", "[target]", "{",
                   "}", "{{", "}}", "{text}", "{ }", "{}", "{a b}", "{[P]}", "a", " ", "\n", "*", "[", "]", "9", "é"]
templates = st.one_of(st.text(max_size=60),
                      st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=12).map("".join))


@FUZZ
@given(templates, st.sampled_from(["causal", "masked", None]), st.lists(st.sampled_from(["text", "a b", "x"])))
def test_template_parser_raises_only_template_errors(source, kind, columns):
    try:
        template = parse_template(source)
    except TemplateError as err:
        assert str(err)
        return
    assert isinstance(template, Template)
    assert template.n_virtual >= 0 and isinstance(template.fields, list) and isinstance(template.is_prefix, bool)
    try:
        template.validate(kind=kind, columns=columns)
    except TemplateError as err:
        assert str(err)


def test_template_parser_refuses_non_strings_and_huge_counts():
    with pytest.raises(TemplateError, match="must be a string"):
        parse_template(None)
    with pytest.raises(TemplateError, match="1 to 4096 virtual tokens"):
        parse_template("[P*" + "9" * 5000 + "] {text} [TARGET]")  # int() alone would raise ValueError here


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _read(folder, name, data: bytes):
    path = folder / name
    path.write_bytes(data)
    try:
        table = read_table(path)
    except PtuneError as err:
        assert str(err)
        return None
    assert table.rows and all(isinstance(r, dict) for r in table.rows)
    return table


CSV_PIECES = ['"', ",", "\t", "\n", "\r\n", "\r", "a", "text", "label", " ", "\x00", "é", '""', "\u2028", "\ufeff"]
JSON_PIECES = ["{", "}", "[", "]", '"a"', '"text"', ":", ",", "1", "1e999", "null", "true", "NaN", "\n", " ", '"\\u',
               '"\u2028"', "9" * 5000, "[" * 2000]
texts_csv = st.lists(st.sampled_from(CSV_PIECES), max_size=30).map("".join)
texts_json = st.lists(st.sampled_from(JSON_PIECES), max_size=20).map("".join)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.txt"]))
def test_readers_on_random_bytes(fuzz_dir, data, name):
    _read(fuzz_dir, name, data)


@FUZZ
@given(texts_csv, st.sampled_from(["d.csv", "d.tsv"]), st.booleans())
def test_delimited_reader_on_csv_like_text(fuzz_dir, text, name, bom):
    _read(fuzz_dir, name, (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


@FUZZ
@given(texts_json)
def test_jsonl_reader_on_json_like_text(fuzz_dir, text):
    _read(fuzz_dir, "d.jsonl", text.encode("utf-8"))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 10_000))
def test_parquet_reader_on_damaged_files(fuzz_dir, flips, cut):
    data = bytearray(_parquet_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    _read(fuzz_dir, "d.parquet", bytes(data[:max(1, cut % (len(data) + 1))]))


def _parquet_bytes(cache={}):
    if "b" not in cache:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{"text": "hello", "label": "x", "n": 1, "raw": b"\xff"}] * 3), buf)
        cache["b"] = buf.getvalue()
    return cache["b"]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    rows = [{"text": "one\u2028two\x85three", "label": "x"}, {"text": "b", "label": "y"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    assert read_table(tmp_path / "d.jsonl").rows == rows


def test_parquet_binary_values_become_text(tmp_path):
    (tmp_path / "d.parquet").write_bytes(_parquet_bytes())
    table = read_table(tmp_path / "d.parquet")
    assert table.rows[0]["n"] == "1" and isinstance(table.rows[0]["raw"], str)
