"""PTuningModel: a frozen language model plus a prompt encoder whose output is spliced in at virtual positions.

    embed(tokens)            (B, T, d)   rows at virtual positions replaced by the encoder's table (n, d)
    frozen LM                            causal: logits only at the last K+1 positions (K: target columns)
                                         seq2seq: embeds feed the encoder; the decoder reads the target shifted
    token log-probabilities  (B, K)      of the target tokens; loss and label scores are sums over these
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .base import attention_window
from .encoders import PromptEncoder
from .heads import LinearHead, block_output, float32_head, fold_head_input, lm_head


def trainable(name: str) -> bool:
    """The one predicate for what is trained and what is saved: the encoder's parameters and, with ``task.head:
    linear``, the classifier's; nothing of the base."""
    return name.startswith(("encoder.", "classifier."))


def joined(prefix: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
    """The shared prefix (1, P, d) put back before every left-padded row (B, T, d), the rows' pads moved to the
    front: the rows as they would be without a shared prefix. Returns embeds (B, P+T, d), the attention mask and the
    position ids (B, P+T)."""
    rows, n = embeds.shape[0], prefix.shape[1]
    embeds = torch.cat([prefix.expand(rows, -1, -1), embeds], dim=1)  # (B, P+T, d)
    mask = torch.cat([mask.new_ones(rows, n), mask], dim=1)  # (B, P+T)
    positions = torch.cat([torch.arange(n, device=mask.device).expand(rows, n), positions + n], dim=1)
    order = torch.sort(mask, dim=1, stable=True).indices  # pads (0) first, then the real tokens in their order
    return embeds.gather(1, order.unsqueeze(-1).expand_as(embeds)), mask.gather(1, order), positions.gather(1, order)


class PTuningModel(nn.Module):
    def __init__(self, base: nn.Module, encoder: PromptEncoder, kind: str, classifier: LinearHead | None = None):
        super().__init__()
        self.base = base
        self.encoder = encoder
        self.kind = kind
        self.classifier = classifier
        base.requires_grad_(False)
        base.eval()
        fold_head_input(base)
        float32_head(base)
        self._table: torch.Tensor | None = None  # cached prompt table for inference
        self._prefix: tuple | None = None  # (prefix ids and virtual indices, their keys and values) for inference
        self.use_prefix_cache = True
        self.label_offsets: torch.Tensor | None = None  # classification, ``task.calibrate: prior``: added to scores
        params = inspect.signature(base.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # the KV-cache argument's name: `cache` from transformers 5.x on, `past_key_values` before
        self._cache_arg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        self._window = attention_window(base.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the frozen model never trains: no dropout in it, ever
        if mode:
            self._table = self._prefix = None
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if trainable(k)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state()
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            raise ValueError("encoder state does not match this encoder's parameters")
        self.load_state_dict(state, strict=False)
        self._table = self._prefix = None

    def prompt_table(self) -> torch.Tensor:
        """(n, d): run the encoder (once per step in training); at inference a fixed table, computed once."""
        if self.training:
            return self.encoder()
        if self._table is None:
            with torch.no_grad():
                self._table = self.encoder().detach()
        return self._table

    def set_prompt_table(self, table: torch.Tensor) -> None:
        """Serve from a saved table (no encoder run at all)."""
        self._table = table.detach().float().to(self.encoder.table.device)
        self._prefix = None

    def embed(self, input_ids: torch.Tensor, virtual_index: torch.Tensor, table: torch.Tensor | None = None
              ) -> torch.Tensor:
        tokens = self.base.get_input_embeddings()(input_ids)  # (B, T, d)
        if self.encoder.n_virtual == 0:
            return tokens
        table = (self.prompt_table() if table is None else table).to(tokens.dtype)  # (n, d)
        spliced = table[virtual_index.clamp(min=0)]  # (B, T, d)
        return torch.where((virtual_index >= 0).unsqueeze(-1), spliced, tokens)

    def target_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits predicting each target column, and the labels there: (B, K, V), (B, K)."""
        labels = batch["labels"]
        table = self.prompt_table() if self.encoder.n_virtual else None  # the encoder runs once per call
        embeds = self.embed(batch["input_ids"], batch["virtual_index"], table)
        if self.kind == "seq2seq":
            labels = batch["decoder_labels"]  # (B, K) right-padded: causal decoder attention keeps pads harmless
            out = self.base(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            decoder_input_ids=self.decoder_inputs(labels), use_cache=False)
            return out.logits, labels
        if self.kind == "masked":
            # position ids are left to the model (right padding: 0..n-1 is right, RoBERTa adds its own offset)
            out = self.base(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
            cols = (labels != -100).any(0).nonzero().squeeze(-1)
            return out.logits[:, cols], labels[:, cols]
        width = labels.shape[1]
        k = width - int((labels != -100).any(0).nonzero()[0])  # target columns sit in the last k
        kwargs = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], use_cache=False)
        if "prefix_ids" in batch and not self.prefix_fits(batch["prefix_ids"].shape[1] + width):
            head = self.embed(batch["prefix_ids"], batch["prefix_virtual"], table)  # (1, P, d)
            kwargs.update(zip(("inputs_embeds", "attention_mask", "position_ids"),
                              joined(head, embeds, kwargs["attention_mask"], kwargs["position_ids"])))
        elif "prefix_ids" in batch:  # the rows' shared prefix, run once (gradients flow through its keys and values)
            rows = embeds.shape[0]
            cache = self._expanded(self._prefix_cache(batch["prefix_ids"], batch["prefix_virtual"], table), rows)
            n = batch["prefix_ids"].shape[1]
            kwargs.update(attention_mask=torch.cat([kwargs["attention_mask"].new_ones(rows, n),
                                                    kwargs["attention_mask"]], dim=1),
                          position_ids=kwargs["position_ids"] + n, use_cache=True, **{self._cache_arg: cache})
        if self._keeps_logits:
            logits = self.base(**kwargs, logits_to_keep=k + 1).logits  # (B, k+1, V)
        else:
            logits = self.base(**kwargs).logits[:, -(k + 1):]
        return logits[:, :-1], labels[:, width - k:]  # logit at t predicts token t+1

    def pooled_states(self, batch) -> torch.Tensor:
        """(B, d): the output of block ``classifier.layer``, averaged over each row's positions (pads left out).
        The forward pass stops there: the blocks above it and the LM head never run."""
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        mask = batch["attention_mask"]
        hidden = block_output(self.base, self.classifier.layer, inputs_embeds=embeds, attention_mask=mask,
                              position_ids=batch["position_ids"], use_cache=False).float()
        keep = mask.unsqueeze(-1).float()
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)

    def class_logits(self, batch) -> torch.Tensor:
        """(B, labels): ``task.head: linear``'s scores."""
        return self.classifier(self.pooled_states(batch))

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """Seq2seq: the decoder's input, the target shifted right after the start token (pads for -100)."""
        config = self.base.config
        start = config.decoder_start_token_id
        if start is None:
            start = getattr(getattr(self.base, "generation_config", None), "decoder_start_token_id", None)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        shifted = labels.new_full(labels.shape, pad)
        shifted[:, 0] = pad if start is None else start
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        return shifted

    def token_logprobs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) log-probability of each target token, and the mask of real target tokens."""
        logits, labels = self.target_logits(batch)
        mask = labels != -100
        logp = F.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask, mask

    def loss(self, batch) -> torch.Tensor:
        """Mean negative log-likelihood over the target tokens only."""
        logp, mask = self.token_logprobs(batch)
        return -logp.sum() / mask.sum().clamp(min=1)

    def first_target_logits(self, batch) -> torch.Tensor:
        """(B, V): each row's logits at its first target token (rows may have targets of different lengths)."""
        logits, labels = self.target_logits(batch)
        first = (labels != -100).int().argmax(dim=1)  # the first target column of each row
        return logits[torch.arange(logits.shape[0], device=logits.device), first]

    def label_choice_logprobs(self, batch, candidates: torch.Tensor) -> torch.Tensor:
        """(B, L): log-softmax over the L candidate tokens only (each label's first token) at the first target
        position: the discriminative objective, where the model is asked which label, not how likely the word."""
        return F.log_softmax(self.first_target_logits(batch).float()[:, candidates], dim=-1)

    def prefix_fits(self, length: int) -> bool:
        """Whether a shared prefix can run apart from rows ``length`` places long with it (their pads then sit between
        it and their text): yes unless a sliding window, which counts places rather than positions, may cut in."""
        return self._window is None or length < self._window

    @property
    def can_score_continuations(self) -> bool:
        return self.kind == "causal" and self._cache_arg is not None and self._keeps_logits

    @contextlib.contextmanager
    def scoring_head(self, token_ids):
        """Within: a float32 head (``float32_head``) computes the vocabulary in bfloat16 and recomputes in float32
        only ``token_ids`` (the words being scored) and each position's most likely tokens. No effect on a float32
        model or while autograd records."""
        head = lm_head(self.base)
        if not getattr(head, "_ptune_float32", False):
            yield
            return
        head._ptune_scored_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        try:
            yield
        finally:
            head._ptune_scored_ids = None

    @torch.no_grad()
    def prefix_keys_values(self, ids: list[int], virtual: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values (1, heads, P, head_dim) for the prefix every row shares (leading virtual
        tokens and anchor text): computed once, then reused for every batch until the prompt table changes."""

        key = (tuple(ids), tuple(virtual))
        if self._prefix is None or self._prefix[0] != key:
            device = self.encoder.table.device
            self._prefix = (key, self._prefix_cache(torch.tensor([ids], device=device),
                                                    torch.tensor([virtual], device=device)))
        return self._prefix[1]

    def _prefix_cache(self, ids: torch.Tensor, virtual: torch.Tensor, table: torch.Tensor | None = None
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run one (1, P) prefix; each layer's keys and values."""
        from transformers import DynamicCache

        # no config: every layer keeps all its keys, since a sliding-window layer's cache drops those past its window
        # and cannot be cropped back to the shared inputs (the attention mask applies the window instead)
        cache = DynamicCache()
        self.base(inputs_embeds=self.embed(ids, virtual, table), use_cache=True, logits_to_keep=1,
                  position_ids=torch.arange(ids.shape[1], device=ids.device)[None], **{self._cache_arg: cache})
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _expanded(self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int):
        """A fresh cache holding the prefix's keys and values once per row."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        return cache

    @torch.no_grad()
    def continuation_logprobs(self, batch, words: list[list[int]], prefix: tuple[list[int], list[int]] | None = None
                              ) -> list[torch.Tensor]:
        """Log-probabilities of several continuations of the same (left-padded, target-free) inputs, the inputs run
        once: their last position scores every word's first token, and the KV cache is reused to score the rest of
        a longer word. Returns, per word, a (B, len(word)) tensor; the same numbers as appending each word to every
        input and reading ``token_logprobs`` (up to floating-point noise).

        ``prefix`` (token ids, virtual indices): tokens that come before every input of ``batch``, which then holds
        only what follows them. Their keys and values come from ``prefix_keys_values`` (computed once) instead of
        being recomputed for every row.

        The words' tokens are scored in float32 on a float32 head (``scoring_head``)."""
        with self.scoring_head([t for word in words for t in word]):
            return self._continuation_logprobs(batch, words, prefix)

    def _continuation_logprobs(self, batch, words, prefix):
        from transformers import DynamicCache

        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        mask, pos = batch["attention_mask"], batch["position_ids"]
        rows = mask.shape[0]
        cache = DynamicCache()
        if prefix is not None and not self.prefix_fits(len(prefix[0]) + mask.shape[1]):
            device = mask.device
            head = self.embed(torch.tensor([prefix[0]], device=device), torch.tensor([prefix[1]], device=device))
            embeds, mask, pos = joined(head, embeds, mask, pos)  # (B, P+T, d), (B, P+T), (B, P+T)
        elif prefix is not None:
            cache = self._expanded(self.prefix_keys_values(*prefix), rows)
            n = len(prefix[0])
            # the rows' own pads sit between the prefix and their text: masked out, and not counted in positions
            mask = torch.cat([mask.new_ones(rows, n), mask], dim=1)
            pos = pos + n
        out = self.base(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
                        logits_to_keep=1, **{self._cache_arg: cache})
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        result = []
        for word in words:
            scores = [first[:, word[0]]]
            if len(word) > 1:
                n = len(word) - 1
                ids = torch.tensor([word[:-1]], device=mask.device).expand(rows, n)
                step_mask = torch.cat([mask, mask.new_ones(rows, n)], dim=1)
                step_pos = pos[:, -1:] + 1 + torch.arange(n, device=pos.device)
                logits = self.base(inputs_embeds=self.base.get_input_embeddings()(ids), attention_mask=step_mask,
                                   position_ids=step_pos, use_cache=True, **{self._cache_arg: cache}).logits
                logp = F.log_softmax(logits.float(), dim=-1)
                rest = torch.tensor(word[1:], device=logp.device)
                scores += list(logp.gather(-1, rest.expand(rows, n).unsqueeze(-1)).squeeze(-1).unbind(1))
                cache.crop(-n)  # drop this word's n positions: back to the shared inputs for the next word
            result.append(torch.stack(scores, dim=1))
        return result

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int, eos_token_id, pad_token_id: int) -> torch.Tensor:
        """Greedy generation with the KV cache; the batch must hold no target tokens (causal: left-padded).
        Returns the new tokens only (seq2seq: the decoder's, its start token cut off)."""
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        out = self.base.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                                 pad_token_id=pad_token_id)
        return out[:, 1:] if self.kind == "seq2seq" else out
