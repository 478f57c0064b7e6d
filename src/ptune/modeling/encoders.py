"""Prompt encoders: a trainable input table, optionally reparameterised, giving the virtual-token embeddings.

Each encoder maps nothing to a ``(n_virtual, d)`` table; the model runs it once per step and every row of the batch
shares the result. At inference the table does not depend on the input, so it is computed once and cached.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import EncoderConfig


class PromptEncoder(nn.Module):
    """Base of the prompt encoders: owns ``table`` (n_virtual, d), the trainable input that the subclasses
    transform into the virtual-token embeddings. Takes no input: the prompt does not depend on the row.

    Residual (``encoder.residual``): the output is ``start + transform()``, ``start`` a fixed copy of ``init`` (a
    buffer, saved with the encoder) and the transform's last layer zero, so at step 0 the prompt is exactly the
    init words' embeddings and training moves it only as far as the gradient pushes.

    Args:
        n_virtual (`int`): the number of virtual tokens n.
        dim (`int`): the base model's embedding width d.
        init (`torch.Tensor`, *optional*): (n, d) the table's starting value (``init_table``); default N(0, 1).
        residual (`bool`, defaults to False): add the transform to a fixed ``start`` (``init``, required).

    Returns (``forward()``):
        `torch.Tensor`: (n, d) the virtual-token embeddings.
    """

    def __init__(self, n_virtual: int, dim: int, init: torch.Tensor | None = None, residual: bool = False):
        super().__init__()
        if residual and init is None:
            raise ValueError("a residual prompt encoder needs the start table (init)")
        table = init.detach().clone().float() if init is not None else torch.randn(n_virtual, dim)
        self.table = nn.Parameter(table)  # (n, d)
        self.residual = residual
        if residual:
            self.register_buffer("start", table.clone())  # (n, d), persistent: checkpoints carry it

    @property
    def n_virtual(self) -> int:
        return self.table.shape[0]

    def transform(self) -> torch.Tensor:  # -> (n, d)
        """The subclass's map from the input table to the prompt (its last layer zero when residual)."""
        raise NotImplementedError

    def forward(self) -> torch.Tensor:  # -> (n, d)
        out = self.transform()
        return self.start + out if self.residual else out


class EmbeddingEncoder(PromptEncoder):
    """Plain prompt tuning: the table itself is the prompt (no reparameterisation).

    Args:
        n_virtual (`int`), dim (`int`), init (`torch.Tensor`, *optional*): see ``PromptEncoder``.

    Example:
        >>> encoder = EmbeddingEncoder(4, 576)
        >>> encoder().shape
        torch.Size([4, 576])
    """

    def __init__(self, n_virtual: int, dim: int, init: torch.Tensor | None = None, residual: bool = False):
        super().__init__(n_virtual, dim, init, residual)
        if residual:  # the table is the offset from the start: zero, and weight decay pulls it back there
            with torch.no_grad():
                self.table.zero_()

    def transform(self) -> torch.Tensor:
        return self.table


class MLPEncoder(PromptEncoder):
    """Table -> ``num_layers`` hidden layers of width ``hidden_size`` with ReLU -> back to the model's width.

    Args:
        n_virtual (`int`), dim (`int`), init (`torch.Tensor`, *optional*): see ``PromptEncoder``.
        hidden_size (`int`): the hidden layers' width.
        num_layers (`int`): the number of hidden layers (0: one linear map).

    Example:
        >>> encoder = MLPEncoder(20, 576, hidden_size=128, num_layers=2)
        >>> encoder().shape
        torch.Size([20, 576])
    """

    def __init__(self, n_virtual: int, dim: int, hidden_size: int, num_layers: int, init=None, residual=False):
        super().__init__(n_virtual, dim, init, residual)
        layers: list[nn.Module] = []
        width = dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        if residual:
            zero_layer(layers[-1])

    def transform(self) -> torch.Tensor:
        return self.mlp(self.table)  # (n, d)


