import contextlib

import torch

from conftest import tiny_config
from ptune.modeling import heads as model_lib
from ptune.data.render import collate
from ptune.session import open_session


def make_session(model_dir, template="[P*2] Tweet text : {text} [P*2] Label : [TARGET]", encoder="lstm"):
    cfg = tiny_config(model_dir, task={"template": template}, encoder={"type": encoder})
    return open_session(cfg, label_values=["complaint", "no complaint"])


def test_splicing_at_non_prefix_positions_matches_manual(tiny_causal_dir):
    s = make_session(tiny_causal_dir, "Tweet text : {text} [P*2] Label : [P*1] [TARGET]")
    model = s.new_model().eval()
    enc = s.task.renderer.encode({"text": "great service today"}, s.task.renderer.target_ids("complaint"))
    batch = collate([enc], s.tokenizer.pad_token_id)
    got = model.embed(batch["input_ids"], batch["virtual_index"])[0]
    table = model.prompt_table()
    emb = s.base.model.get_input_embeddings().weight
    virtual_positions = [t for t, v in enumerate(enc.virtual_index) if v >= 0]
    assert len(virtual_positions) == 3 and virtual_positions[0] > 0  # not a prefix
    for t, (tok, v) in enumerate(zip(enc.input_ids, enc.virtual_index)):
        expected = table[v] if v >= 0 else emb[tok]
        assert torch.equal(got[t], expected)
    assert enc.virtual_index.count(0) == 1 and sorted(v for v in enc.virtual_index if v >= 0) == [0, 1, 2]


def test_left_and_right_padding_match_unpadded_rows(tiny_causal_dir):
    s = make_session(tiny_causal_dir)
    model = s.new_model().eval()
    r = s.task.renderer
    rows = [r.encode({"text": "hello"}, r.target_ids("complaint")),
            r.encode({"text": "my order arrived late and the box was broken"}, r.target_ids("no complaint"))]
    assert len(rows[0]) != len(rows[1])
    alone = [model.token_logprobs(collate([e], 0, "left"))[0][0] for e in rows]
    for side in ("left", "right"):
        logp, mask = model.token_logprobs(collate(rows, s.tokenizer.pad_token_id, side))
        for i, e in enumerate(rows):
            assert torch.allclose(logp[i][mask[i]], alone[i][alone[i] != 0], atol=1e-5)
    # the pads sit outside: never between the virtual tokens and the text
    b = collate(rows, s.tokenizer.pad_token_id, "left")
    first_real = int(b["attention_mask"][0].nonzero()[0])
    assert (b["attention_mask"][0, first_real:] == 1).all()


def test_loss_only_on_target_tokens(tiny_causal_dir):
    s = make_session(tiny_causal_dir)
    model = s.new_model().eval()
    r = s.task.renderer
    target = r.target_ids("no complaint")
    enc = r.encode({"text": "great service today"}, target)
    assert [l for l in enc.labels if l != -100] == target
    batch = collate([enc], s.tokenizer.pad_token_id)
    # manual: full logits, next-token CE on the target positions only
    embeds = model.embed(batch["input_ids"], batch["virtual_index"])
    logits = s.base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[0]
    start = len(enc) - len(target)
    manual = torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(target))
    assert torch.allclose(model.loss(batch), manual, atol=1e-5)
    # changing a non-target token's label has no effect; changing the target does
    other = r.encode({"text": "great service today"}, r.target_ids("complaint"))
    assert not torch.allclose(model.loss(collate([other], 0)), manual)


