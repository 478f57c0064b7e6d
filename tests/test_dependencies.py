"""No code from a model or dataset repository runs: every loader is told ``trust_remote_code=False``; and the
dependency floors stay at or above the releases that fixed known vulnerabilities."""

import re
import sys
import types
from pathlib import Path

import pytest

from ptune.config import ModelConfig
from ptune.data.tables import read_table

ROOT = Path(__file__).resolve().parents[1]


def test_hf_source_never_runs_a_loading_script(monkeypatch):
    calls = []

    class FakeDataset(list):
        column_names = ["text"]

    def load_dataset(*args, **kwargs):
        calls.append(kwargs)
        return FakeDataset([{"text": "hello"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    table = read_table("hf:someone/some-dataset", split="train")
    assert table.rows == [{"text": "hello"}]
    assert calls and all(k.get("trust_remote_code") is False for k in calls)


def test_base_model_loads_with_remote_code_refused(tiny_causal_dir, monkeypatch):
    import transformers

    from ptune.modeling.base import load_base

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_base(ModelConfig(name_or_path=str(tiny_causal_dir), dtype="float32", device="cpu"))
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(trust is False for _, trust in seen), seen


def test_sentence_encoder_loads_with_remote_code_refused(tiny_causal_dir, monkeypatch):
    import transformers

    from ptune.evaluation.embedding_baseline import SentenceEncoder

    seen = []
    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    SentenceEncoder(tiny_causal_dir)
    assert seen == [False, False]


# the release that fixed each known vulnerability in a range an older floor admitted
FIXED_IN = {"torch": "2.8", "pyarrow": "14.0.1", "tqdm": "4.66.3", "starlette": "0.49.1", "h11": "0.16",
            "jinja2": "3.1.6", "pillow": "11.3"}


def floors() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for spec in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", spec)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_dependency_floors_exclude_known_vulnerable_releases():
    from packaging.version import Version

    found = floors()
    low = {name: found.get(name) for name, fixed in FIXED_IN.items()
           if name not in found or Version(found[name]) < Version(fixed)}
    assert not low, f"floors below the fixed releases {FIXED_IN}: {low}"