class LSTMEncoder(PromptEncoder):
    """The paper's encoder: a bidirectional LSTM over the table (so virtual tokens depend on each other), then a
    two-layer MLP head back to the model's width.

    Args:
        n_virtual (`int`), dim (`int`), init (`torch.Tensor`, *optional*): see ``PromptEncoder``.
        hidden_size (`int`): the LSTM's hidden size per direction (the head's width is twice this).
        num_layers (`int`): the LSTM's layers.

    Example:
        >>> encoder = LSTMEncoder(20, 576, hidden_size=128, num_layers=2)
        >>> encoder().shape  # (1, 20, 256) out of the LSTM, back to (20, 576)
        torch.Size([20, 576])
    """

    def __init__(self, n_virtual: int, dim: int, hidden_size: int, num_layers: int, init=None, residual=False):
        super().__init__(n_virtual, dim, init, residual)
        self.lstm = nn.LSTM(dim, hidden_size, num_layers=num_layers, bidirectional=True, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden_size, 2 * hidden_size), nn.ReLU(),
                                  nn.Linear(2 * hidden_size, dim))
        if residual:
            zero_layer(self.head[-1])

    def transform(self) -> torch.Tensor:
        # the LSTM runs in float32 even under autocast: it is a few thousand multiply-adds per step, and oneDNN has
        # no bfloat16 LSTM on CPUs without AVX-512 (it fails to build one there)
        with torch.autocast(self.table.device.type, enabled=False):
            out, _ = self.lstm(self.table.float().unsqueeze(0))  # (1, n, 2h)
        return self.head(out.squeeze(0))  # (n, d)


def zero_layer(layer: nn.Linear) -> None:
    """Zero a linear layer's weight and bias: its output is 0 until training moves it (the residual start). The
    gradient still reaches it (its input is not zero), so the layers before it start learning one step later."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()


ENCODERS: dict[str, Callable[..., PromptEncoder]] = {
    "embedding": lambda n, d, cfg, init: EmbeddingEncoder(n, d, init, cfg.residual),
    "mlp": lambda n, d, cfg, init: MLPEncoder(n, d, cfg.hidden_size, cfg.num_layers, init, cfg.residual),
    "lstm": lambda n, d, cfg, init: LSTMEncoder(n, d, cfg.hidden_size, cfg.num_layers, init, cfg.residual),
}


def build_encoder(cfg: EncoderConfig, n_virtual: int, dim: int, init: torch.Tensor | None = None) -> PromptEncoder:
    """The prompt encoder ``cfg.type`` names (``embedding``, ``mlp`` or ``lstm``).

    Args:
        cfg (`EncoderConfig`): the ``encoder`` section (type, hidden_size, num_layers, residual).
        n_virtual (`int`): the number of virtual tokens.
        dim (`int`): the base model's embedding width.
        init (`torch.Tensor`, *optional*): (n_virtual, dim) the starting table.

    Returns:
        `PromptEncoder`: the encoder, on the CPU.

    Example:
        >>> encoder = build_encoder(EncoderConfig(type="lstm", hidden_size=128), 20, 576)
        >>> encoder().shape
        torch.Size([20, 576])
    """
    return ENCODERS[cfg.type](n_virtual, dim, cfg, init)


def init_table(cfg: EncoderConfig, n_virtual: int, embeddings: nn.Embedding, tokenizer) -> torch.Tensor | None:
    """The starting input table: random (None), or the embeddings of ``init_text``'s tokens cycled to length n.

    ``words`` starts each virtual token from one word of ``init_text`` (first token of each word, cycled);
    ``text`` uses the text's token sequence as it comes (cycled or cut)."""
    if cfg.init == "random":
        if cfg.type == "embedding":
            # a plain table is the prompt itself: start it at the scale of real token embeddings (N(0, 1) rows
            # are ~7x louder than SmolLM2's and swamp the text); reparameterised encoders keep N(0, 1) inputs
            # (Gemma's embedding module multiplies its rows by sqrt(d): the scale of what the model reads)
            scale = embeddings.weight.float().std().item() * float(getattr(embeddings, "embed_scale", 1.0))
            return torch.randn(n_virtual, embeddings.weight.shape[1]) * scale
        return None
    ids = text_ids(cfg, tokenizer)
    ids = [ids[i % len(ids)] for i in range(n_virtual)]
    with torch.no_grad():  # the module's output, as for real tokens: some models scale inside it (Gemma)
        return embeddings(torch.tensor(ids, device=embeddings.weight.device)).float().cpu()


def text_ids(cfg: EncoderConfig, tokenizer) -> list[int]:
    """The tokens ``init_text`` starts a table from: the first token of each word (``init: words``) or the text's
    tokens as they come (``init: text``).

    Example:
        >>> text_ids(EncoderConfig(init="words", init_text="great service"), tokenizer)  # doctest: +SKIP
        [1234, 5678]
    """
    if cfg.init == "words":
        return [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in cfg.init_text.split()]
    return tokenizer.encode(cfg.init_text, add_special_tokens=False)
