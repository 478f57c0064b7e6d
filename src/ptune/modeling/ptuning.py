"""The P-tuning model: a frozen language model plus a prompt encoder whose output is spliced in at virtual positions.

    embed(tokens)            (B, T, d)   rows at virtual positions replaced by the encoder's table (n, d)
    frozen LM                            causal: logits only at the last K+1 positions (K: target columns)
                                         masked: logits at the [MASK] columns
                                         seq2seq: embeds feed the encoder; the decoder reads the target shifted
    token log-probabilities  (B, K)      of the target tokens; loss and label scores are sums over these

``PTuningModel`` holds what every kind shares; ``CausalPTuning``, ``MaskedPTuning`` and ``Seq2SeqPTuning`` each run
their kind's forward pass, and ``build_ptuning_model`` picks one for the base model's kind.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import attention_window, packable
from .deep import DeepPromptEncoder, deep_keys_values, greedy_decode
from .encoders import PromptEncoder
from .heads import LinearHead, adapt_lm_head, block_output, float32_scoring
from .label_search import WordSearch, best_word_sums
from .scoring import (KeysValues, PrefixCache, after_prefix, cache_argument, joined, new_cache, repeated, run_prefix,
                      run_rows, word_logprobs)


def checkpoint_blocks(base: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing of ``base``'s transformer blocks on or off: with it, a block keeps only its
    input in the forward pass and runs again in the backward pass (torch's non-reentrant checkpoint, so the gradient
    reaches the input embeddings while every weight stays frozen).

    transformers' own switch (``gradient_checkpointing_enable``) acts only on blocks in training mode, and the
    frozen model stays in evaluation mode (training mode would turn on the dropout of families that have some), so
    the blocks get torch's composable checkpoint instead: hooks on each block, whatever its mode, that leave its
    weights, names and state dict as they were. Once added they stay, switched on or off here.

    Args:
        base (`torch.nn.Module`): the frozen Hugging Face model.
        enabled (`bool`): on or off.

    Returns:
        `int`: the number of blocks (transformers' ``GradientCheckpointingLayer`` modules) switched.

    Example:
        >>> checkpoint_blocks(model.base, True)  # a 30-block model
        30
    """
    try:
        from torch.distributed._composable import checkpoint
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError as err:  # a torch built without torch.distributed
        if enabled:
            raise ConfigError(f"train.gradient_checkpointing: {err}") from None
        return 0
    blocks = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    if enabled and not blocks:
        raise ConfigError(f"train.gradient_checkpointing: {type(base).__name__} has no blocks transformers can "
                          "checkpoint (GradientCheckpointingLayer); set it to false")
    for block in blocks:
        if checkpoint.state(block) is None:
            if not enabled:
                continue
            checkpoint(block)
        checkpoint.state(block).enable_hook = enabled
    return len(blocks)


def trainable(name: str) -> bool:
    """The one predicate for what is trained and what is saved: the encoder's parameters, the deep prompt's
    (``encoder.deep_tokens``) and, with ``task.head: linear``, the classifier's; nothing of the base."""
    return name.startswith(("encoder.", "classifier.", "deep."))


