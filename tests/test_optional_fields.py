"""Template fields that may be empty (``data.optional_fields``): an empty cell of such a field reads as an empty
string on every path that reads rows; any other empty field stays an error naming file, row and field."""

import json

import pytest

from conftest import ROWS, tiny_config, write_csv
from ptune.errors import ConfigError, DataError

TEMPLATE = "[P*2] Text : {text} Url : {url} [P*2] Label : [TARGET]"


def rows_with_urls(empty_every: int = 3) -> list[tuple[str, str, str]]:
    """ROWS with a url column that is empty in every ``empty_every``-th row."""
    return [(text, "" if i % empty_every == 0 else f"https://example.com/{i}", label)
            for i, (text, label) in enumerate(ROWS)]


def url_config(model_dir, train: str, **data):
    return tiny_config(model_dir, {"train": train, **data}, task={"template": TEMPLATE}, train={"epochs": 1})


def test_an_empty_field_is_an_error_naming_file_row_field_and_the_option(tiny_causal_dir, tmp_path):
    from ptune.training.prepare import prepare

    train = write_csv(tmp_path / "train.csv", rows_with_urls(), header=("text", "url", "label"))
    with pytest.raises(DataError) as err:
        prepare(url_config(tiny_causal_dir, str(train)))
    message = str(err.value)
    assert f"{train}: row 1: field 'url' is empty" in message
    assert "data.optional_fields" in message


def test_an_optional_empty_field_trains_and_predicts(tiny_causal_dir, tmp_path):
    from ptune.inference import Predictor
    from ptune.training.run import train

    data = write_csv(tmp_path / "train.csv", rows_with_urls(), header=("text", "url", "label"))
    train(url_config(tiny_causal_dir, str(data), optional_fields=["url"]), tmp_path / "run", show_progress=False)
    predictor = Predictor.load(tmp_path / "run")
    unlabeled = tmp_path / "unlabeled.jsonl"  # a cell missing, a null, an empty string
    unlabeled.write_text("\n".join(json.dumps(r) for r in [
        {"text": "my order is late", "url": "https://example.com/a"}, {"text": "thanks a lot"},
        {"text": "refund please", "url": None}, {"text": "where is it", "url": ""}]) + "\n", encoding="utf-8")
    table, preds = predictor.predict_file(unlabeled, show_progress=False)
    assert len(preds) == 4 and all(p["prediction"] in ("complaint", "no complaint") for p in preds)
    # a missing cell reads as an empty one
    assert preds[1]["scores"] == predictor.predict([{"text": "thanks a lot", "url": ""}])[0]["scores"]


def test_a_field_not_listed_as_optional_still_must_be_filled(tiny_causal_dir, tmp_path):
    from ptune.training.prepare import prepare

    rows = rows_with_urls()
    rows[4] = ("  ", *rows[4][1:])
    train = write_csv(tmp_path / "train.csv", rows, header=("text", "url", "label"))
    with pytest.raises(DataError, match=r"row 5: field 'text' is empty"):
        prepare(url_config(tiny_causal_dir, str(train), optional_fields=["url"]))


def test_every_field_may_be_optional_but_never_the_label(tiny_causal_dir, tmp_path):
    from ptune.training.prepare import prepare

    rows = rows_with_urls()
    rows[2] = (rows[2][0], rows[2][1], "")
    train = write_csv(tmp_path / "train.csv", rows, header=("text", "url", "label"))
    with pytest.raises(DataError, match=r"row 3: field 'label' is empty"):
        prepare(url_config(tiny_causal_dir, str(train), optional_fields="*"))


@pytest.mark.parametrize("optional, message", [
    (["url", "Url"], "data.optional_fields names 'Url', which task.template does not read; its fields: 'text', 'url'"),
    (["label"], "data.optional_fields names 'label', the label column"),
    ("all", "data.optional_fields must be a list of template fields or \"*\""),
])
def test_optional_fields_config_errors_name_the_field(tiny_causal_dir, optional, message):
    with pytest.raises(ConfigError) as err:
        url_config(tiny_causal_dir, "train.csv", optional_fields=optional)
    assert message in str(err.value)


