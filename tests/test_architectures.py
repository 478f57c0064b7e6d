"""Every model family ptune supports, on tiny random models built from each family's config class (conftest's
FAMILIES): training, batch invariance under padding, the KV-cache paths, table initialisation, checkpoints, PEFT
export and mixed-task serving; and a clear refusal, before any weight is read, of a model ptune cannot P-tune.

Models run in float32, so "the same" means equal to float32 rounding (1e-5 on log-probabilities)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import FAMILIES, ROWS, TEMPLATES, WINDOW, FamilyZoo, greedy_without_cache, tiny_config, until_eos
from ptune.data.render import collate
from ptune.data.tables import Table
from ptune.errors import ConfigError
from ptune.inference import Predictor
from ptune.modeling.base import packable
from ptune.session import open_session
from ptune.tasks.mixed import classify_mixed
from ptune.training.saving import save_inference
from ptune.training.trainer import fit, packing_bins

ALL = list(FAMILIES)
CAUSAL = [f for f in FAMILIES if FAMILIES[f][0] == "causal"]
WINDOWED = [f for f in CAUSAL if "sliding_window" in FAMILIES[f][2]]  # deep prompts refused: the window counts pads
DEEP = [f for f in CAUSAL if f not in WINDOWED]  # the families that take a deep prompt (encoder.deep_tokens)
GENERATIVE = [f for f in FAMILIES if FAMILIES[f][0] != "masked"]
LABELS = ["complaint", "no complaint"]
VERBALIZER = {label: label for label in LABELS}
# rows of different lengths, the longest past every sliding window (WINDOW) and ALiBi's and absolute positions' reach
TEXTS = ["hello", "great service today", "thanks for the quick delivery",
         "my order arrived late and the box was broken , the app crashes when I pay and I want a refund now"]
TRAIN = Table("train.csv", ["text", "label"], [{"text": t, "label": l} for t, l in ROWS])
ATOL = 1e-5


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("families"))


def kind(family: str) -> str:
    return FAMILIES[family][0]


def scores(session, model, rows) -> torch.Tensor:
    """(rows, labels) label scores through the task's own path, unrounded."""
    with torch.inference_mode():
        return session.task.scores(model, rows, 8, "cpu")


@pytest.mark.parametrize("family", ALL)
def test_training_lowers_the_loss_and_leaves_the_base_alone(zoo, family):
    s = zoo.session(family, train={"lr": 0.05, "epochs": 3})
    frozen = {k: v.clone() for k, v in s.base.model.state_dict().items()}
    examples, _ = s.task.train_examples(TRAIN)
    batch = s.task.batch(examples, "cpu")
    with torch.no_grad():
        before = s.new_model(seed=0).eval().loss(batch).item()
    model, progress = fit(s, TRAIN, None, show_progress=False, seed=0)
    with torch.no_grad():
        after = model.eval().loss(batch).item()
    assert progress.step == 6 and after < before
    assert all(torch.equal(v, frozen[k]) for k, v in s.base.model.state_dict().items())


@pytest.mark.parametrize("family", ALL)
def test_label_scores_do_not_depend_on_the_batch(zoo, family):
    """A row's label scores alone equal its scores in a batch with longer and shorter rows, under the padding ptune
    uses (left for causal LMs, right for the rest), and for causal LMs under right padding as well."""
    s = zoo.session(family)
    model = s.new_model(seed=1).eval()
    rows = [{"text": t} for t in TEXTS]
    together = scores(s, model, rows)
    alone = torch.cat([scores(s, model, [row]) for row in rows])
    assert torch.allclose(together, alone, atol=ATOL)
    r = s.task.renderer
    encoded = [r.encode(row, r.target_ids("no complaint")) for row in rows]
    assert len({len(e) for e in encoded}) >= 3 and max(len(e) for e in encoded) > 2 * WINDOW
    pad = s.tokenizer.pad_token_id
    with torch.no_grad():
        single = torch.stack([model.token_logprobs(collate([e], pad, s.task.pad_side))[0].sum() for e in encoded])
        for side in ("left", "right") if kind(family) == "causal" else ("right",):
            logp, _ = model.token_logprobs(collate(encoded, pad, side))
            assert torch.allclose(logp.sum(-1), single, atol=ATOL), side


