"""Deep prompts through PEFT's PREFIX_TUNING: the adapter ptune writes is laid out by PEFT exactly as ptune lays out
its flat table, on the tiny models of several families."""

import json

import pytest
import torch

from conftest import FAMILIES as ALL_FAMILIES
from conftest import ROWS, FamilyZoo

peft = pytest.importorskip("peft")

FAMILIES = ["llama", "qwen3", "gpt2", "falcon"]  # GQA, a head_dim of its own, no KV heads in the config, multi-query
# every causal family that takes a deep prompt (the tiny sliding-window ones refuse it: their window is 8 places)
DEEP_FAMILIES = [f for f, (kind, _, args) in ALL_FAMILIES.items() if kind == "causal" and "sliding_window" not in args]
TEMPLATE = "Tweet text : {text} Label : [TARGET]"  # no [P]: the deep prompt is the whole prompt
LABELS = ("complaint", "no complaint")
VERBALIZER = {label: label for label in LABELS}
TEXTS = [t for t, _ in ROWS[:4]]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("families"))


def load_base(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def write_adapter(folder, out, flat, layout):
    """A PREFIX_TUNING adapter holding ``flat`` as ptune's export writes it."""
    from safetensors.torch import save_file

    from ptune.interop.peft_prefix import prefix_adapter_config

    out.mkdir()
    cfg = prefix_adapter_config(flat.shape[0], layout.layers, layout.heads, layout.head_dim, str(folder), None)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({"prompt_embeddings": flat.contiguous()}, str(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_reshapes_the_written_table_as_ptune_does(zoo, tmp_path, family):
    from ptune.interop.peft_prefix import layout_problem
    from ptune.modeling.deep import deep_keys_values, kv_layout
    from ptune.modeling.scoring import cache_argument

    folder = zoo.folder(family)
    base = load_base(folder)
    layout = kv_layout(base, cache_argument(base))
    assert layout_problem(base.config, layout.layers, layout.heads, layout.head_dim) is None
    torch.manual_seed(1)
    flat = torch.randn(3, layout.width)
    write_adapter(folder, tmp_path / "adapter", flat, layout)
    pmodel = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    cache = pmodel.get_prompt(batch_size=2)
    ours = deep_keys_values(flat, layout)
    assert len(cache.layers) == layout.layers
    for layer, (keys, values) in zip(cache.layers, ours):
        assert torch.equal(layer.keys, keys.expand(2, -1, -1, -1))
        assert torch.equal(layer.values, values.expand(2, -1, -1, -1))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # and PEFT runs with it
        assert pmodel(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape[:2] == (1, 4)


def test_a_layout_peft_would_replace_is_named():
    from transformers import LlamaConfig

    from ptune.interop.peft_prefix import layout_problem, peft_kv_shape

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    assert peft_kv_shape(cfg, 4, 8) == (2, 8)
    assert layout_problem(cfg, 2, 2, 8) is None
    assert "PEFT's prefix tuning would reshape the table into 2 heads of width 8" in layout_problem(cfg, 2, 4, 8)


def test_import_layout_checks_the_table_against_the_base(zoo):
    from ptune.interop.peft_prefix import import_layout, prefix_table_problem

    cfg = load_base(zoo.folder("llama")).config
    adapter = {"num_virtual_tokens": 3, "num_layers": 2, "num_attention_heads": 2, "token_dim": 16}
    assert import_layout(adapter, cfg) == (2, 2, 8)
    assert prefix_table_problem(adapter, (3, 64)) is None
    assert "is (3, 64)" in prefix_table_problem(adapter, (3, 16))
    with pytest.raises(ValueError, match="the base has 2 layers of 2 heads of width 8"):
        import_layout(dict(adapter, num_layers=3), cfg)
    with pytest.raises(ValueError, match="does not divide"):
        import_layout(dict(adapter, num_attention_heads=3), cfg)


# ---------------------------------------------------------------------------------------------------------------
# end to end: ptune's scores and PEFT's on the same rows


def deep_checkpoint(zoo, family, out, deep_encoder="mlp", template=TEMPLATE):
    """A checkpoint with a deep prompt of 3 positions, untrained (seeded): enough for parity."""
    from ptune.training.saving import save_inference

    session = zoo.session(family, labels=LABELS, template=template,
                          encoder={"type": "mlp", "hidden_size": 16, "deep_tokens": 3, "deep_encoder": deep_encoder})
    model = session.new_model(seed=5)
    save_inference(session, model, out)
    return out


def real_tokens(predictor, text, word):
    """The row's token ids with ``word`` as its answer (no virtual tokens: the template has none), and how many
    of them are the answer's."""
    r = predictor.session.task.renderer
    enc = r.encode({"text": text}, r.target_ids(word))
    assert all(v < 0 for v in enc.virtual_index)
    return enc.input_ids, sum(label != -100 for label in enc.labels)


def peft_scores(pmodel, predictor, texts=TEXTS):
    """PEFT's sum of each label's token log-probabilities, fed the tokens ptune renders (no position ids: PEFT
    counts them from the prefix's length)."""
    out = []
    for text in texts:
        scores = {}
        for label, words in zip(predictor.labels, predictor.session.task.labels.words):
            ids, k = real_tokens(predictor, text, words[0])
            row = torch.tensor([ids])
            with torch.no_grad():
                logp = torch.log_softmax(pmodel(input_ids=row, attention_mask=torch.ones_like(row)).logits[0], -1)
            scores[label] = sum(logp[len(ids) - k - 1 + j, ids[len(ids) - k + j]].item() for j in range(k))
        out.append(scores)
    return out


def assert_same_scores(predictor, pmodel, texts=TEXTS, atol=1e-5):
    """ptune's label scores (unrounded, one unpadded row per call) within ``atol`` of PEFT's; the same predictions
    from ptune's batched (padded) path."""
    rows = [{"text": t} for t in texts]
    session = predictor.session
    predictor.model.eval()
    with torch.no_grad():
        ours = session.task.scores(predictor.model, rows, 1, session.device)  # (rows, labels)
    theirs = peft_scores(pmodel, predictor, texts)
    for row, t in zip(ours, theirs):
        assert torch.allclose(row, torch.tensor([t[label] for label in predictor.labels]), atol=atol), (row, t)
    predictions = [p["prediction"] for p in predictor.predict_rows(rows)]
    assert predictions == [max(t, key=t.get) for t in theirs]


def ptune_logits(predictor, text, word):
    """ptune's logits at the answer's places (k, V), by its own forward pass."""
    from ptune.data.render import collate

    r = predictor.session.task.renderer
    enc = r.encode({"text": text}, r.target_ids(word))
    with torch.no_grad():
        logits, _ = predictor.model.target_logits(collate([enc], predictor.session.tokenizer.pad_token_id))
    return logits[0]


@pytest.mark.parametrize("family", DEEP_FAMILIES)
def test_exported_deep_prompt_scores_the_same_in_peft(zoo, tmp_path, family):
    from ptune.inference import Predictor
    from ptune.interop.peft import export_peft

    ckpt = deep_checkpoint(zoo, family, tmp_path / "ckpt")
    summary = export_peft(ckpt, tmp_path / "peft")
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert summary["peft_type"] == adapter["peft_type"] == "PREFIX_TUNING" and adapter["num_virtual_tokens"] == 3
    predictor = Predictor.load(ckpt, base=zoo.bases[family])
    pmodel = peft.PeftModel.from_pretrained(load_base(zoo.folder(family)), str(tmp_path / "peft")).eval()
    assert isinstance(pmodel.peft_config["default"], peft.PrefixTuningConfig)
    assert torch.equal(pmodel.prompt_encoder["default"].embedding.weight.detach(), predictor.model.deep_table())
    ids, k = real_tokens(predictor, TEXTS[0], "no complaint")
    row = torch.tensor([ids])
    with torch.no_grad():
        theirs = pmodel(input_ids=row, attention_mask=torch.ones_like(row)).logits[0, -k - 1:-1]
    assert torch.allclose(theirs, ptune_logits(predictor, TEXTS[0], "no complaint"), atol=1e-5)
    assert_same_scores(predictor, pmodel)
    meta = json.loads((tmp_path / "peft" / "ptune_export.json").read_text())
    assert meta["input_format"] == "Tweet text : {text} Label :" and meta["add_special_tokens"] is True
    assert "PREFIX_TUNING" in (tmp_path / "peft" / "README.md").read_text()


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_prefix_adapter_imports_and_scores_the_same(zoo, tmp_path, family, projection):
    from ptune.inference import Predictor
    from ptune.interop.peft import import_peft, read_peft_adapter

    torch.manual_seed(2)
    pcfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=projection,
                                   encoder_hidden_size=12)
    base = load_base(zoo.folder(family))
    peft.get_peft_model(base, pcfg).save_pretrained(tmp_path / "adapter")
    summary = import_peft(tmp_path / "adapter", tmp_path / "ckpt", template=TEMPLATE, model=str(zoo.folder(family)),
                          verbalizer=VERBALIZER, overrides=["model.dtype=float32", "model.device=cpu"])
    assert summary["num_virtual_tokens"] == 4 and summary["template"] == TEMPLATE
    predictor = Predictor.load(tmp_path / "ckpt")
    assert predictor.session.cfg.encoder.deep_tokens == 4 and predictor.session.cfg.encoder.deep_encoder == "table"
    _, table = read_peft_adapter(tmp_path / "adapter")
    assert torch.equal(predictor.model.deep_table(), table)
    pmodel = peft.PeftModel.from_pretrained(load_base(zoo.folder(family)), str(tmp_path / "adapter")).eval()
    assert_same_scores(predictor, pmodel)


def test_round_trip_keeps_the_deep_table(zoo, tmp_path):
    from ptune.inference import Predictor
    from ptune.interop.peft import export_peft, import_peft

    ckpt = deep_checkpoint(zoo, "llama", tmp_path / "ckpt")
    export_peft(ckpt, tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "back")  # template, labels, base model from the export
    a = Predictor.load(ckpt, base=zoo.bases["llama"])
    b = Predictor.load(tmp_path / "back", base=zoo.bases["llama"])
    assert b.meta["template"] == a.meta["template"] and b.meta["labels"] == a.meta["labels"]
    assert b.session.cfg.encoder.deep_encoder == "table"
    assert torch.equal(a.model.deep_table(), b.model.deep_table())
    rows = [{"text": t} for t in TEXTS]
    assert a.predict_rows(rows) == b.predict_rows(rows)


def test_export_refuses_a_deep_prompt_beside_input_virtual_tokens(zoo, tmp_path):
    from ptune.errors import PtuneError
    from ptune.interop.peft import export_peft

    ckpt = deep_checkpoint(zoo, "llama", tmp_path / "ckpt", template="[P*2] " + TEMPLATE)
    with pytest.raises(PtuneError, match=r"has \[P\] tokens beside the deep prompt"):
        export_peft(ckpt, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_import_refuses_a_prefix_adapter_that_does_not_fit(zoo, tmp_path):
    from ptune.errors import CheckpointError, PtuneError
    from ptune.interop.peft import export_peft, import_peft

    ckpt = deep_checkpoint(zoo, "llama", tmp_path / "ckpt")
    export_peft(ckpt, tmp_path / "peft")
    with pytest.raises(PtuneError, match="template .* has 2 virtual tokens but the adapter has 0"):
        import_peft(tmp_path / "peft", tmp_path / "o1", template="[P*2] " + TEMPLATE)
    with pytest.raises(PtuneError, match="2 layers of 2 key/value heads of width 8, but .*gpt2.* holds 2 layers of "
                                         "4 heads of width 8"):
        import_peft(tmp_path / "peft", tmp_path / "o2", model=str(zoo.folder("gpt2")))
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(dict(cfg, num_layers=3)))
    (bad / "adapter_model.safetensors").write_bytes((tmp_path / "peft" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"a prefix of 3 positions over 3 layers .* is \(3, 96\)"):
        import_peft(bad, tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_export_refuses_a_base_whose_config_peft_reads_otherwise(zoo, tmp_path):
    """A config entry the model ignores but PEFT reads (global_head_dim: PEFT sizes the table for layers of
    another shape) makes PEFT's layout differ from the cache's: the export says so and writes nothing."""
    import shutil

    from ptune.errors import PtuneError
    from ptune.interop.peft import export_peft
    from ptune.training.saving import save_inference

    folder = tmp_path / "llama"
    shutil.copytree(zoo.folder("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, global_head_dim=16)))
    other = FamilyZoo(tmp_path)  # its "llama" is the edited folder
    session = other.session("llama", labels=LABELS, template=TEMPLATE,
                            encoder={"type": "mlp", "hidden_size": 16, "deep_tokens": 3})
    save_inference(session, session.new_model(seed=5), tmp_path / "ckpt")
    with pytest.raises(PtuneError, match="PEFT's prefix tuning would size the table by the widest"):
        export_peft(tmp_path / "ckpt", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_imported_deep_prompt_continues_training(zoo, tmp_path):
    from conftest import write_csv
    from ptune.config import load_config
    from ptune.inference import Predictor
    from ptune.interop.peft import export_peft, import_peft
    from ptune.training.run import train

    export_peft(deep_checkpoint(zoo, "llama", tmp_path / "ckpt"), tmp_path / "peft")
    out = tmp_path / "imported"
    import_peft(tmp_path / "peft", out)
    data = write_csv(tmp_path / "train.csv", ROWS)
    before = Predictor.load(out, base=zoo.bases["llama"])
    loss_before = before.evaluate_file(str(data), show_progress=False)["loss"]
    cfg = load_config(out / "train.yaml", [f"data.train={data}", f"data.dev={data}", "train.metric=loss",
                                           "train.epochs=3", "train.lr=0.05", "train.warmup_ratio=0.0"])
    train(cfg, out, resume=True, show_progress=False)
    after = Predictor.load(out, base=zoo.bases["llama"])
    assert not torch.equal(after.model.deep_table(), before.model.deep_table())  # the imported table was trained
    assert after.evaluate_file(str(data), show_progress=False)["loss"] < loss_before


def test_cli_exports_and_imports_a_deep_prompt(zoo, tmp_path):
    from click.testing import CliRunner

    from ptune.cli import main

    ckpt = deep_checkpoint(zoo, "gpt2", tmp_path / "ckpt")
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(ckpt), "--format", "peft", "--out", str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["peft_type"] == "PREFIX_TUNING"
    res = runner.invoke(main, ["import", str(tmp_path / "peft"), "--out", str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["template"] == TEMPLATE


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exported_deep_generation_task_decodes_the_same_in_peft(zoo, tmp_path, family):
    """Greedy decoding by PEFT's forward pass (the prefix in the cache, its position ids) gives ptune's tokens. PEFT's
    own ``generate`` is not compared: with transformers 5 it hands the prefix over as ``past_key_values`` while
    ``generate`` passes its cache as ``cache``, so it decodes as the bare base model (peft 0.21.2)."""
    from ptune.data.render import collate
    from ptune.inference import Predictor
    from ptune.interop.peft import export_peft
    from ptune.training.saving import save_inference

    session = zoo.session(family, type="generation", template="{text} Label : [TARGET]", max_new_tokens=6,
                          encoder={"type": "mlp", "hidden_size": 16, "deep_tokens": 3})
    save_inference(session, session.new_model(seed=5), tmp_path / "ckpt")
    export_peft(tmp_path / "ckpt", tmp_path / "peft")
    predictor = Predictor.load(tmp_path / "ckpt", base=zoo.bases[family])
    pmodel = peft.PeftModel.from_pretrained(load_base(zoo.folder(family)), str(tmp_path / "peft")).eval()
    tok = predictor.session.tokenizer
    for text in TEXTS[:3]:
        enc = predictor.session.task.renderer.encode({"text": text})
        ours = predictor.model.generate(collate([enc], tok.pad_token_id), 6, tok.eos_token_id, tok.pad_token_id)[0]
        seq = torch.tensor([enc.input_ids])
        for _ in range(len(ours)):
            with torch.no_grad():
                step = pmodel(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1].argmax()
            seq = torch.cat([seq, step.view(1, 1)], dim=1)
        assert seq[0, len(enc.input_ids):].tolist() == ours.tolist()
