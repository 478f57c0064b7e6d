"""Label words scored once per shared prefix (``scoring.PrefixTree``): the same numbers as scoring them word by word
and as one full input per (row, word), with fewer places run through the model; label words from label names."""

import random

import pytest
import torch
import torch.nn.functional as F

from conftest import ROWS, FamilyZoo, tiny_config
from ptune.data.labels import LabelSpace, words_from_name
from ptune.modeling import heads, scoring
from ptune.modeling.scoring import PrefixTree
from ptune.session import open_session
from ptune.tasks.mixed import classify_mixed

# words of the tiny tokenizer's corpus: label words built from them open alike, and some are others' prefixes
VOCAB = ["the", "box", "was", "broken", "the app", "crashes", "great", "service", "no", "complaint", "refund",
         "order", "arrived", "late", "quick", "delivery"]


def random_verbalizer(seed: int, n_labels: int = 7) -> dict:
    """Labels whose words share first tokens, one a prefix of another, single- and multi-token alike."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < n_labels:
        if words and rng.random() < 0.5:  # extend an existing word: a shared prefix, or a word inside another
            word = rng.choice(words) + " " + rng.choice(VOCAB)
        else:
            word = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 3)))
        if word not in words:
            words.append(word)
    return {f"label{i}": word for i, word in enumerate(words)}


def session_for(model_dir, verbalizer: dict, base=None, **task):
    cfg = tiny_config(model_dir, task={"verbalizer": verbalizer, **task}, train={"eval_batch_size": 3})
    return open_session(cfg, base=base)


def by_word(model):
    model.use_prefix_tree = False
    return model


def test_prefix_tree_holds_each_proper_prefix_once():
    tree = PrefixTree.of([[5, 6, 7], [5, 6, 8], [5, 9], [4], [5, 6], [3, 1, 2]])
    assert tree.tokens == [5, 6, 3, 1] and tree.parents == [-1, 0, -1, 2] and tree.depths == [1, 2, 1, 2]
    assert tree.paths == [[0, 1], [0, 1], [0], [], [0], [2, 3]]
    assert tree.groups(100) == [[0, 1, 2, 3]]
    assert tree.groups(3) == [[0, 1], [2, 3]]  # whole subtrees: a node's ancestors run with it
    assert tree.groups(1) == [[0, 1], [2, 3]]  # a subtree larger than the limit runs alone, whole
    assert tree.sees([2, 3]).tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_scores_equal_word_by_word_and_full_inputs(tiny_causal_dir, seed):
    s = session_for(tiny_causal_dir, random_verbalizer(seed))
    model = s.new_model(seed=seed).eval()
    r = s.task.renderer
    words = [r.target_ids(w[0]) for w in s.task.labels.words]
    assert len({w[0] for w in words}) < len(words) and max(map(len, words)) >= 3  # shared openings, long words
    rows = [{"text": t} for t, _ in ROWS[:5]]
    batch = s.task.batch([r.encode(row) for row in rows], "cpu")
    assert model.scores_by_tree(batch["attention_mask"].shape[1] + max(map(len, words)))
    with torch.no_grad():
        tree = model.continuation_logprobs(batch, words)
        one_by_one = by_word(model).continuation_logprobs(batch, words)
        for word, got, old in zip(words, tree, one_by_one):
            full, mask = model.token_logprobs(s.task.batch([r.encode(row, word) for row in rows], "cpu"))
            assert got.shape == old.shape == (len(rows), len(word))
            torch.testing.assert_close(got, old, atol=1e-5, rtol=0)
            torch.testing.assert_close(got, full[:, -len(word):], atol=1e-5, rtol=0)


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_label_scores_equal_word_by_word_with_the_cached_prefix_and_small_calls(tiny_causal_dir, monkeypatch,
                                                                              score):
    s = session_for(tiny_causal_dir, random_verbalizer(3), score=score)
    model = s.new_model(seed=4).eval()
    rows = [{"text": t} for t, _ in ROWS] * 2
    with torch.inference_mode():
        calls_per_batch(model, monkeypatch, 4)
        tree = s.task.scores(model, rows, 5, "cpu")
        old = s.task.scores(by_word(model), rows, 5, "cpu")
    torch.testing.assert_close(tree, old, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("families"))


def calls_per_batch(model, monkeypatch, places: int) -> None:
    """Every prefix-tree call limited to ``places`` places (rows x nodes), as many labels make it."""
    monkeypatch.setattr(scoring, "TREE_LOGITS", places * model.base.get_input_embeddings().weight.shape[0])


@pytest.mark.parametrize("family, encoder", [
    ("llama", {}),  # virtual tokens at the input only, run once as the rows' shared prefix
    ("gpt2", {}),  # learned absolute positions
    ("qwen3", {"deep_tokens": 3, "deep_encoder": "mlp"}),  # a deep prompt behind the virtual tokens
    ("gemma", {"deep_tokens": 2, "deep_encoder": "table"}),
])
def test_tree_scores_equal_word_by_word_across_families(zoo, monkeypatch, family, encoder):
    """Rows of different lengths (a padded batch), words that open alike, one inside another and single tokens,
    the tree split over several calls: each label's score equals word by word's to 1e-5 in float32."""
    verbalizer = random_verbalizer(8)
    s = zoo.session(family, labels=list(verbalizer), encoder=encoder, verbalizer=verbalizer)
    model = s.new_model(seed=2).eval()
    assert model.scores_by_tree(64) and (model.deep is not None) == bool(encoder)
    words = [s.task.renderer.target_ids(w[0]) for w in s.task.labels.words]
    assert min(map(len, words)) == 1 and max(map(len, words)) >= 3
    rows = [{"text": t} for t, _ in ROWS[:5]]
    calls_per_batch(model, monkeypatch, 7)
    with torch.inference_mode():
        tree = s.task.scores(model, rows, 5, "cpu")
        old = s.task.scores(by_word(model), rows, 5, "cpu")
    torch.testing.assert_close(tree, old, atol=1e-5, rtol=0)


def test_picked_logprobs_are_the_log_softmax_of_the_picked_tokens():
    logits = torch.randn(3, 4, 50) * 20
    picked = torch.tensor([1, 7, 7, 49])
    want = F.log_softmax(logits, dim=-1)[..., picked]
    torch.testing.assert_close(scoring.picked_logprobs(logits.clone(), picked), want, atol=1e-5, rtol=0)


def test_bfloat16_scoring_head_gives_the_same_logits_in_chunks(tiny_causal_dir, monkeypatch):
    """The float32 recomputation of each position's most likely tokens, a few positions at a time, gives the
    numbers of one pass; the scored tokens' logits are the all-float32 head's."""
    s = open_session(tiny_config(tiny_causal_dir, model={"dtype": "bfloat16"},
                                 task={"verbalizer": random_verbalizer(9)}))
    model = s.new_model(seed=3).eval()
    head = model.base.get_output_embeddings()
    x = torch.randn(2, 7, head.weight.shape[1])
    scored = [3, 5, 8, 40]
    with torch.inference_mode(), model.scoring_head(scored):
        whole = head(x)
        monkeypatch.setattr(heads, "TOP_K_ROWS", 3)
        chunked = head(x)
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)
    exact = F.linear(x, head.weight.float(), None if head.bias is None else head.bias.float())
    torch.testing.assert_close(whole[..., scored], exact[..., scored], atol=1e-5, rtol=1e-5)
    assert not torch.equal(whole, exact)  # the rest of the vocabulary came from the bfloat16 product


def places_run(model, monkeypatch) -> list[int]:
    """Places (rows x tokens) of every model call after the rows' own."""
    seen = []
    real = model.base.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(model.base, "forward", spy)
    return seen