class PTuningModel(nn.Module):
    """A frozen language model whose input embeddings at virtual positions come from a trainable prompt encoder.
    Only the encoder (and a linear head, if any) trains; the base stays in evaluation mode with no gradients.

    Build one with ``build_ptuning_model``: the subclass for the base model's kind runs the forward pass.

    Args:
        base (`torch.nn.Module`): the frozen Hugging Face model (causal, masked or seq2seq LM).
        encoder (`PromptEncoder`): gives the (n_virtual, d) table of virtual-token embeddings.
        classifier (`LinearHead`, *optional*): ``task.head: linear``'s classifier over pooled hidden states.
        deep (`DeepPromptEncoder`, *optional*): a deep prompt's keys and values at every layer (causal LMs only).

    Inputs (a batch from ``Task.batch`` / ``collate``):
        input_ids, virtual_index, attention_mask, position_ids (`torch.LongTensor`): (B, T); ``virtual_index`` is
        the row of the prompt table at a virtual position and -1 elsewhere.
        labels (`torch.LongTensor`): (B, T) target token ids at target positions, -100 elsewhere.

    Attributes:
        label_offsets (`torch.Tensor` or None): (labels,) added to label log-probabilities under ``task.calibrate:
            prior``.

    Example:
        >>> model = build_ptuning_model(base, build_encoder(cfg.encoder, 20, 576), "causal")
        >>> logp, mask = model.token_logprobs(batch)  # (B, K), (B, K)
        >>> loss = -logp.sum() / mask.sum()
    """

    kind = ""

    def __init__(self, base: nn.Module, encoder: PromptEncoder, classifier: LinearHead | None = None,
                 deep: DeepPromptEncoder | None = None):
        super().__init__()
        if deep is not None and self.kind != "causal":
            raise ValueError(f"a deep prompt needs a causal LM's KV cache; this is a {self.kind} LM")
        self.base = base
        self.encoder = encoder
        self.classifier = classifier
        self.deep = deep
        self._deep_table: torch.Tensor | None = None  # cached deep prompt table for inference
        base.requires_grad_(False)
        base.eval()
        adapt_lm_head(base)
        self._table: torch.Tensor | None = None  # cached prompt table for inference
        self.label_offsets: torch.Tensor | None = None  # classification, ``task.calibrate: prior``: added to scores
        self.checkpointing = False  # recompute the base's blocks in the backward pass (training mode only)
        self._compiled_forward = None  # the base's forward through torch.compile, for training (``use_compiled_base``)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the frozen model never trains: no dropout in it, ever
        if mode:
            self.clear_prompt_cache()
        # the base may be shared with other models: its blocks follow whichever model last changed mode
        checkpoint_blocks(self.base, mode and self.checkpointing)
        return self

    def use_gradient_checkpointing(self, enabled: bool = True) -> "PTuningModel":
        """Recompute the frozen model's blocks in the backward pass while this model is in training mode
        (``train.gradient_checkpointing``; see ``checkpoint_blocks``): the same loss and gradients, the activation
        memory of one block instead of all of them, about one more forward pass of compute. Returns the model."""
        self.checkpointing = enabled
        checkpoint_blocks(self.base, enabled and self.training)
        return self

    def clear_prompt_cache(self) -> None:
        """Forget everything computed from the prompt table (it is about to change)."""
        self._table = None
        self._deep_table = None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained (and saved) tensors: the encoder's and the classifier's, by state-dict name."""
        return {k: v for k, v in self.state_dict().items() if trainable(k)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``trainable_state``'s tensors; refused unless the names and shapes are this model's."""
        own = self.trainable_state()
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            raise ValueError("encoder state does not match this encoder's parameters")
        self.load_state_dict(state, strict=False)
        self.clear_prompt_cache()

    def use_compiled_base(self, enabled: bool = True) -> "PTuningModel":
        """Run the frozen model's forward pass through ``torch.compile`` while this model is in training mode
        (``train.compile``); evaluation and prediction keep the plain forward. Shapes are dynamic, so batches of other
        lengths reuse the compiled code; the first steps pay for compiling. Returns the model."""
        self._compiled_forward = torch.compile(self.base.forward, dynamic=True) if enabled else None
        return self

    def run_base(self, **inputs):
        """The frozen model's forward pass on keyword ``inputs``: the compiled one in training where
        ``use_compiled_base`` asked for it, else the model itself."""
        if self.training and self._compiled_forward is not None:
            return self._compiled_forward(**inputs)
        return self.base(**inputs)

    def prompt_table(self) -> torch.Tensor:
        """(n, d): run the encoder (once per step in training); at inference a fixed table, computed once."""
        if self.training:
            return self.encoder()
        if self._table is None:
            with torch.no_grad():
                self._table = self.encoder().detach()
        return self._table

    def set_prompt_table(self, table: torch.Tensor) -> None:
        """Serve from a saved table (n, d) (no encoder run at all); a deep table set before is kept."""
        deep = self._deep_table
        self.clear_prompt_cache()
        self._table, self._deep_table = table.detach().float().to(self.encoder.table.device), deep

    def deep_table(self) -> torch.Tensor | None:
        """(n, L*2*H*D): the deep prompt's flat table (``modeling.deep``), run once per step in training and computed
        once at inference; None without a deep prompt."""
        if self.deep is None:
            return None
        if self.training:
            return self.deep()
        if self._deep_table is None:
            with torch.no_grad():
                self._deep_table = self.deep().detach()
        return self._deep_table

    def set_deep_table(self, table: torch.Tensor) -> None:
        """Serve from a saved deep table (n, L*2*H*D) (no deep encoder run at all); a prompt table set before is
        kept."""
        kept = self._table
        self.clear_prompt_cache()
        self._table, self._deep_table = kept, table.detach().float().to(self.deep.table.device)

    def embed(self, input_ids: torch.Tensor, virtual_index: torch.Tensor, table: torch.Tensor | None = None
              ) -> torch.Tensor:
        """(B, T, d): the token embeddings, with the prompt table's rows (``table``, default ``prompt_table()``) at
        the virtual positions."""
        tokens = self.base.get_input_embeddings()(input_ids)  # (B, T, d)
        if self.encoder.n_virtual == 0:
            return tokens
        table = (self.prompt_table() if table is None else table).to(tokens.dtype)  # (n, d)
        spliced = table[virtual_index.clamp(min=0)]  # (B, T, d)
        return torch.where((virtual_index >= 0).unsqueeze(-1), spliced, tokens)

    def target_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits predicting each target column, and the labels there: (B, K, V), (B, K)."""
        raise NotImplementedError

    def token_logprobs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) log-probability of each target token, and the mask of real target tokens."""
        logits, labels = self.target_logits(batch)
        mask = labels != -100
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, K, V)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, K)
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
        """Whether ``continuation_logprobs`` can score label words from one run of their shared input."""
        return False

    def scoring_head(self, token_ids: list[int]):
        """A context within which the base's float32 head computes the vocabulary in bfloat16 and recomputes in
        float32 only ``token_ids`` (the words being scored) and each position's most likely tokens. No effect on a
        float32 model or while autograd records."""
        return float32_scoring(self.base, token_ids)

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int, eos_token_id, pad_token_id: int) -> torch.Tensor:
        """Greedy generation with the KV cache; the batch must hold no target tokens (causal: left-padded).
        Returns the new tokens only, (B, at most ``max_new_tokens``)."""
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        return self.base.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                                  pad_token_id=pad_token_id)