def test_optional_fields_follow_data_columns(tiny_causal_dir):
    cfg = url_config(tiny_causal_dir, "train.csv", optional_fields=["url"], columns={"url": "Link"})
    assert cfg.data.optional_columns(["text", "url"]) == {"Link"}
    assert cfg.replace({"data.optional_fields": "*"}).data.optional_columns(["text", "url"]) == {"text", "Link"}


def test_sentence_embedding_text_skips_an_empty_optional_field(tiny_causal_dir):
    from ptune.data.tables import Table
    from ptune.evaluation.embedding_baseline import row_texts

    cfg = url_config(tiny_causal_dir, "train.csv", optional_fields=["url"])
    table = Table("rows", ["text", "url"], [{"text": "late", "url": "u"}, {"text": "late", "url": ""},
                                            {"text": "late", "url": None}])
    assert row_texts(cfg, table) == ["late u", "late", "late"]


def test_raft_spec_makes_the_columns_empty_in_any_row_optional(tmp_path):
    from ptune.bench.fewshot import raft_spec, task_config

    folder = tmp_path / "raft" / "papers"
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"data_columns": ["Title", "Abstract", "Url", "ID"],
                                                  "label_columns": {"Label": ["yes", "no"]}}), encoding="utf-8")
    write_csv(folder / "train.csv", [("a", "an abstract", "u1", "1", "yes"), ("b", "", "u2", "2", "no")],
              header=("Title", "Abstract", "Url", "ID", "Label"))
    write_csv(folder / "test_unlabeled.csv", [("c", "text", "", "3", "")], header=("Title", "Abstract", "Url", "ID",
                                                                                   "Label"))
    spec = raft_spec("papers", tmp_path)
    assert spec.optional_fields == ("Abstract", "Url")
    cfg = task_config(spec, "model", template=spec.ptuning, encoder="lstm", dtype="float32", device="cpu", lr=1e-2,
                      batch_size=4, epochs=1, seed=1)
    assert cfg.data.optional_fields == ["Abstract", "Url"]


def test_serve_accepts_a_row_whose_optional_field_is_missing_or_empty(tiny_causal_dir, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from ptune.inference import Predictor
    from ptune.serving.app import create_app
    from ptune.serving.thread import ServerThread
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    cfg = tiny_config(tiny_causal_dir, {"optional_fields": ["url"]}, task={"template": TEMPLATE, "verbalizer": {
        "complaint": "complaint", "no complaint": "no complaint"}})
    session = open_session(cfg)
    save_inference(session, session.new_model(seed=3), tmp_path / "links")
    rows = [{"text": "late again", "url": "https://example.com"}, {"text": "late again"},
            {"text": "late again", "url": ""}, {"text": "late again", "url": None}]
    with ServerThread(create_app({"links": tmp_path / "links"})) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/classify", json={"task": "links", "rows": rows})
        assert r.status_code == 200, r.text
        served = r.json()["predictions"]
        missing = c.post("/v1/classify", json={"task": "links", "rows": [{"url": "https://example.com"}]})
        assert missing.status_code == 422 and "rows[0] lacks field 'text'" in missing.text
        blank = c.post("/v1/classify", json={"task": "links", "rows": [{"text": " ", "url": "x"}]})
        assert blank.status_code == 422 and "rows[0].text is empty" in blank.text
        schema = c.get("/openapi.json").json()
    expected = Predictor.load(tmp_path / "links").predict([{**r, "url": r.get("url") or ""} for r in rows])
    assert [p["label"] for p in served] == [e["prediction"] for e in expected]
    assert served[1]["scores"] == pytest.approx(served[2]["scores"])
    assert '"required": ["text"]' in json.dumps(schema)