def test_shared_prefixes_run_once_per_row(tiny_causal_dir, monkeypatch):
    verbalizer = {"a": "the box was broken", "b": "the box was late", "c": "the box", "d": "the app crashes"}
    s = session_for(tiny_causal_dir, verbalizer)
    r = s.task.renderer
    words = [r.target_ids(w) for w in verbalizer.values()]
    model = s.new_model(seed=5).eval()
    rows = [{"text": t} for t, _ in ROWS[:4]]
    batch = s.task.batch([r.encode(row) for row in rows], "cpu")
    seen = places_run(model, monkeypatch)
    with torch.no_grad():
        model.continuation_logprobs(batch, words)
        tree = list(seen)
        seen.clear()
        by_word(model).continuation_logprobs(batch, words)
    proper_prefixes = {tuple(w[:k]) for w in words for k in range(1, len(w))}
    assert tree[1:] == [len(rows) * len(proper_prefixes)]  # one call: every shared prefix once per row
    assert sum(seen[1:]) == len(rows) * sum(len(w) - 1 for w in words) > sum(tree[1:])
    assert len(seen) == 1 + sum(len(w) > 1 for w in words)


def test_eager_attention_takes_the_tree_mask_as_a_bias(tiny_causal_dir):
    s = session_for(tiny_causal_dir, random_verbalizer(4))
    model = s.new_model(seed=6).eval()
    rows = [{"text": t} for t, _ in ROWS[:4]]
    with torch.inference_mode():
        sdpa = s.task.scores(model, rows, 4, "cpu")
        attention = model.base.config._attn_implementation
        model.base.config._attn_implementation = "eager"
        try:
            eager = s.task.scores(model, rows, 4, "cpu")
        finally:
            model.base.config._attn_implementation = attention
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


def test_mixed_batches_score_by_the_tree_as_each_task_by_word(tiny_causal_dir):
    first = session_for(tiny_causal_dir, random_verbalizer(5))
    tasks = [first, session_for(tiny_causal_dir, random_verbalizer(6), base=first.base)]
    models = [s.new_model(seed=7 + i).eval() for i, s in enumerate(tasks)]
    rows = [[{"text": t} for t, _ in ROWS[:5]], [{"text": t} for t, _ in ROWS[3:]]]
    with torch.inference_mode():
        mixed = classify_mixed([(s.task, m, r) for s, m, r in zip(tasks, models, rows)], 4, "cpu")
        alone = [s.task.predict(by_word(m), r, 4, "cpu") for s, m, r in zip(tasks, models, rows)]
    for got, want in zip(mixed, alone):
        assert [p["prediction"] for p in got] == [p["prediction"] for p in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-4)


def test_label_words_come_from_label_names_without_a_verbalizer():
    assert words_from_name("card_arrival") == "card arrival"
    assert words_from_name("top-up__by-card ") == "top up by card"
    assert words_from_name("reverted_card_payment?") == "reverted card payment?"
    assert words_from_name("complaint") == "complaint"
    space = LabelSpace.build({}, ["card_arrival", "Refund_not_showing_up", "card_arrival", "age-limit"])
    assert space.labels == ["Refund_not_showing_up", "age-limit", "card_arrival"]
    assert space.words == [["Refund not showing up"], ["age limit"], ["card arrival"]]
    # names that would speak alike keep their own values, so that no two labels tie on every row
    assert LabelSpace.build({}, ["a_b", "a-b", "c_d"]).words == [["a-b"], ["a_b"], ["c d"]]
    assert LabelSpace.build({}, ["_"]).words == [["_"]]  # nothing left once the separators go: the name itself
    # a verbalizer is taken as written
    assert LabelSpace.build({"card_arrival": "card_arrival"}).words == [["card_arrival"]]