@pytest.mark.parametrize("family", GENERATIVE)
def test_generation_is_greedy_decoding_whatever_the_batch(zoo, family):
    """``generate`` on a padded batch, with the KV cache, gives each row what greedy decoding of that row alone by
    full forward passes gives."""
    assert_generation_is_greedy(zoo.session(family, type="generation", max_new_tokens=6),
                                lambda model, e, eos: greedy_without_cache(model, e, 6, eos)[0])


def assert_generation_is_greedy(s, greedy) -> None:
    """``generate`` on a padded batch of TEXTS gives each row ``greedy(model, encoded row, eos id)``."""
    model = s.new_model(seed=2).eval()
    tok = s.tokenizer
    encoded = [s.task.renderer.encode({"text": t}) for t in TEXTS]
    with torch.no_grad():
        batched = model.generate(s.task.batch(encoded, "cpu"), 6, tok.eos_token_id, tok.pad_token_id).tolist()
        for e, row in zip(encoded, batched):
            assert until_eos(row, tok.eos_token_id) == greedy(model, e, tok.eos_token_id)


@pytest.mark.parametrize("family", CAUSAL)
def test_shared_prefix_cache_gives_the_plain_forward(zoo, family, monkeypatch):
    """Label scores from the shared prefix's cached keys and values, from the KV cache without it, and from one full
    input per (row, label) agree; so does the training loss with the prefix run once per batch."""
    s = zoo.session(family)
    model = s.new_model(seed=3).eval()
    rows = [{"text": t} for t in TEXTS]
    assert model.can_score_continuations and model.use_prefix_cache
    cached = scores(s, model, rows)
    with monkeypatch.context() as m:
        m.setattr(model, "use_prefix_cache", False)
        uncached = scores(s, model, rows)
        m.setattr(type(model), "can_score_continuations", property(lambda self: False))
        plain = scores(s, model, rows)
    assert torch.allclose(cached, uncached, atol=ATOL) and torch.allclose(cached, plain, atol=ATOL)
    examples, _ = s.task.train_examples(TRAIN)
    with torch.no_grad():
        shared, whole = (model.loss(s.task.batch(examples, "cpu", share_prefix=share)) for share in (True, False))
    assert torch.allclose(shared, whole, atol=ATOL)


@pytest.mark.parametrize("family, depth", [(f, 0) for f in CAUSAL] + [(f, 3) for f in DEEP])
def test_packed_batches_give_the_padded_loss_and_gradients(zoo, family, depth):
    """Where ``packable`` says a family's batches can be packed, the packed batch (with and without the shared
    prefix, in one bin and in several) gives the padded batch's loss and encoder gradients, behind a deep prompt of
    ``depth`` positions too; elsewhere packing is refused (ALiBi and OPT read positions from a 2D mask)."""
    s = zoo.session(family, encoder={"deep_tokens": depth})
    model = s.new_model(seed=5).train()
    if FAMILIES[family][1] in ("BloomConfig", "OPTConfig") or family == "falcon_alibi":
        assert not packable(model.base) and not s.supports.packing
        return
    assert packable(model.base)
    if model.window is not None:  # a custom mask leaves the window out: padded batches where max_length reaches it
        assert packing_bins(model, s.cfg.train, s.supports) == 0 and s.cfg.train.max_length >= model.window
        assert packing_bins(model, dataclasses.replace(s.cfg.train, max_length=model.window - 1), s.supports) > 0
        return
    assert packing_bins(model, s.cfg.train, s.supports) > 0
    assert packing_bins(model, dataclasses.replace(s.cfg.train, packing=False), s.supports) == 0
    examples, _ = s.task.train_examples(TRAIN)
    short = examples[:6]

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    padded, padded_grads = loss_and_grads(s.task.batch(short, "cpu"))
    for share, bins in ((True, 256), (False, 256), (True, 1), (False, 1)):
        packed, grads = loss_and_grads(s.task.batch(short, "cpu", share_prefix=share, pack=bins))
        assert torch.allclose(packed, padded, atol=ATOL), (share, bins)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, padded_grads)), (share, bins)


