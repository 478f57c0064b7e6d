import json

import pytest

from ptune.config import config_from_dict, load_config
from ptune.data.tables import read_table
from ptune.errors import ConfigError, DataError
from ptune.tasks.metrics import macro_f1


def test_readers_for_each_format(tmp_path):
    rows = [{"text": "a, b", "label": "x"}, {"text": "c", "label": "y"}]
    (tmp_path / "d.csv").write_text('text,label\n"a, b",x\nc,y\n')
    (tmp_path / "d.tsv").write_text("text\tlabel\na, b\tx\nc\ty\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        t = read_table(tmp_path / f"d.{ext}")
        assert t.rows == rows and t.columns == ["text", "label"], ext


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "file not found"),
    ("d.xlsx", b"x", "unknown data format '.xlsx'"),
    ("e.csv", b"", "empty file"),
    ("h.csv", b"text,label\n", "no data rows"),
    ("b.csv", b"text,label\ncaf\xe9,x\n", r"not valid UTF-8 at byte offset 14 \(line 2\)"),
    ("r.csv", b"text,label\na,b,c\n", "row 1 \\(line 2\\) has 3 fields, the header has 2"),
    ("j.jsonl", b'{"a": 1}\n[1]\n', "line 2: expected a JSON object"),
])
def test_bad_files_name_file_and_place(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(tmp_path / name)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="train.batch_size: expected int, got str"):
        config_from_dict({"train": {"batch_size": "8"}})
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        config_from_dict({"train": {"lr": 0}})
    with pytest.raises(ConfigError, match="encoder.type must be one of lstm, mlp, embedding"):
        config_from_dict({"encoder": {"type": "gru"}})
    (tmp_path / "c.yaml").write_text("train:\n  lr: 3e-2\ndata:\n  train: t.csv\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.epochs=3", "task.verbalizer={a: yes}"])
    assert cfg.train.lr == 0.03 and cfg.train.epochs == 3 and cfg.task.verbalizer == {"a": "yes"}
    assert cfg.data.train == str(tmp_path / "t.csv")  # relative to the config file


def test_macro_f1_hand_made_case():
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", "b"]
    # a: P=1, R=.5 -> F1 2/3; b: P=2/3, R=1 -> F1 .8
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 0.8) / 2)
    assert macro_f1(["a", "b"], ["a", "a"], ["a", "b"]) == pytest.approx((2 / 3 + 0) / 2)