class CausalPTuning(PTuningModel):
    """P-tuning over a decoder-only LM: logits only at the target positions (``logits_to_keep``), a prefix every
    row shares run once, and label words scored from one run of their shared input plus the KV cache."""

    kind = "causal"

    def __init__(self, base: nn.Module, encoder: PromptEncoder, classifier: LinearHead | None = None,
                 deep: DeepPromptEncoder | None = None):
        super().__init__(base, encoder, classifier, deep)
        self.keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.cache_arg = cache_argument(base)
        self.window = attention_window(base.config)
        self.use_prefix_cache = True  # label scoring runs the prefix every row shares once
        self.use_prefix_tree = True  # label words that open alike run their shared tokens once per row
        self.prefix_cache = PrefixCache()

    @property
    def _prefix(self) -> tuple | None:
        """The cached prefix: ((token ids, virtual indices), its keys and values), or None."""
        return self.prefix_cache.entry

    def clear_prompt_cache(self) -> None:
        super().clear_prompt_cache()
        self.prefix_cache.clear()

    def target_logits(self, batch):
        if "packed_ids" in batch:
            return self.packed_target_logits(batch)
        labels = batch["labels"]
        table = self.prompt_table() if self.encoder.n_virtual else None  # the encoder runs once per call
        embeds = self.embed(batch["input_ids"], batch["virtual_index"], table)
        width = labels.shape[1]
        k = width - int((labels != -100).any(0).nonzero()[0])  # target columns sit in the last k
        inputs = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], use_cache=False)
        inputs = self.after_shared_prefix(inputs, batch.get("prefix_ids"), batch.get("prefix_virtual"), table)
        if self.keeps_logits:
            logits = self.run_base(**inputs, logits_to_keep=k + 1).logits  # (B, k+1, V)
        else:
            logits = self.run_base(**inputs).logits[:, -(k + 1):]
        return logits[:, :-1], labels[:, width - k:]  # logit at t predicts token t+1

    def packed_target_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``target_logits`` of a packed batch (``data.packing.pack``): its bins run once, each row seeing only itself
        and the shared prefix, and the logits are computed at the places before target columns only.

        Args:
            batch (dict[str, torch.Tensor]): ``packed_ids``, ``packed_virtual``, ``packed_positions`` (bins, L),
                ``packed_mask`` (bins, 1, L, L), ``target_places`` (B, K), ``labels`` (B, K).

        Returns:
            tuple[torch.Tensor, torch.Tensor]: logits (B, K, V) and labels (B, K), as ``target_logits`` gives them.
        """
        embeds = self.embed(batch["packed_ids"], batch["packed_virtual"])  # (bins, L, d)
        width = embeds.shape[1]
        places = batch["target_places"]  # (B, K) flat: bin * L + place
        columns, which = torch.unique(places % width, return_inverse=True)  # the places' columns, (U,) and (B, K)
        # behind a deep prompt, if any: every place also sees its n columns, and positions count from n
        embeds, mask, positions, cache = self.behind_prefix(embeds, batch["packed_mask"], batch["packed_positions"])
        if self.base.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, dtype=embeds.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(embeds.dtype).min)
        cached = {"use_cache": False} if cache is None else {"use_cache": True, self.cache_arg: cache}
        logits = self.run_base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **cached,
                               logits_to_keep=columns).logits  # (bins, U, V)
        return logits[places // width, which], batch["labels"]

    def after_shared_prefix(self, inputs: dict, ids: torch.Tensor | None, virtual: torch.Tensor | None,
                            table: torch.Tensor | None) -> dict:
        """The base's inputs for rows that follow a shared prefix ``ids``/``virtual`` (1, P) (None: no shared
        prefix) and the deep prompt, if any: the prefix runs once, behind the deep prompt, and its keys and values
        are repeated for every row (gradients flow through them), or, where a sliding window could cut in, it is
        joined to every row."""
        length = 0 if ids is None else ids.shape[1]
        embeds, mask, positions, cache = self.behind_prefix(
            inputs["inputs_embeds"], inputs["attention_mask"], inputs["position_ids"], length,
            lambda: self.embed(ids, virtual, table),
            lambda: run_prefix(self.base, self.cache_arg, self.embed(ids, virtual, table), self.deep_keys_values()))
        inputs = dict(inputs, inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return inputs if cache is None else dict(inputs, use_cache=True, **{self.cache_arg: cache})

    def behind_prefix(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, length: int = 0,
                      prefix_embeds=None, prefix_keys_values=None) -> tuple:
        """Left-padded rows (B, T) placed behind what comes before them: the deep prompt's n positions, if any, and
        a shared prefix of ``length`` tokens (0: none). The one place that chooses how, which every forward pass
        goes through. The keys and values before the rows (the deep prompt's, then the prefix's:
        ``prefix_keys_values()``, run behind the deep prompt) repeated for every row in a fresh cache; or, where a
        sliding window could cut in, the shared prefix's embeddings (``prefix_embeds()``, (1, P, d)) joined to
        every row.

        Returns:
            tuple: embeds, attention mask, position ids (the mask gains n+P places on the left and the positions
            count from n+P; where joined, all three gain the prefix's P places), and the KV cache (None where
            nothing is cached).
        """
        n = self.deep_length
        if length and not self.prefix_fits(n + length + mask.shape[1]):
            embeds, mask, positions = joined(prefix_embeds(), embeds, mask, positions)  # (B, P+T, d), (B, P+T) x2
            length = 0
        if length:
            kv = prefix_keys_values()
        elif n:
            kv = self.deep_keys_values()
        else:
            return embeds, mask, positions, None
        mask, positions = after_prefix(mask, positions, n + length)
        return embeds, mask, positions, repeated(kv, embeds.shape[0])

    @property
    def deep_length(self) -> int:
        """The deep prompt's positions before every row at every layer (0: no deep prompt)."""
        return 0 if self.deep is None else self.deep.n_tokens

    def deep_keys_values(self) -> KeysValues | None:
        """The deep prompt's keys and values per layer (1, H, n, D) in the base's dtype (None: no deep prompt)."""
        table = self.deep_table()
        if table is None:
            return None
        return deep_keys_values(table, self.deep.layout, self.base.get_input_embeddings().weight.dtype)

    def prefix_fits(self, length: int) -> bool:
        """Whether a shared prefix can run apart from rows ``length`` places long with it (their pads then sit between
        it and their text): yes unless a sliding window, which counts places rather than positions, may cut in."""
        return self.window is None or length < self.window

    @property
    def can_score_continuations(self) -> bool:
        return self.cache_arg is not None and self.keeps_logits

    @torch.no_grad()
    def prefix_keys_values(self, ids: list[int], virtual: list[int]) -> KeysValues:
        """Each layer's keys and values (1, heads, P, head_dim) for the prefix every row shares (leading virtual
        tokens and anchor text): computed once, then reused for every batch until the prompt table changes."""
        device = self.encoder.table.device
        return self.prefix_cache.get((tuple(ids), tuple(virtual)), lambda: run_prefix(
            self.base, self.cache_arg, self.embed(torch.tensor([ids], device=device),
                                                  torch.tensor([virtual], device=device)), self.deep_keys_values()))

    @torch.no_grad()
    def continuation_logprobs(self, batch, words: list[list[int]], prefix: tuple[list[int], list[int]] | None = None
                              ) -> list[torch.Tensor]:
        """Log-probabilities of several continuations of the same (left-padded, target-free) inputs, the inputs run
        once: their last position scores every word's first token, and the KV cache is reused to score the rest of
        a longer word, each prefix that words share once per row (``scores_by_tree``). Returns, per word, a
        (B, len(word)) tensor; the same numbers as appending each word to every input and reading ``token_logprobs``
        (up to floating-point noise).

        ``prefix`` (token ids, virtual indices): tokens that come before every input of ``batch``, which then holds
        only what follows them. Their keys and values come from ``prefix_keys_values`` (computed once) instead of
        being recomputed for every row.

        The words' tokens are scored in float32 on a float32 head (``scoring_head``)."""
        with self.scoring_head([t for word in words for t in word]):
            embeds, mask, positions, cache = self.scoring_inputs(batch, prefix)
            by_tree = self.scores_by_tree(mask.shape[1] + max(len(w) for w in words) - 1)
            return word_logprobs(self.base, self.cache_arg, embeds, mask, positions, cache, words, by_tree)

    @torch.no_grad()
    def best_word_logprobs(self, batch, words: list[list[int]], search: WordSearch,
                           prefix: tuple[list[int], list[int]] | None = None) -> torch.Tensor:
        """Each word's log-likelihood (B, W) after each input of ``batch``, as far as the best-first search over the
        words' prefix tree needs it to find each row's ``search.keep`` best labels (``label_search``): -inf for
        words it proved cannot reach them. Where the tree cannot run (``scores_by_tree``), every word is scored.
        ``batch`` and ``prefix`` as ``continuation_logprobs`` takes them."""
        with self.scoring_head([t for word in words for t in word]):
            embeds, mask, positions, cache = self.scoring_inputs(batch, prefix)
            if not self.scores_by_tree(mask.shape[1] + max(len(w) for w in words) - 1):
                every = word_logprobs(self.base, self.cache_arg, embeds, mask, positions, cache, words, False)
                return torch.stack([w.sum(-1) for w in every], dim=1).float().cpu()
            first, cache = run_rows(self.base, self.cache_arg, embeds, mask, positions, cache)
            return best_word_sums(self.base, self.cache_arg, mask, positions, cache, first, words, search)

    def scoring_inputs(self, batch, prefix: tuple[list[int], list[int]] | None):
        """The rows of ``batch`` behind the shared ``prefix`` (its keys and values cached) and the deep prompt, if
        any: embeds, mask, positions and the KV cache they run into."""
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])  # (B, T, d)
        mask, positions = batch["attention_mask"], batch["position_ids"]
        embeds, mask, positions, cache = self.behind_prefix(
            embeds, mask, positions, 0 if prefix is None else len(prefix[0]),
            lambda: self.embed(*(torch.tensor([p], device=mask.device) for p in prefix)),
            lambda: self.prefix_keys_values(*prefix))
        return embeds, mask, positions, new_cache() if cache is None else cache

    def scores_by_tree(self, places: int) -> bool:
        """Whether label words up to ``places`` places long with their inputs score by their prefix tree (each
        shared prefix once per row, ``scoring.PrefixTree``) rather than word by word: yes where ``use_prefix_tree``
        and the base takes a custom 4D mask (``packable``) that no sliding window would have cut."""
        return self.use_prefix_tree and packable(self.base) and self.prefix_fits(places)

    def pooled_states(self, batch) -> torch.Tensor:
        """(B, d): the output of block ``classifier.layer``, pooled over each row's real positions as the
        classifier says (``LinearHead.pool``: their mean, or the last one's). The forward pass stops there: the
        blocks above it and the LM head never run."""
        inputs = dict(inputs_embeds=self.embed(batch["input_ids"], batch["virtual_index"]),
                      attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
        inputs = self.after_shared_prefix(inputs, None, None, None)  # the deep prompt, if any, in the cache
        hidden = block_output(self.base, self.classifier.layer, **inputs).float()  # (B, T, d): the text's places
        return self.classifier.pool(hidden, batch["attention_mask"])

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int, eos_token_id, pad_token_id: int) -> torch.Tensor:
        """Greedy generation with the KV cache (see ``PTuningModel.generate``); behind a deep prompt, held in the
        cache before the rows, by ``deep.greedy_decode``."""
        if self.deep is None:
            return super().generate(batch, max_new_tokens, eos_token_id, pad_token_id)
        inputs = dict(inputs_embeds=self.embed(batch["input_ids"], batch["virtual_index"]),
                      attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
        inputs = self.after_shared_prefix(inputs, None, None, None)
        return greedy_decode(self.base, self.cache_arg, inputs, max_new_tokens, eos_token_id, pad_token_id)

    def class_logits(self, batch) -> torch.Tensor:
        """(B, labels): ``task.head: linear``'s scores."""
        return self.classifier(self.pooled_states(batch))


class MaskedPTuning(PTuningModel):
    """P-tuning over a masked LM (BERT, RoBERTa, ...): the targets are [MASK] positions of the input itself."""

    kind = "masked"

    def target_logits(self, batch):
        labels = batch["labels"]
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        # position ids are left to the model (right padding: 0..n-1 is right, RoBERTa adds its own offset)
        out = self.run_base(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        cols = (labels != -100).any(0).nonzero().squeeze(-1)  # the target columns
        return out.logits[:, cols], labels[:, cols]


class Seq2SeqPTuning(PTuningModel):
    """P-tuning over an encoder-decoder LM (T5, BART, ...): virtual tokens in the encoder's input; the decoder reads
    the target (``decoder_labels``) shifted right after its start token."""

    kind = "seq2seq"

    def target_logits(self, batch):
        embeds = self.embed(batch["input_ids"], batch["virtual_index"])
        labels = batch["decoder_labels"]  # (B, K) right-padded: causal decoder attention keeps pads harmless
        out = self.run_base(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            decoder_input_ids=self.decoder_inputs(labels), use_cache=False)
        return out.logits, labels

    def decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K): the decoder's input, the target shifted right after the start token (pads for -100)."""
        config = self.base.config
        start = config.decoder_start_token_id
        if start is None:
            start = getattr(getattr(self.base, "generation_config", None), "decoder_start_token_id", None)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        shifted = labels.new_full(labels.shape, pad)
        shifted[:, 0] = pad if start is None else start
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        return shifted

    def generate(self, batch, max_new_tokens, eos_token_id, pad_token_id):
        """The decoder's new tokens, its start token cut off."""
        return super().generate(batch, max_new_tokens, eos_token_id, pad_token_id)[:, 1:]


MODEL_KINDS: dict[str, type[PTuningModel]] = {"causal": CausalPTuning, "masked": MaskedPTuning,
                                              "seq2seq": Seq2SeqPTuning}


def build_ptuning_model(base: nn.Module, encoder: PromptEncoder, kind: str,
                        classifier: LinearHead | None = None, deep: DeepPromptEncoder | None = None) -> PTuningModel:
    """The P-tuning model for a base model of ``kind`` (``causal``, ``masked`` or ``seq2seq``).

    Args:
        base (`torch.nn.Module`): the frozen Hugging Face model.
        encoder (`PromptEncoder`): the prompt encoder.
        kind (`str`): the base model's kind (``FrozenBase.kind``).
        classifier (`LinearHead`, *optional*): ``task.head: linear``'s classifier (causal models only).
        deep (`DeepPromptEncoder`, *optional*): a deep prompt (causal models only).

    Returns:
        `PTuningModel`: a ``CausalPTuning``, ``MaskedPTuning`` or ``Seq2SeqPTuning``.

    Example:
        >>> model = build_ptuning_model(frozen.model, EmbeddingEncoder(4, 576), frozen.kind)
        >>> model.kind
        'causal'
    """
    return MODEL_KINDS[kind](base, encoder, classifier, deep)
