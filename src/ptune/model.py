"""PTuningModel: a frozen language model plus a prompt encoder whose output is spliced in at virtual positions.

    embed(tokens)            (B, T, d)   rows at virtual positions replaced by the encoder's table (n, d)
    frozen LM                            causal: logits only at the last K+1 positions (K: target columns)
                                         seq2seq: embeds feed the encoder; the decoder reads the target shifted
    token log-probabilities  (B, K)      of the target tokens; loss and label scores are sums over these
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import PromptEncoder


def trainable(name: str) -> bool:
    """The one predicate for what is trained and what is saved: the encoder's parameters and, with ``task.head:
    linear``, the classifier's; nothing of the base."""
    return name.startswith(("encoder.", "classifier."))


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    dense = [1] * x.dim()  # the strides of a freshly allocated tensor of this shape
    for i in range(x.dim() - 2, -1, -1):
        dense[i] = dense[i + 1] * x.shape[i + 1]
    if list(x.stride()) != dense:  # (is_contiguous() overlooks odd strides on size-1 dims; matmul does not)
        x = x.clone(memory_format=torch.contiguous_format)
    return (x,) + args[1:]


def lm_head(base: nn.Module) -> nn.Module | None:
    """The model's output projection to the vocabulary, where it has one."""
    return base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None


def fold_head_input(base: nn.Module) -> None:
    """Make the LM head's input contiguous. With ``logits_to_keep`` the head gets a strided slice (B, k, d) of the
    hidden states, which ``F.linear`` cannot fold into one matrix product: torch then runs a batched product against
    the (V, d) weight expanded and copied once per row (450 MB per step for a batch of 8 here, half the step's
    time). Copying the small slice instead gives the same numbers."""
    head = lm_head(base)
    if isinstance(head, nn.Module) and not getattr(head, "_ptune_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._ptune_contiguous = True


SCORING_TOP_K = 64  # scoring: the most likely tokens per position whose logits are recomputed in float32


def float32_head(base: nn.Module) -> None:
    """Compute the LM head in float32 when the model runs in bfloat16 or float16. Label scores are differences of
    logits of size 16 to 64, which bfloat16 holds to steps of 0.125 to 0.25: two labels' log-odds then tie exactly
    for many rows and the tie, not the model, picks the label. The head's weight is copied once to float32 (the
    base's own, maybe tied, weight is untouched).

    Training and evaluation compute every logit in float32. Label scoring (``PTuningModel.scoring_head``) computes
    the vocabulary in bfloat16, about 4x faster on this CPU, then recomputes in float32 the logits that decide the
    scores: the scored tokens' (exact, so no ties) and each position's ``SCORING_TOP_K`` largest, which carry nearly
    all of the log-softmax normaliser. On 200 twitter_complaints test tweets the label scores moved by 0.002 at most
    and no prediction changed (benchmarks/README.md); the tests bound the difference on a tiny model."""
    head = lm_head(base)
    if not isinstance(head, nn.Linear) or head.weight.dtype not in (torch.bfloat16, torch.float16):
        return
    if getattr(head, "_ptune_float32", False):
        return
    # non-persistent buffers: they follow the model's .to(device) and stay out of every state dict
    head.register_buffer("_ptune_weight32", head.weight.detach().float(), persistent=False)
    head.register_buffer("_ptune_bias32", None if head.bias is None else head.bias.detach().float(), persistent=False)
    head._ptune_scored_ids = None  # set by PTuningModel.scoring_head

    def forward(x: torch.Tensor) -> torch.Tensor:
        scored = head._ptune_scored_ids
        if scored is None or torch.is_grad_enabled():
            return F.linear(x.float(), head._ptune_weight32, head._ptune_bias32)
        logits = F.linear(x.to(head.weight.dtype), head.weight, head.bias).float()  # (..., V), bfloat16-rounded
        k = min(SCORING_TOP_K, logits.shape[-1])
        ids = torch.cat([logits.topk(k, dim=-1).indices, scored.to(logits.device).expand(*logits.shape[:-1], -1)],
                        dim=-1)  # (..., k + S): a scored token also among the top k is written twice, alike
        exact = (head._ptune_weight32[ids] @ x.float().unsqueeze(-1)).squeeze(-1)
        if head._ptune_bias32 is not None:
            exact = exact + head._ptune_bias32[ids]
        return logits.scatter_(-1, ids, exact)

    head.forward = forward  # the instance's forward; hooks (fold_head_input's) still run around it
    head._ptune_float32 = True


class LinearHead(nn.Module):
    """``task.head: linear``: the pooled hidden state of one layer, standardised with the training rows' mean and
    spread (the middle layers of a decoder have a few dimensions hundreds of times larger than the rest), then a
    linear map to the labels. ``fit`` solves its convex problem to convergence: with 50 rows, a few dozen Adam
    steps leave a linear classifier far from its optimum."""

    def __init__(self, dim: int, n_labels: int, layer: int):
        super().__init__()
        self.layer = layer  # 1-based: the output of the layer-th block is pooled
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.linear = nn.Linear(dim, n_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, labels)
        return self.linear((features.float() - self.mean) / self.scale)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Standardise on ``features`` (N, d) and fit the weights by L2-regularised logistic regression (penalty
        1/(2N) |W|^2, scikit-learn's C=1), ``weights`` per label, with L-BFGS."""
        features = features.float()
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0, correction=0) + 1e-4)
        x = (features - self.mean) / self.scale
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        opt = torch.optim.LBFGS(self.linear.parameters(), max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")
        w = None if weights is None else weights.to(x.device).float()

        def objective():
            opt.zero_grad()
            value = F.cross_entropy(self.linear(x), labels.to(x.device), weight=w) \
                + 0.5 / len(x) * self.linear.weight.pow(2).sum()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(objective)


class _StopAt(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The base model's list of transformer blocks (``model.layers`` for Llama-likes, ``transformer.h`` for GPT-2)."""
    n = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", None)
    for module in base.base_model.children():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(base).__name__}")


_stop_here = threading.local()  # which block ends the current thread's forward pass (pooled_states); none: None


def _stop_hook(module, args, output):
    if getattr(_stop_here, "block", None) is module:
        raise _StopAt(output[0] if isinstance(output, tuple) else output)


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
        if "prefix_ids" in batch:  # the rows' shared prefix, run once (gradients flow through its keys and values)
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
        block = decoder_layers(self.base)[self.classifier.layer - 1]
        if not getattr(block, "_ptune_stop_hook", False):
            block.register_forward_hook(_stop_hook)  # inert unless this thread asks for it
            block._ptune_stop_hook = True
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        mask = batch["attention_mask"]
        _stop_here.block = block
        try:
            self.base.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch["position_ids"],
                                 use_cache=False)
            raise RuntimeError(f"block {self.classifier.layer} never ran")
        except _StopAt as stop:
            hidden = stop.hidden.float()
        finally:
            _stop_here.block = None
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
        from transformers import DynamicCache

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

        cache = DynamicCache(config=self.base.config)
        self.base(inputs_embeds=self.embed(ids, virtual, table), use_cache=True, logits_to_keep=1,
                  position_ids=torch.arange(ids.shape[1], device=ids.device)[None], **{self._cache_arg: cache})
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _expanded(self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int):
        """A fresh cache holding the prefix's keys and values once per row."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.base.config)
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
        cache = DynamicCache(config=self.base.config)
        if prefix is not None:
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
