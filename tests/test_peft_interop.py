"""PEFT interop with the real peft package on the tiny model: export and import give the same logits and labels."""

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import ROWS, tiny_config, write_csv
from ptune import checkpoint
from ptune.errors import CheckpointError, PtuneError
from ptune.interop.peft import export_peft, import_peft, read_peft_adapter
from ptune.inference import Predictor

peft = pytest.importorskip("peft")

PREFIX = "[P*4] Tweet text : {text} Label : [TARGET]"
VERBALIZER = {"complaint": "complaint", "no complaint": "no complaint"}
TEXTS = [t for t, _ in ROWS[:5]]


def make_checkpoint(model_dir, out, template=PREFIX, encoder="lstm"):
    """A ptune checkpoint without training (a seeded random encoder): enough for parity."""
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    cfg = tiny_config(model_dir, task={"template": template, "verbalizer": VERBALIZER},
                      encoder={"type": encoder})
    session = open_session(cfg)
    model = session.new_model(seed=3)
    save_inference(session, model, out)
    return out


def peft_model(model_dir, adapter_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def peft_label_scores(pmodel, predictor, texts):
    """PEFT's sum of label-token log-probabilities, fed the same real tokens ptune renders (prompt left to PEFT)."""
    r = predictor.session.task.renderer
    labels = predictor.session.task.labels
    out = []
    for text in texts:
        scores = {}
        for label, words in zip(labels.labels, labels.words):
            enc = r.encode({"text": text}, r.target_ids(words[0]))
            real = [t for t, v in zip(enc.input_ids, enc.virtual_index) if v < 0]
            gold = [l for l, v in zip(enc.labels, enc.virtual_index) if v < 0]
            ids = torch.tensor([real])
            with torch.no_grad():
                logits = pmodel(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            logits = logits[-len(real):]  # PEFT returns logits for the virtual positions too
            logp = torch.log_softmax(logits.float(), -1)
            k = sum(g != -100 for g in gold)
            scores[label] = sum(logp[len(real) - k - 1 + j, real[len(real) - k + j]].item() for j in range(k))
        out.append(scores)
    return out


def ptune_target_logits(predictor, text, word):
    from ptune.data.render import collate

    r = predictor.session.task.renderer
    enc = r.encode({"text": text}, r.target_ids(word))
    with torch.no_grad():
        logits, _ = predictor.model.target_logits(collate([enc], predictor.session.tokenizer.pad_token_id))
    return enc, logits[0]


def assert_same_predictions(predictor, pmodel, texts=TEXTS):
    ours = predictor.predict_rows([{"text": t} for t in texts])
    theirs = peft_label_scores(pmodel, predictor, texts)
    for o, t in zip(ours, theirs):
        assert o["prediction"] == max(t, key=t.get)
        for label, s in t.items():
            assert abs(o["scores"][label] - s) < 1e-3


def test_export_loads_in_peft_and_predicts_the_same(tiny_causal_dir, tmp_path):
    ckpt = make_checkpoint(tiny_causal_dir, tmp_path / "ckpt")
    summary = export_peft(ckpt, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_virtual_tokens"] == 4
    pmodel = peft_model(tiny_causal_dir, tmp_path / "peft")
    assert isinstance(pmodel.peft_config["default"], peft.PromptTuningConfig)
    predictor = Predictor.load(ckpt)
    # PEFT's table is ptune's, bit for bit
    _, _, prompts = checkpoint.load_model(ckpt)
    assert torch.equal(pmodel.prompt_encoder["default"].embedding.weight.detach(), prompts)
    # logits at the target positions, on the same real tokens
    enc, ours = ptune_target_logits(predictor, TEXTS[0], "no complaint")
    real = torch.tensor([[t for t, v in zip(enc.input_ids, enc.virtual_index) if v < 0]])
    with torch.no_grad():
        theirs = pmodel(input_ids=real, attention_mask=torch.ones_like(real)).logits
    k = ours.shape[0]
    assert torch.allclose(theirs[0, -k - 1:-1], ours, atol=1e-4)
    assert_same_predictions(predictor, pmodel)
    # the documented input format is what ptune feeds (virtual tokens left to PEFT)
    meta = json.loads((tmp_path / "peft" / "ptune_export.json").read_text())
    assert meta["input_format"] == summary["input_format"] == " Tweet text : {text} Label :"
    assert meta["target_prefix"] == " "
    tok = predictor.session.tokenizer
    for text in TEXTS:
        enc = predictor.session.task.renderer.encode({"text": text})
        real = [t for t, v in zip(enc.input_ids, enc.virtual_index) if v < 0]
        assert tok(meta["input_format"].format(text=text), add_special_tokens=False)["input_ids"] == real
    assert "Input format" in (tmp_path / "peft" / "README.md").read_text()


def test_export_refuses_a_template_that_is_not_a_prefix(tiny_causal_dir, tmp_path):
    ckpt = make_checkpoint(tiny_causal_dir, tmp_path / "ckpt", template="[P*2] Tweet text : {text} [P*2] Label : [TARGET]")
    with pytest.raises(PtuneError, match="only prepends them"):
        export_peft(ckpt, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


@pytest.mark.parametrize("kind", ["p_tuning", "prompt_tuning"])
def test_import_peft_adapter_predicts_the_same(tiny_causal_dir, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32)
    if kind == "p_tuning":
        pcfg = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16)
    else:
        pcfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    peft.get_peft_model(base, pcfg).save_pretrained(tmp_path / "adapter")
    summary = import_peft(tmp_path / "adapter", tmp_path / "ckpt", template=PREFIX, model=str(tiny_causal_dir),
                          verbalizer=VERBALIZER, overrides=["model.dtype=float32"])  # PEFT runs it in float32
    assert summary["num_virtual_tokens"] == 4
    predictor = Predictor.load(tmp_path / "ckpt")
    assert predictor.session.cfg.encoder.type == "embedding"
    _, table = read_peft_adapter(tmp_path / "adapter")
    assert torch.equal(predictor.model.prompt_table(), table)
    assert_same_predictions(predictor, peft_model(tiny_causal_dir, tmp_path / "adapter"))


def test_round_trip_ptune_peft_ptune(tiny_causal_dir, tmp_path):
    ckpt = make_checkpoint(tiny_causal_dir, tmp_path / "ckpt")
    export_peft(ckpt, tmp_path / "peft")
    import_peft(tmp_path / "peft", tmp_path / "back")  # template, labels, base model from the export
    a, b = Predictor.load(ckpt), Predictor.load(tmp_path / "back")
    assert b.meta["template"] == a.meta["template"] and b.meta["labels"] == a.meta["labels"]
    assert torch.equal(a.model.prompt_table(), b.model.prompt_table())
    rows = [{"text": t} for t in TEXTS]
    assert a.predict_rows(rows) == b.predict_rows(rows)


def test_imported_checkpoint_continues_training(tiny_causal_dir, tmp_path):
    from ptune.config import load_config
    from ptune.training.run import train

    ckpt = make_checkpoint(tiny_causal_dir, tmp_path / "ckpt")
    export_peft(ckpt, tmp_path / "peft")
    out = tmp_path / "imported"
    import_peft(tmp_path / "peft", out)
    data = write_csv(tmp_path / "train.csv", ROWS)
    before = Predictor.load(out).evaluate_file(str(data), show_progress=False)["loss"]
    table_before = Predictor.load(out).model.prompt_table().clone()
    cfg = load_config(out / "train.yaml", [f"data.train={data}", f"data.dev={data}", "train.metric=loss",
                                           "train.epochs=3", "train.lr=0.05", "train.warmup_ratio=0.0"])
    train(cfg, out, resume=True, show_progress=False)
    after_pred = Predictor.load(out)
    after = after_pred.evaluate_file(str(data), show_progress=False)["loss"]
    assert not torch.equal(after_pred.model.prompt_table(), table_before)  # the imported table was trained
    assert after < before


def test_import_refuses_unsafe_or_unsupported_adapters(tiny_causal_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    bad = tmp_path / "lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    with pytest.raises(CheckpointError, match="'LORA' cannot be imported .*not a prompt-learning adapter"):
        import_peft(bad, tmp_path / "o1")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "P_TUNING", "num_virtual_tokens": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="never unpickles"):
        import_peft(pickled, tmp_path / "o2")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}))
    (junk / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="safetensors"):
        import_peft(junk, tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_cli_export_and_import(tiny_causal_dir, tmp_path):
    from ptune.cli import main

    ckpt = make_checkpoint(tiny_causal_dir, tmp_path / "ckpt")
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(ckpt), "--format", "peft", "--out", str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["import", str(tmp_path / "peft"), "--out", str(tmp_path / "back"),
                               "--template", PREFIX, "--verbalizer", "complaint=complaint",
                               "--verbalizer", "no complaint=no complaint"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["labels"] == {"complaint": ["complaint"], "no complaint": ["no complaint"]}
    res = runner.invoke(main, ["import", str(tmp_path / "peft"), "--out", str(tmp_path / "bad"),
                               "--template", "[P*3] {text} [TARGET]"])
    assert res.exit_code == 2 and "has 3 virtual tokens but the adapter has 4" in res.output
