"""The Python API: examples/python_api.py's whole path on the tiny model, rows given as lists of dicts and
DataFrames, configs built and changed in Python, search and baselines without a YAML file."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path

import pytest

import ptune
from ptune import checkpoint
from ptune.data.tables import read_table
from ptune.errors import DataError, PtuneError, TemplateError

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"complaint", "no complaint"}


def load_example():
    spec = importlib.util.spec_from_file_location("python_api_example", ROOT / "examples" / "python_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_run(tiny_causal_dir, tmp_path_factory):
    example = load_example()
    out = tmp_path_factory.mktemp("python-api") / "run"
    result = example.main(model=str(tiny_causal_dir), out_dir=out, epochs=1, folds=2, show_progress=False)
    return example, out, result


def test_example_writes_every_output(example_run, tiny_causal_dir):
    example, out, result = example_run
    assert (out / "model" / checkpoint.MANIFEST).is_file()
    assert (out / "prefix-model" / checkpoint.MANIFEST).is_file()
    for name in ("adapter_config.json", "adapter_model.safetensors", "ptune_export.json"):
        assert (out / "prefix-peft" / name).is_file(), name
    adapter = json.loads((out / "prefix-peft" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 8
    # the YAML written is the recipe built in Python
    assert ptune.load_config(out / "config.yaml") == example.build_config(str(tiny_causal_dir), 1)
    cv = result["cv"]
    assert cv["folds"] == 2 and len(cv["runs"]) == 2
    assert 0.0 <= cv["accuracy"]["mean"] <= 1.0 and all(r["n"] > 0 for r in cv["runs"])
    assert result["train"]["out"] == str(out / "model") and "test" in result["train"]


def test_example_recipe_is_the_demos():
    from ptune.demo import DEMO_CONFIG

    example = load_example()
    built = example.build_config(example.EMBEDDED_MODEL, DEMO_CONFIG["train"]["epochs"])
    demo = ptune.Config.from_dict(DEMO_CONFIG)
    assert (built.task, built.encoder, built.train) == (demo.task, demo.encoder, demo.train)
    assert built.model == demo.model and built.data.dev_fraction == demo.data.dev_fraction


def test_example_predictions_are_valid_labels_from_every_input_form(example_run):
    example, out, result = example_run
    assert [set(p) for p in result["predictions"]] == [{"prediction", "scores"}] * len(example.NEW_MESSAGES)
    assert all(p["prediction"] in LABELS and set(p["scores"]) == LABELS for p in result["predictions"])
    predictor = ptune.load(out / "model")
    assert isinstance(predictor, ptune.Predictor) and set(predictor.labels) == LABELS
    test = read_table(example.TEST)
    rows = [{"message": r["message"]} for r in test.rows]
    from_list = predictor.predict(rows)
    frame = result["frame"]  # the DataFrame round trip: input columns kept, one prediction per row, in order
    assert list(frame.columns) == ["message", "prediction", "scores"] and len(frame) == len(rows)
    assert list(frame["message"]) == [r["message"] for r in rows]
    assert list(frame["prediction"]) == [p["prediction"] for p in from_list]
    assert list(frame["scores"]) == [p["scores"] for p in from_list]
    _, from_file = predictor.predict_file(example.TEST, show_progress=False)
    assert [p["prediction"] for p in from_file] == [p["prediction"] for p in from_list]


def test_evaluate_rows_matches_evaluate_file(example_run):
    example, out, result = example_run
    predictor = ptune.load(out / "model")
    from_file = predictor.evaluate_file(example.TEST, show_progress=False)
    from_rows = predictor.evaluate(read_table(example.TEST).rows)
    assert from_rows["n"] == from_file["n"] == 35
    for key in ("accuracy", "macro_f1", "loss"):
        assert from_rows[key] == pytest.approx(from_file[key]) == pytest.approx(result["test"][key]), key
    assert result["train"]["test"]["accuracy"] == pytest.approx(from_file["accuracy"])


def test_dataframe_cells_are_read_as_file_text(example_run):
    pandas = pytest.importorskip("pandas")
    _, out, _ = example_run
    predictor = ptune.load(out / "model")
    frame = pandas.DataFrame({"message": ["Where is my refund?", "Thanks!"], "label": ["complaint", "no complaint"],
                              "id": [1, 2]})
    metrics = predictor.evaluate(frame)
    assert metrics["n"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0
    assert list(predictor.predict(frame)["id"]) == [1, 2]  # other columns pass through untouched
    empty = predictor.predict(frame.iloc[:0])
    assert len(empty) == 0 and "prediction" in empty.columns
    with pytest.raises(DataError, match="the given DataFrame: row 2: field 'message' is empty"):
        predictor.predict(pandas.DataFrame({"message": ["fine", None]}))


def test_bad_rows_are_one_line_errors_naming_the_problem(example_run):
    _, out, _ = example_run
    predictor = ptune.load(out / "model")
    assert predictor.predict([]) == []
    with pytest.raises(TemplateError, match="no column 'message'; columns present: 'text'"):
        predictor.predict([{"text": "hello"}])
    with pytest.raises(DataError, match="expected a list of dicts or a pandas DataFrame, got dict"):
        predictor.predict({"message": "hello"})
    with pytest.raises(DataError, match="the given rows: missing column 'label'; columns present: 'message'"):
        predictor.evaluate([{"message": "hello"}])
    with pytest.raises(DataError, match="the given rows: row 2: field 'label' is empty"):
        predictor.evaluate([{"message": "hello", "label": "complaint"}, {"message": "hi"}])
    with pytest.raises(DataError, match="the given rows: row 1: label 'maybe' is not in the verbalizer"):
        predictor.evaluate([{"message": "hello", "label": "maybe"}])
    with pytest.raises(DataError, match="no rows to evaluate"):
        predictor.evaluate([])


def test_load_several_checkpoints_as_an_ensemble(example_run):
    _, out, _ = example_run
    single = ptune.load(out / "model")
    ensemble = ptune.load([out / "model", out / "model"])
    assert isinstance(ensemble, ptune.Ensemble) and ensemble.labels == single.labels
    rows = [{"message": "The box was crushed."}, {"message": "Do you ship to Canada?"}]
    alone, averaged = single.predict(rows), ensemble.predict(rows)
    # two identical members: the mean of their label probabilities is each one's own
    for a, b in zip(alone, averaged):
        assert a["prediction"] == b["prediction"]
        norm = math.log(sum(math.exp(s) for s in a["scores"].values()))
        for label in a["scores"]:
            assert b["scores"][label] == pytest.approx(a["scores"][label] - norm, abs=1e-3)
    with pytest.raises(PtuneError, match="not of an ensemble"):
        ptune.load([out / "model"], model="elsewhere")


def test_config_replace_and_override_leave_the_original_alone(tiny_causal_dir):
    cfg = ptune.Config(model=ptune.ModelConfig(name_or_path=str(tiny_causal_dir)),
                       task=ptune.TaskConfig(template="[P*2] {text} Label : [TARGET]"),
                       data=ptune.DataConfig(train=Path("train.csv")), train={"lr": 1e-2})
    before = cfg.to_dict()
    changed = cfg.replace({"train.lr": 3e-2, "task.head": "linear"}, encoder={"type": "mlp"})
    assert (changed.train.lr, changed.task.head, changed.encoder.type) == (0.03, "linear", "mlp")
    assert cfg.to_dict() == before and changed.task is not cfg.task
    assert cfg.override("train.lr=3e-2", "task.head=linear", "encoder.type=mlp") == changed
    assert cfg.data.train == "train.csv"  # a Path is kept as the text a YAML file would hold
    copy = cfg.to_dict()
    copy["train"]["lr"] = 5.0
    assert cfg.train.lr == 1e-2 and ptune.Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("build, message", [
    (lambda c: c.replace({"train.epoch": 3}), "unknown config key 'train.epoch'; did you mean train.epochs"),
    (lambda c: c.replace(trian={"lr": 1}), "unknown config key 'trian'; did you mean train"),
    (lambda c: c.replace({"train.lr": -1}), "train.lr must be > 0"),
    (lambda c: c.replace({"train.lr.x": 1}), "train.lr.x: lr is not a section"),
    (lambda c: c.override("train.batch_size=eight"), "train.batch_size: expected int, got str 'eight'"),
    (lambda c: c.override("train.lr"), "expected section.key=value"),
    (lambda c: ptune.Config(task=ptune.TaskConfig(type="regression")), "task.type must be one of"),
    (lambda c: ptune.Config(train=ptune.TrainConfig(batch_size="8")), "train.batch_size: expected int, got str"),
    (lambda c: ptune.Config(data={"trian": "x.csv"}), "unknown config key 'data.trian'; did you mean data.train"),
    (lambda c: ptune.Config(task="[P*2] {text} [TARGET]"), "task: expected a TaskConfig or a mapping"),
    (lambda c: ptune.train({"train": {"epochs": 0}}, "out"), "train.epochs must be >= 1"),
    (lambda c: ptune.cross_validate(42), "expected a Config, a mapping of config sections or a YAML file"),
])
def test_config_errors_name_the_key(build, message):
    with pytest.raises(ptune.ConfigError, match=message):
        build(ptune.Config())


def test_search_from_python_with_relative_paths(tiny_causal_dir, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(tiny_data["train"]).parent)
    cfg = tiny_config(tiny_causal_dir, {"train": "train.csv"}, train={"epochs": 1})
    report = ptune.search(cfg, tmp_path / "search", space={"train.lr": [1e-2, 3e-2]}, folds=2, seeds=[0],
                          prefer_simpler=0, show_progress=False)  # the best mean, a trained prompt here
    assert [c["settings"] for c in report["candidates"]] == [{"train.lr": 0.01}, {"train.lr": 0.03},
                                                             {"zero_shot": "Tweet text : {text} Label : [TARGET]"}]
    assert (tmp_path / "search" / checkpoint.MANIFEST).is_file() and (tmp_path / "search" / "search.json").is_file()
    best = ptune.load(tmp_path / "search")
    assert best.session.cfg.train.lr == report["candidates"][report["best"]]["settings"]["train.lr"]
    assert best.session.cfg.data.train == str(Path(tiny_data["train"]).resolve())
    builtin = ptune.search(cfg, tmp_path / "builtin", folds=2, seeds=[0], budget_minutes=0.01, show_progress=False)
    assert builtin["space"] == "built-in" and (tmp_path / "builtin" / "search.json").is_file()  # no space given
    with pytest.raises(ptune.ConfigError, match="search space 'train.lr': expected a non-empty list"):
        ptune.search(cfg, tmp_path / "again", space={"train.lr": []})


def test_baselines_take_a_mapping_of_sections(tiny_causal_dir, tiny_data):
    values = tiny_config(tiny_causal_dir, tiny_data).to_dict()
    out = ptune.baselines(values, "Tweet text : {text} Label : [TARGET]", folds=2, seeds=[0])
    assert set(out) == {"majority", "zero_shot", "sentence_embedding"}
    assert all(len(part["runs"]) == 2 and 0.0 <= part["accuracy"]["mean"] <= 1.0 for part in out.values()
               if "skipped" not in part)  # the sentence encoder's package may be missing


def test_every_public_name_is_documented():
    for name in ptune.__all__:
        doc = getattr(ptune, name).__doc__ or ""
        assert "Example" in doc, name
        if callable(getattr(ptune, name)) and not isinstance(getattr(ptune, name), type):
            assert "Args:" in doc and "Returns:" in doc, name
    for method in ("predict", "evaluate", "load"):
        for cls in (ptune.Predictor, ptune.Ensemble):
            assert "Args:" in getattr(cls, method).__doc__, (cls, method)


def imported_modules(path: Path, package: str) -> set[str]:
    """The ptune modules a source file imports (relative imports resolved against ``package``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from . import checkpoint`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("ptune.")}


def test_inference_reaches_nothing_in_training():
    src = ROOT / "src"
    seen, todo = set(), ["ptune.inference"]
    while todo:
        name = todo.pop()
        file = src / (name.replace(".", "/") + ".py")
        package = src / name.replace(".", "/") / "__init__.py"
        path = file if file.is_file() else package if package.is_file() else None
        if name in seen or path is None:
            continue
        seen.add(name)
        parent = name if path == package else name.rsplit(".", 1)[0]
        todo.extend(imported_modules(path, parent))
        todo.extend(".".join(name.split(".")[:i]) for i in range(2, name.count(".") + 1))  # parent packages
    assert "ptune.evaluator" in seen and "ptune.session" in seen
    assert not [m for m in seen if m.startswith("ptune.training")]