def test_masked_lm_scores_mask_positions(tiny_masked_dir):
    s = make_session(tiny_masked_dir, "{text} [P*2] It was [MASK] .")
    model = s.new_model().eval()
    r = s.task.renderer
    enc = r.encode({"text": "great service today"}, r.target_ids("complaint"))
    assert enc.input_ids[0] == s.tokenizer.cls_token_id and enc.input_ids[-1] == s.tokenizer.sep_token_id
    masks = [t for t, i in enumerate(enc.input_ids) if i == s.tokenizer.mask_token_id]
    assert masks and all(enc.labels[t] != -100 for t in masks)
    batch = collate([enc, r.encode({"text": "hello"}, r.target_ids("no complaint"))], s.tokenizer.pad_token_id,
                    "right")
    logp, mask = model.token_logprobs(batch)
    full = torch.log_softmax(s.base.model(inputs_embeds=model.embed(batch["input_ids"], batch["virtual_index"]),
                                          attention_mask=batch["attention_mask"]).logits[0], -1)
    manual = sum(full[t, enc.labels[t]] for t in masks)
    assert torch.allclose(logp[0].sum(), manual, atol=1e-5)
    preds = s.task.predict(model, [{"text": "hello"}], 4, "cpu")
    assert preds[0]["prediction"] in ("complaint", "no complaint")


def test_bfloat16_model_scores_labels_with_a_float32_head(tiny_causal_dir):
    """bfloat16 logits of size 10-60 come in steps of 0.125-0.25, so two labels' scores would often tie exactly;
    the head runs in float32 instead, on the same inputs, and the base's own weights stay as they were."""
    cfg = tiny_config(tiny_causal_dir, model={"dtype": "bfloat16"})
    s = open_session(cfg, label_values=["complaint", "no complaint"])
    head = s.base.model.get_output_embeddings()
    keys = set(s.base.model.state_dict())
    model = s.new_model().eval()
    assert head.weight.dtype == torch.bfloat16 and set(s.base.model.state_dict()) == keys
    seen = {}
    hook = head.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    r = s.task.renderer
    batch = collate([r.encode({"text": "my order arrived late"}, r.target_ids("complaint"))], s.tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _ = model.target_logits(batch)
    hook.remove()
    assert seen["x"].dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = torch.nn.functional.linear(seen["x"].float(), head.weight.float())
    assert torch.allclose(seen["out"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(logits, logits.bfloat16().float())  # finer than bfloat16 steps
    s.new_model()  # a second model over the same base does not wrap the head twice
    assert head._ptune_weight32.dtype == torch.float32


def test_bfloat16_label_scoring_recomputes_the_scored_tokens_in_float32(tiny_causal_dir, monkeypatch):
    """Label scoring runs the vocabulary product in bfloat16 and recomputes in float32 the scored words' tokens and
    each position's most likely tokens: the words' first-token log-odds are the all-float32 head's (no bfloat16
    ties), and every score is within 1e-3 of it (only part of the log-softmax normaliser is rounded)."""
    cfg = tiny_config(tiny_causal_dir, model={"dtype": "bfloat16"})
    s = open_session(cfg, label_values=["complaint", "no complaint"])
    model = s.new_model(seed=3).eval()
    r = s.task.renderer
    words = [r.target_ids("complaint"), r.target_ids("no complaint")]
    assert len(s.tokenizer) > 2 * model_lib.SCORING_TOP_K  # so part of the vocabulary stays bfloat16
    texts = ["my order arrived late", "thanks for the quick reply", "the box was broken again", "great service"]
    batch = s.task.batch([r.encode({"text": t}) for t in texts], "cpu")
    with torch.inference_mode():
        fast = model.continuation_logprobs(batch, words)
        monkeypatch.setattr(model, "scoring_head", lambda ids: contextlib.nullcontext())
        full = model.continuation_logprobs(batch, words)
    for f, w in zip(fast, full):
        assert torch.allclose(f, w, atol=1e-3)
    assert not all(torch.equal(f, w) for f, w in zip(fast, full))  # the bfloat16 product did run
    assert torch.allclose(fast[0][:, 0] - fast[1][:, 0], full[0][:, 0] - full[1][:, 0], atol=1e-5)
    head = s.base.model.get_output_embeddings()
    assert head._ptune_scored_ids is None  # reset on the way out