@pytest.mark.parametrize("family", ALL)
def test_word_initialised_table_sits_in_the_input_space(zoo, family):
    """A prompt table started from text reads as that text: spliced in, the model scores the row exactly as with the
    text's own tokens at the virtual positions (Gemma scales its embeddings by sqrt(d) inside the embedding module).
    A random plain table starts at the spread of the model's token embeddings."""
    s = zoo.session(family, encoder={"type": "embedding", "init": "text", "init_text": "great service today"})
    model = s.new_model(seed=4).eval()
    ids = s.tokenizer("great service today", add_special_tokens=False)["input_ids"]
    r = s.task.renderer
    encoded = r.encode({"text": "thanks for the quick delivery"}, r.target_ids("complaint"))
    written = dataclasses.replace(encoded, virtual_index=[-1] * len(encoded), input_ids=[
        ids[v % len(ids)] if v >= 0 else t for t, v in zip(encoded.input_ids, encoded.virtual_index)])
    pad = s.tokenizer.pad_token_id
    with torch.no_grad():
        spliced, _ = model.token_logprobs(collate([encoded], pad, s.task.pad_side))
        text, _ = model.token_logprobs(collate([written], pad, s.task.pad_side))
    assert torch.allclose(spliced, text, atol=ATOL)
    random = zoo.session(family, encoder={"type": "embedding"}).new_model(seed=4)
    embeddings = s.base.model.get_input_embeddings()
    with torch.no_grad():
        spread = embeddings(torch.arange(len(s.tokenizer))).std().item()
    assert 0.8 < random.encoder.table.std().item() / spread < 1.25


@pytest.mark.parametrize("family", ALL)
def test_checkpoint_reload_gives_identical_predictions(zoo, family, tmp_path):
    s = zoo.session(family)
    model = s.new_model(seed=5).eval()
    save_inference(s, model, tmp_path / "ckpt")
    loaded = Predictor.load(tmp_path / "ckpt", base=s.base)
    rows = [{"text": t} for t in TEXTS]
    assert torch.equal(scores(loaded.session, loaded.model, rows), scores(s, model, rows))
    assert loaded.predict_rows(rows) == s.predict(model, rows)


PREFIX_TEMPLATE = "[P*4] Tweet text : {text} Label : [TARGET]"


