"""Sequence-to-sequence (T5-style) base models: virtual tokens in the encoder input, the target on the decoder side."""

from pathlib import Path

import pytest
import torch

from conftest import _bpe, tiny_config
from ptune.data.render import collate
from ptune.inference import Predictor
from ptune.session import open_session
from ptune.training.prepare import prepare
from ptune.training.trainer import fit

TEMPLATE = "Tweet text : {text} [P*2] Label : [TARGET] [P*1] ."  # virtual tokens inside, text after the target


@pytest.fixture(scope="module")
def tiny_seq2seq_dir(tmp_path_factory) -> Path:
    """A 2+2-layer T5 whose tokenizer ends every input with </s>, like T5's (untied output layer, as in T5 v1.1)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    inner = _bpe(["<pad>", "</s>"])._tokenizer
    inner.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", inner.token_to_id("</s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="</s>")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id, tie_word_embeddings=False)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


def make_session(model_dir, template=TEMPLATE, **task):
    cfg = tiny_config(model_dir, task={"template": template, **task})
    return open_session(cfg, label_values=["complaint", "no complaint"])


def test_kind_detected_and_encoder_input_holds_no_target(tiny_seq2seq_dir):
    s = make_session(tiny_seq2seq_dir)
    assert s.base.kind == "seq2seq" and s.task.pad_side == "right"
    r = s.task.renderer
    target = r.target_ids("no complaint")
    enc = r.encode({"text": "great service today"}, target)
    assert enc.decoder_labels == target and all(l == -100 for l in enc.labels)
    assert enc.input_ids == r.encode({"text": "great service today"}, r.target_ids("complaint")).input_ids
    assert enc.input_ids[-1] == s.tokenizer.eos_token_id  # the tokenizer's </s> ends the encoder input
    text = s.tokenizer.decode([i for i, v in zip(enc.input_ids, enc.virtual_index) if v < 0])
    assert "complaint" not in text and text.rstrip("</s>").strip().endswith(".")


def test_splicing_into_the_encoder_at_non_prefix_positions_matches_manual(tiny_seq2seq_dir):
    s = make_session(tiny_seq2seq_dir)
    model = s.new_model().eval()
    r = s.task.renderer
    target = r.target_ids("complaint")
    enc = r.encode({"text": "great service today"}, target)
    virtual_positions = [t for t, v in enumerate(enc.virtual_index) if v >= 0]
    assert len(virtual_positions) == 3 and virtual_positions[0] > 0  # not a prefix
    batch = collate([enc], s.tokenizer.pad_token_id, "right")
    got = model.embed(batch["input_ids"], batch["virtual_index"])[0]
    table, emb = model.prompt_table(), s.base.model.get_input_embeddings().weight
    manual = torch.stack([table[v] if v >= 0 else emb[tok] for tok, v in zip(enc.input_ids, enc.virtual_index)])
    assert torch.equal(got, manual)
    # and the spliced embeddings are what the encoder reads: the decoder starts at decoder_start_token_id
    start = s.base.model.config.decoder_start_token_id
    logits = s.base.model(inputs_embeds=manual[None], decoder_input_ids=torch.tensor([[start] + target[:-1]])).logits
    got_logits, labels = model.target_logits(batch)
    assert labels.tolist() == [target] and torch.allclose(got_logits, logits, atol=1e-5)


def test_loss_only_on_target_tokens_matches_the_model_given_labels(tiny_seq2seq_dir):
    s = make_session(tiny_seq2seq_dir)
    model = s.new_model().eval()
    r = s.task.renderer
    rows = [r.encode({"text": "great service today"}, r.target_ids("no complaint")),
            r.encode({"text": "my order arrived late and the box was broken"}, r.target_ids("complaint"))]
    assert len(rows[0]) != len(rows[1]) and len(rows[0].decoder_labels) != len(rows[1].decoder_labels)
    batch = collate(rows, s.tokenizer.pad_token_id, "right")
    assert (batch["decoder_labels"][1, len(rows[1].decoder_labels):] == -100).all()  # right-padded
    embeds = model.embed(batch["input_ids"], batch["virtual_index"])
    # transformers shifts the labels right itself; its loss is the mean over the non-ignored labels
    manual = s.base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                          labels=batch["decoder_labels"]).loss
    assert torch.allclose(model.loss(batch), manual, atol=1e-5)
    # each row scores the same alone as in the padded batch
    logp, mask = model.token_logprobs(batch)
    for i, e in enumerate(rows):
        alone, _ = model.token_logprobs(collate([e], s.tokenizer.pad_token_id, "right"))
        assert torch.allclose(logp[i][mask[i]], alone[0], atol=1e-5)


def test_label_ranking_returns_valid_labels_with_scores(tiny_seq2seq_dir):
    s = make_session(tiny_seq2seq_dir)
    model = s.new_model().eval()
    assert not model.can_score_continuations
    rows = [{"text": "hello"}, {"text": "I want a refund now"}, {"text": "great service today"}]
    preds = s.task.predict(model, rows, 2, "cpu")
    r = s.task.renderer
    for row, p in zip(rows, preds):
        assert p["prediction"] in ("complaint", "no complaint")
        assert set(p["scores"]) == {"complaint", "no complaint"}
        assert p["scores"][p["prediction"]] == max(p["scores"].values())
        # a score is the sum of the label word's token log-probabilities on the decoder side
        logp, _ = model.token_logprobs(collate([r.encode(row, r.target_ids("complaint"))], 0, "right"))
        assert abs(p["scores"]["complaint"] - logp.sum().item()) < 1e-3


def test_short_training_run_loss_falls_then_reload_predicts_the_same(tiny_seq2seq_dir, tiny_data, tmp_path):
    cfg = tiny_config(tiny_seq2seq_dir, tiny_data, task={"template": TEMPLATE}, train={"epochs": 8, "lr": 0.1})
    session, tr, _ = prepare(cfg)
    model, prog = fit(session, tr, None, tmp_path / "ckpt", show_progress=False)  # no dev: the last one is kept
    losses = [h["loss"] for h in prog.history if h["kind"] == "train"]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:2]) / 2
    rows = [{"text": "my order arrived late"}, {"text": "thanks"}, {"text": "the box was broken"}]
    loaded = Predictor.load(tmp_path / "ckpt")
    assert loaded.session.base.kind == "seq2seq" and loaded.meta["config"]["model"]["kind"] == "auto"
    before, after = session.predict(model, rows), loaded.predict_rows(rows)
    assert [p["prediction"] for p in before] == [p["prediction"] for p in after]
    for b, a in zip(before, after):
        assert all(abs(b["scores"][l] - a["scores"][l]) < 1e-3 for l in b["scores"])


def test_generation_trains_and_generates_text(tiny_seq2seq_dir, tmp_path):
    from conftest import write_csv

    data = {"train": str(write_csv(tmp_path / "gen.csv", [("great service today", "yes"), ("hello world", "no")] * 4))}
    cfg = tiny_config(tiny_seq2seq_dir, data, task={"type": "generation", "template": "{text} [P*2] [TARGET]",
                                                    "max_new_tokens": 4}, train={"epochs": 5, "lr": 0.1})
    session, tr, _ = prepare(cfg)
    r = session.task.renderer
    enc = session.task.train_examples(tr)[0][0]
    assert enc.decoder_labels == r.target_ids("yes") + [session.tokenizer.eos_token_id]
    model, prog = fit(session, tr, None, tmp_path / "gen", show_progress=False)
    losses = [h["loss"] for h in prog.history if h["kind"] == "train"]
    assert losses[-1] < losses[0]
    preds = Predictor.load(tmp_path / "gen").predict_rows([{"text": "great service today"}, {"text": "hello world"}])
    assert all(isinstance(p["prediction"], str) for p in preds) and any(p["prediction"] for p in preds)
    assert session.predict(model, [{"text": "hello world"}]) == preds[1:]
    # generate returns the new decoder tokens only; the first is the argmax after the decoder's start token
    model.eval()
    row, tok = {"text": "hello world"}, session.tokenizer
    out = model.generate(session.task.batch([r.encode(row)], "cpu"), 3, tok.eos_token_id, tok.pad_token_id)
    logits, _ = model.target_logits(session.task.batch([r.encode(row, [tok.pad_token_id])], "cpu"))
    assert out.shape[1] <= 3 and int(out[0, 0]) == int(logits[0, 0].argmax())


def test_probing_scores_one_decoder_token(tiny_seq2seq_dir):
    s = make_session(tiny_seq2seq_dir, "[P*2] {text} [P*1] [TARGET]", type="probing")
    model = s.new_model().eval()
    preds = s.task.predict(model, [{"text": "the capital of France is"}, {"text": "hello"}], 2, "cpu")
    assert all(isinstance(p["prediction"], str) for p in preds)
    target = s.task.renderer.target_ids("hello")  # the decoder's text has no leading space: "hello", not " hello"
    assert len(target) == 1
    enc = s.task.renderer.encode({"text": "the capital of France is"}, target)
    logits, labels = model.target_logits(collate([enc], 0, "right"))
    assert logits.shape[:2] == (1, 1) and labels.tolist() == [target]
    assert s.tokenizer.decode([int(logits[0, 0].argmax())]).strip() == preds[0]["prediction"]
