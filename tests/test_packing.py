"""Packed training batches (ptune.data.packing): bins, the mask that keeps rows apart, the places whose logits
predict the targets, and training with packing against training with padded batches."""

from __future__ import annotations

import torch

from ptune.data.packing import PAD, PREFIX, attention_mask, first_fit, pack
from ptune.data.render import Encoded
from ptune.data.tables import read_table
from ptune.modeling.ptuning import CausalPTuning
from ptune.session import open_session
from ptune.training.trainer import fit

from conftest import tiny_config


def row(ids: list[int], target: int) -> Encoded:
    """A row whose last ``target`` tokens are its target."""
    return Encoded(ids, [-1] * len(ids), [-100] * (len(ids) - target) + ids[len(ids) - target:])


def test_first_fit_fills_bins_longest_rows_first_within_capacity():
    bins = first_fit([3, 7, 2, 5, 4, 9], 10)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum([3, 7, 2, 5, 4, 9][i] for i in b) <= 10 for b in bins)
    assert bins[0] == [5] and bins[1] == [1, 0]  # the longest row opens the first bin; 3 fills the second's room
    assert first_fit([12, 1], 10) == [[0], [1]]  # a row longer than a bin gets a bin of its own


def test_the_mask_keeps_rows_apart_and_lets_every_row_see_the_prefix():
    segment = torch.tensor([[PREFIX, PREFIX, 0, 0, 1, 1, 1, PAD]])
    mask = attention_mask(segment)[0, 0]  # (L, L)
    assert mask[3, :4].tolist() == [True, True, True, True]  # row 0's second token: the prefix and itself so far
    assert mask[4].tolist() == [True, True, False, False, True, False, False, False]  # row 1 starts: prefix only
    assert not mask[6, 2:4].any() and mask[6, 4:7].all()  # row 1 never sees row 0
    assert mask[1, :2].tolist() == [True, True] and not mask[1, 2:].any()  # the prefix sees only itself, causally
    assert mask[7].tolist() == [False] * 7 + [True]  # a pad sees only itself (no row of NaN)
    assert not mask[:7, 7].any()  # and nothing sees a pad


def test_targets_are_read_at_the_place_before_each_target_token():
    prefix = Encoded([90, 91], [0, -1], [])
    rows = [row([1, 2, 3, 4], 2), row([5, 6], 1), row([7], 1)]  # the last row's target follows the prefix directly
    batch = pack(rows, prefix, 64)
    ids = batch["packed_ids"].flatten()
    places = batch["target_places"]
    assert batch["labels"].tolist() == [[3, 4], [-100, 6], [-100, 7]]
    for r, labels in enumerate(batch["labels"].tolist()):
        for c, label in enumerate(labels):
            if label != -100:  # the token after the predicting place is the target itself
                assert ids[places[r, c] + 1] == label or (r == 2 and ids[places[r, c]] == 91)
    assert ids[places[2, 1]] == 91  # the prefix's last token predicts the lone target
    assert batch["packed_positions"][0].tolist()[:2] == [0, 1]  # the prefix first, then each row from place 2
    assert batch["packed_virtual"][0, 0] == 0 and batch["packed_mask"].shape[-1] == batch["packed_ids"].shape[1]


def test_small_bins_give_one_row_per_bin_each_after_its_own_prefix():
    prefix = Encoded([90, 91], [-1, -1], [])
    batch = pack([row([1, 2, 3], 1), row([4, 5], 1)], prefix, 1)
    assert batch["packed_ids"].tolist() == [[90, 91, 1, 2, 3], [90, 91, 4, 5, 0]]
    assert batch["target_places"].tolist() == [[3], [5 + 2]]  # flat places: bin * width + place


def test_training_with_packed_batches_follows_training_with_padded_ones(tiny_causal_dir, tiny_data, monkeypatch):
    """The same run with and without ``train.packing``: the first steps' losses agree (Adam then amplifies rounding
    differences), and the packed run really took the packed path."""
    packed_calls = []
    original = CausalPTuning.packed_target_logits
    monkeypatch.setattr(CausalPTuning, "packed_target_logits",
                        lambda self, batch: packed_calls.append(1) or original(self, batch))
    histories = {}
    for packing in (True, False):
        session = open_session(tiny_config(tiny_causal_dir, tiny_data, train={"packing": packing, "max_steps": 3}),
                               label_values=["complaint", "no complaint"])
        _, progress = fit(session, read_table(tiny_data["train"]), None, None, show_progress=False, seed=1)
        histories[packing] = [h["loss"] for h in progress.history if h.get("kind") == "train"]
    assert len(packed_calls) == 3 and len(histories[False]) == 3
    assert torch.allclose(torch.tensor(histories[True][:2]), torch.tensor(histories[False][:2]), atol=1e-4)