@pytest.mark.parametrize("family", CAUSAL)
def test_peft_export_predicts_the_same_in_peft_and_imports_back(zoo, family, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from ptune.interop.peft import export_peft, import_peft

    s = zoo.session(family, template=PREFIX_TEMPLATE)
    model = s.new_model(seed=6).eval()
    save_inference(s, model, tmp_path / "ckpt")
    export_peft(tmp_path / "ckpt", tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["num_virtual_tokens"] == 4
    base = AutoModelForCausalLM.from_pretrained(zoo.folder(family), dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    r = s.task.renderer
    for text in TEXTS:
        encoded = r.encode({"text": text}, r.target_ids("no complaint"))
        with torch.no_grad():
            ours, _ = model.target_logits(collate([encoded], s.tokenizer.pad_token_id))  # (1, K, V)
            real = torch.tensor([[t for t, v in zip(encoded.input_ids, encoded.virtual_index) if v < 0]])
            theirs = adapted(input_ids=real, attention_mask=torch.ones_like(real)).logits  # virtual positions too
        k = ours.shape[1]
        assert torch.allclose(theirs[:, -k - 1:-1], ours, atol=1e-4)
    import_peft(tmp_path / "peft", tmp_path / "back")
    rows = [{"text": t} for t in TEXTS]
    back = Predictor.load(tmp_path / "back", base=s.base)
    assert back.predict_rows(rows) == Predictor.load(tmp_path / "ckpt", base=s.base).predict_rows(rows)


@pytest.mark.parametrize("family", CAUSAL)
def test_mixed_task_batches_equal_per_task_predictions(zoo, family):
    complaints = zoo.session(family)
    sentiment = zoo.session(family, labels=["good", "bad"], template="[P*3] Review : {text} Sentiment : [TARGET]",
                            verbalizer={"good": "great", "bad": "terrible"})
    a, b = complaints.new_model(seed=7).eval(), sentiment.new_model(seed=8).eval()
    rows_a = [{"text": t} for t in TEXTS]
    rows_b = [{"text": t} for t in reversed(TEXTS[1:])]
    with torch.inference_mode():
        mixed = classify_mixed([(complaints.task, a, rows_a), (sentiment.task, b, rows_b)], 8, "cpu")
    for got, want in zip(mixed, [complaints.predict(a, rows_a), sentiment.predict(b, rows_b)]):
        assert [p["prediction"] for p in got] == [p["prediction"] for p in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-4)


def test_a_model_ptune_cannot_p_tune_is_refused_by_type_before_its_weights_load(tmp_path):
    """Whisper is an encoder-decoder over audio features: transformers has no seq2seq text LM for it. Its folder
    holds a config and no weights, so the error can only come from the check made before loading them."""
    from transformers import WhisperConfig

    WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1).save_pretrained(tmp_path / "whisper")
    with pytest.raises(ConfigError, match=r"model type 'whisper' cannot be P-tuned as a seq2seq LM: transformers "
                                          r"has no AutoModelForSeq2SeqLM class"):
        open_session(tiny_config(tmp_path / "whisper"), label_values=LABELS)


def test_a_kind_the_model_does_not_have_is_refused_by_type(zoo):
    cfg = tiny_config(zoo.folder("gpt2"), model={"kind": "masked"},
                      task={"template": TEMPLATES["masked"], "verbalizer": VERBALIZER})
    with pytest.raises(ConfigError, match="model type 'gpt2' cannot be P-tuned as a masked LM"):
        open_session(cfg, label_values=LABELS)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_peft_export_of_a_masked_or_seq2seq_model_is_refused_by_kind(zoo, family, tmp_path):
    from ptune.errors import PtuneError
    from ptune.interop.peft import export_peft

    template = {"masked": "[P*4] Tweet text : {text} Label : [MASK] .", "seq2seq": PREFIX_TEMPLATE}[kind(family)]
    s = zoo.session(family, template=template)
    save_inference(s, s.new_model(seed=9), tmp_path / "ckpt")
    with pytest.raises(PtuneError, match=f"is a {kind(family)} LM; the PEFT interop supports causal LMs only"):
        export_peft(tmp_path / "ckpt", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_generation_with_a_masked_lm_is_refused_before_training(zoo):
    with pytest.raises(ConfigError, match=r"task.type generation needs a causal or seq2seq LM; .* is a masked LM "
                                          r"\(model type 'bert'\)"):
        zoo.session("bert", type="generation")


def test_the_attention_window_is_read_where_a_layer_uses_one():
    """Only a window some layer applies makes the shared prefix run joined to each row (see the C and P tests)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    from ptune.modeling.base import attention_window

    assert attention_window(LlamaConfig()) is None
    assert attention_window(Qwen2Config(sliding_window=64)) is None  # use_sliding_window is off: all layers global
    assert attention_window(Qwen2Config(use_sliding_window=True, sliding_window=64)) == 64
    assert attention_window(MistralConfig(sliding_window=64)) == 64
    assert attention_window(MistralConfig(sliding_window=None)) is None
    assert attention_window(Phi3Config(sliding_window=64)) == 64
    assert attention_window(Gemma3TextConfig(sliding_window=64)) == 64


# ---------------------------------------------------------------------------------------------------------------
# deep prompts (encoder.deep_tokens): keys and values before the text at every layer, through the KV cache

DEEP_ONLY = "Tweet text : {text} Label : [TARGET]"  # no [P]: the deep prompt alone is trained


def deep_session(zoo, family, deep_encoder="mlp", template=TEMPLATES["causal"], **task):
    return zoo.session(family, encoder={"deep_tokens": 3, "deep_encoder": deep_encoder}, template=template, **task)


def greedy_behind_deep(model, encoded, steps: int, eos: int) -> list[int]:
    """Greedy decoding of one unpadded row by full forward passes, the deep prompt's keys and values put in a fresh
    cache before each pass (built here from the flat table, in PEFT's order) and positions counted from n."""
    from ptune.modeling.deep import deep_keys_values
    from ptune.modeling.scoring import repeated

    kv = deep_keys_values(model.deep_table(), model.deep.layout)
    n = model.deep.n_tokens
    embeds = model.embed(torch.tensor([encoded.input_ids]), torch.tensor([encoded.virtual_index]))
    tokens: list[int] = []
    for _ in range(steps):
        length = embeds.shape[1]
        logits = model.base(inputs_embeds=embeds, attention_mask=torch.ones(1, n + length, dtype=torch.long),
                            position_ids=torch.arange(n, n + length)[None], use_cache=True,
                            **{model.cache_arg: repeated(kv, 1)}).logits
        tokens.append(int(logits[0, -1].argmax()))
        if tokens[-1] == eos:
            break
        embeds = torch.cat([embeds, model.base.get_input_embeddings()(torch.tensor([[tokens[-1]]]))], dim=1)
    return tokens


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_alone_trains_and_leaves_the_base_alone(zoo, family):
    """A template without [P] and a deep prompt: the deep prompt is what trains (it is in the optimizer)."""
    s = deep_session(zoo, family, template=DEEP_ONLY, train={"lr": 0.05, "epochs": 3})
    assert type(s.prompt).__name__ == "DeepPrompt" and not s.supports.mixing
    assert s.supports.packing == packable(s.base.model)  # packed bins behind the deep prompt where the family packs
    frozen = {k: v.clone() for k, v in s.base.model.state_dict().items()}
    batch = s.task.batch(s.task.train_examples(TRAIN)[0], "cpu")
    start = s.new_model(seed=0).eval()
    with torch.no_grad():
        before, table = start.loss(batch).item(), start.deep_table().clone()
    model, progress = fit(s, TRAIN, None, show_progress=False, seed=0)
    with torch.no_grad():
        after = model.eval().loss(batch).item()
    assert progress.step == 6 and after < before and not torch.equal(model.deep_table(), table)
    assert all(torch.equal(v, frozen[k]) for k, v in s.base.model.state_dict().items())


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_scores_do_not_depend_on_the_batch(zoo, family):
    s = deep_session(zoo, family, "table")
    model = s.new_model(seed=1).eval()
    rows = [{"text": t} for t in TEXTS]
    together = scores(s, model, rows)
    assert torch.allclose(together, torch.cat([scores(s, model, [row]) for row in rows]), atol=ATOL)
    r, pad = s.task.renderer, s.tokenizer.pad_token_id
    encoded = [r.encode(row, r.target_ids("no complaint")) for row in rows]
    with torch.no_grad():
        single = torch.stack([model.token_logprobs(collate([e], pad, "left"))[0].sum() for e in encoded])
        for side in ("left", "right"):
            assert torch.allclose(model.token_logprobs(collate(encoded, pad, side))[0].sum(-1), single, atol=ATOL)
        model.deep = None  # the same model without its deep prompt scores otherwise: the prompt is read
        model.clear_prompt_cache()
        assert not torch.allclose(scores(s, model, rows), together, atol=1e-3)


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_kv_cache_paths_give_the_plain_forward(zoo, family, monkeypatch):
    """The shared prefix run once behind the deep prompt, the KV cache without it, the label prefix tree and one
    full input per (row, label) agree; so does the training loss with the prefix run once per batch."""
    s = deep_session(zoo, family)
    model = s.new_model(seed=3).eval()
    rows = [{"text": t} for t in TEXTS]
    cached = scores(s, model, rows)
    with monkeypatch.context() as m:
        m.setattr(model, "use_prefix_cache", False)
        uncached = scores(s, model, rows)
        m.setattr(model, "use_prefix_tree", False)
        by_word = scores(s, model, rows)
        m.setattr(type(model), "can_score_continuations", property(lambda self: False))
        plain = scores(s, model, rows)
    for other in (uncached, by_word, plain):
        assert torch.allclose(cached, other, atol=ATOL)
    examples, _ = s.task.train_examples(TRAIN)
    with torch.no_grad():
        shared, whole = (model.loss(s.task.batch(examples, "cpu", share_prefix=share)) for share in (True, False))
    assert torch.allclose(shared, whole, atol=ATOL)


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_generation_is_greedy_decoding_whatever_the_batch(zoo, family):
    assert_generation_is_greedy(deep_session(zoo, family, type="generation", max_new_tokens=6),
                                lambda model, e, eos: greedy_behind_deep(model, e, 6, eos))


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_checkpoint_reload_predicts_from_the_saved_table(zoo, family, tmp_path):
    s = deep_session(zoo, family)
    model = s.new_model(seed=5).eval()
    save_inference(s, model, tmp_path / "ckpt")
    loaded = Predictor.load(tmp_path / "ckpt", base=s.base)
    assert torch.equal(loaded.model.deep_table(), model.deep_table())
    loaded.model.deep.mlp = None  # the deep encoder never runs at inference: the saved table is read
    rows = [{"text": t} for t in TEXTS]
    assert torch.equal(scores(loaded.session, loaded.model, rows), scores(s, model, rows))
    assert loaded.predict_rows(rows) == s.predict(model, rows)


@pytest.mark.parametrize("family", DEEP)
def test_deep_prompt_from_text_reads_as_the_text_written_first(zoo, family):
    """``encoder.init: text`` with a table: the deep prompt starts as the keys and values of init_text, so a row
    scores exactly as with the text written before it."""
    text = "great service today"
    ids = zoo.session(family).tokenizer(text, add_special_tokens=False)["input_ids"]
    s = zoo.session(family, template=DEEP_ONLY, encoder={"deep_tokens": len(ids), "deep_encoder": "table",
                                                        "init": "text", "init_text": text})
    model = s.new_model(seed=4).eval()
    r, pad = s.task.renderer, s.tokenizer.pad_token_id
    encoded = [r.encode({"text": row}, r.target_ids("complaint")) for row in TEXTS[:3]]
    written = [dataclasses.replace(e, input_ids=ids + e.input_ids, labels=[-100] * len(ids) + e.labels,
                                   virtual_index=[-1] * len(ids) + e.virtual_index) for e in encoded]
    with torch.no_grad():
        deep = [model.token_logprobs(collate([e], pad, "left"))[0] for e in encoded]
        model.deep = None  # the same model, the text written before each row instead
        plain = [model.token_logprobs(collate([w], pad, "left"))[0] for w in written]
    assert all(torch.allclose(a, b, atol=ATOL) for a, b in zip(deep, plain))


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom", "gpt_neox"])
def test_deep_prompt_with_a_linear_head_pools_the_text_alone(zoo, family):
    """The linear head reads the text's hidden states behind the deep prompt: a row pools the same alone or in a
    batch, and not what it pools without the deep prompt."""
    s = deep_session(zoo, family, template=DEEP_ONLY, head="linear")
    model = s.new_model(seed=6).eval()
    encoded = [s.task.renderer.encode({"text": t}) for t in TEXTS]
    with torch.no_grad():
        together = model.pooled_states(s.task.batch(encoded, "cpu"))
        alone = torch.cat([model.pooled_states(s.task.batch([e], "cpu")) for e in encoded])
        assert together.shape == (len(TEXTS), 32) and torch.allclose(together, alone, atol=ATOL)
        model.deep = None
        assert not torch.allclose(model.pooled_states(s.task.batch(encoded, "cpu")), together, atol=1e-3)


def test_deep_prompt_tasks_score_on_their_own_in_a_mixed_batch(zoo):
    deep, plain = deep_session(zoo, "llama"), zoo.session("llama", template="[P*3] Review : {text} Label : [TARGET]")
    a, b = deep.new_model(seed=7).eval(), plain.new_model(seed=8).eval()
    rows = [{"text": t} for t in TEXTS]
    with torch.inference_mode():
        mixed = classify_mixed([(deep.task, a, rows), (plain.task, b, rows[1:])], 8, "cpu")
    for got, want in zip(mixed, [deep.predict(a, rows), plain.predict(b, rows[1:])]):
        assert [p["prediction"] for p in got] == [p["prediction"] for p in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-4)


@pytest.mark.parametrize("family", WINDOWED)
def test_deep_prompt_is_refused_where_a_sliding_window_could_cut_it(zoo, family):
    with pytest.raises(ConfigError, match=rf"encoder.deep_tokens: .* sliding window of {WINDOW} places, which "
                                          r"counts pads: 3 deep positions \+ train.max_length 64"):
        deep_session(zoo, family)


@pytest.mark.parametrize("family", ["bert", "roberta", "t5", "bart"])
def test_deep_prompt_is_refused_on_masked_and_seq2seq_models(zoo, family):
    template = TEMPLATES[kind(family)]
    with pytest.raises(ConfigError, match=rf"encoder.deep_tokens: .* is a {kind(family)} LM; a deep prompt is keys "
                                          r"and values held in a decoder-only model's KV cache"):
        zoo.session(family, encoder={"deep_tokens": 3}, template=template)


def test_deep_prompt_places_count_against_learned_positions(zoo):
    """GPT-2 learns 128 positions: behind 100 deep places a row keeps at most 28 tokens (train.max_length is 64),
    so the longest row still scores; 128 deep places leave none and are refused."""
    s = zoo.session("gpt2", encoder={"deep_tokens": 100})
    assert s.task.renderer.max_length == 28
    assert scores(s, s.new_model(seed=1).eval(), [{"text": TEXTS[-1]}]).isfinite().all()
    with pytest.raises(ConfigError, match="encoder.deep_tokens is 128 but .* takes 128 positions at most"):
        zoo.session("gpt2", encoder={"deep_tokens": 128})