def test_hf_dataset_source_on_a_local_folder(tmp_path, monkeypatch):
    """`hf:NAME` goes through datasets.load_dataset; here NAME is a local folder, so no hub is needed."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nhello,a\nworld,b\n")
    t = read_table(f"hf:{folder}", split="train")
    assert t.rows == [{"text": "hello", "label": "a"}, {"text": "world", "label": "b"}]
    with pytest.raises(DataError, match="split 'validation'"):
        read_table(f"hf:{folder}", split="validation")


def test_encoder_table_starts_from_word_or_text_embeddings():
    import torch
    from transformers import PreTrainedTokenizerFast

    from conftest import _bpe
    from ptune.config import EncoderConfig
    from ptune.modeling.encoders import init_table

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<pad>"])._tokenizer, pad_token="<pad>")
    emb = torch.nn.Embedding(len(tok), 8)
    words = init_table(EncoderConfig(type="lstm", init="words", init_text="great terrible"), 3, emb, tok)
    ids = [tok.encode(" great", add_special_tokens=False)[0], tok.encode(" terrible", add_special_tokens=False)[0]]
    assert torch.equal(words, emb.weight[[ids[0], ids[1], ids[0]]].detach())  # one word each, cycled
    text = init_table(EncoderConfig(type="mlp", init="text", init_text="hello world"), 2, emb, tok)
    first = tok.encode("hello world", add_special_tokens=False)[:2]
    assert torch.equal(text, emb.weight[first].detach())
    rand = init_table(EncoderConfig(type="embedding"), 4, emb, tok)
    assert rand.shape == (4, 8) and abs(rand.std().item() - emb.weight.std().item()) < 0.5 * emb.weight.std().item()


def test_vocabulary_file_mapping_needs_a_key(tiny_causal_dir, tmp_path):
    from conftest import tiny_config
    from ptune.session import open_session
    from ptune.tasks import load_vocab_ids

    cfg = tiny_config(tiny_causal_dir, task={"type": "probing", "template": "[P*2] {text} [TARGET]"})
    renderer = open_session(cfg).task.renderer
    (tmp_path / "v.json").write_text(json.dumps({"bert": ["great", "terrible"], "roberta": ["hello"]}))
    with pytest.raises(DataError, match="several word lists \\(bert, roberta\\); name one as"):
        load_vocab_ids(str(tmp_path / "v.json"), renderer)
    ids = load_vocab_ids(f"{tmp_path / 'v.json'}#bert", renderer)
    assert ids == sorted({renderer.target_ids(w)[0] for w in ("great", "terrible") if len(renderer.target_ids(w)) == 1})
    assert ids


def test_example_configs_are_valid():
    from pathlib import Path

    from ptune.config import load_config
    from ptune.evaluation.search import apply_settings, build, candidates, load_search
    from ptune.evaluation.space import builtin_space

    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:  # every key known, every value in range (the data is not read here)
        if "search:" in path.read_text():
            base, search = load_search(path)
            grid = (candidates(base, search["space"]) if "space" in search  # else the built-in space, 30 blocks
                    else [(c, apply_settings(base, c)) for c in builtin_space(base, 30)])
            for _, values in grid:
                assert build(values, str(path)).task.template
        else:
            assert load_config(str(path)).task.template


def test_the_demo_example_config_is_the_demos_recipe():
    from pathlib import Path

    from ptune.config import config_from_dict, load_config
    from ptune.demo import DEMO_CONFIG

    example = load_config(str(Path(__file__).parent.parent / "examples" / "demo_customer_messages.yaml"))
    demo = config_from_dict(DEMO_CONFIG)
    for section in ("task", "encoder", "train"):
        assert getattr(example, section) == getattr(demo, section), section
    assert Path(example.data.train).name == "customer_messages_train.csv" and Path(example.data.train).is_file()


def test_config_built_in_python_round_trips_through_yaml(tmp_path):
    from ptune.config import Config, DataConfig, TaskConfig, load_config

    cfg = Config(task=TaskConfig(template="[P*2] {text} Label : [TARGET]",
                                 verbalizer={"pos": "yes", "neg": ["no", "nah"]}),
                 data=DataConfig(train=tmp_path / "t.csv", columns={"text": "Tweet text"}),
                 train={"lr": 3e-5, "epochs": 2})
    text = cfg.to_yaml(tmp_path / "c.yaml")
    assert "pos: 'yes'" in text  # quoted, so that no reader takes it for a boolean
    assert load_config(tmp_path / "c.yaml") == cfg and Config.from_yaml(tmp_path / "c.yaml") == cfg
    # a relative data path in the file is read from the file's folder, as in any config file
    (tmp_path / "sub").mkdir()
    cfg.replace({"data.train": "t.csv"}).to_yaml(tmp_path / "sub" / "r.yaml")
    assert load_config(tmp_path / "sub" / "r.yaml").data.train == str(tmp_path / "sub" / "t.csv")


def test_sections_built_by_keyword_are_checked_like_a_file():
    from ptune.config import Config, EncoderConfig, TrainConfig

    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    with pytest.raises(ConfigError, match="train.epochs: expected int, got float 2.5"):
        TrainConfig(epochs=2.5)
    with pytest.raises(ConfigError, match="encoder.hidden_size must be >= 1"):
        EncoderConfig(hidden_size=0)
    with pytest.raises(ConfigError, match="data.columns.text: expected str, got int 3"):
        Config(data={"columns": {"text": 3}})
    # a section given as a mapping is the same as the dataclass built from it
    built = Config(train=TrainConfig(epochs=3))
    assert Config(train={"epochs": 3}) == built == config_from_dict({"train": {"epochs": 3}})


def test_a_template_field_mapped_to_another_column_trains_and_predicts(tiny_causal_dir, tmp_path):
    """``data.columns`` maps the template's ``{text}`` to a CSV column named otherwise: rendering the target's
    leading space and the shared prefix reads the mapped column too (a KeyError before)."""
    from conftest import ROWS, tiny_config, write_csv
    from ptune.inference import Predictor
    from ptune.training.run import train

    data = {"train": str(write_csv(tmp_path / "train.csv", ROWS, header=("body", "label"))),
            "columns": {"text": "body"}}
    cfg = tiny_config(tiny_causal_dir, data, train={"epochs": 1})
    train(cfg, tmp_path / "ckpt", show_progress=False)
    predictions = Predictor.load(tmp_path / "ckpt").predict_rows([{"body": ROWS[0][0]}])
    assert predictions[0]["prediction"] in {label for _, label in ROWS}
