"""PEFT's ``PREFIX_TUNING`` adapter as a ptune deep prompt, and back: what the adapter's config must say for PEFT to
lay the flat table out as ptune does, and the checks an imported table passes.

A deep prompt's flat table (n, L*2*H*D) is ordered, along its last axis, (layer, key-or-value, key/value head, head
dim) (``modeling.deep``). PEFT's prefix tuning stores the same table as ``prompt_embeddings`` and reshapes it by
its config: ``num_layers`` L, ``num_attention_heads`` H and ``token_dim`` H*D. PEFT keeps the values an adapter
gives, except on a model whose config has ``num_key_value_heads``: there it takes H from that and D from the
config's ``head_dim`` (else token_dim / H). So an export writes the base's real cache layout and checks that PEFT
would not replace it by another (``layout_problem``). Falcon's multi-query attention, whose config names no
``num_key_value_heads`` but whose cache keeps one head, needs the explicit values: PEFT's own guess would not run.

A saved PEFT prefix adapter always holds the flat table, with or without ``prefix_projection``: PEFT runs its MLP
once when it saves. So the import reads one tensor, never PEFT's code.
"""

from __future__ import annotations

PREFIX_TYPE = "PREFIX_TUNING"


def _text_config_values(hf_config) -> dict:
    """The language model's part of a Hugging Face config, as a plain dict (a multimodal config's text_config)."""
    values = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    return values.get("text_config") or values


def peft_kv_shape(hf_config, heads: int, head_dim: int) -> tuple[int | None, int | None]:
    """The (heads, head_dim) PEFT's prefix tuning reshapes the table with, on a base with ``hf_config``, when the
    adapter's config says ``heads`` heads of ``head_dim``.

    Args:
        hf_config (`transformers.PretrainedConfig`): the base model's config.
        heads (`int`): ``num_attention_heads`` written in the adapter.
        head_dim (`int`): ``token_dim / num_attention_heads`` written in the adapter.

    Returns:
        `tuple[int | None, int | None]`: what PEFT will use (None where PEFT would find no value).

    Example:
        >>> peft_kv_shape(LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2), 4, 8)
        (2, 8)
    """
    values = _text_config_values(hf_config)
    if "num_key_value_heads" not in values:
        return heads, head_dim  # PEFT keeps the adapter's values
    if values.get("global_head_dim") is not None or values.get("per_layer_config") is not None:
        return None, None  # layers of several shapes: PEFT fills the widest and skips the others
    return values.get("num_key_value_heads"), values.get("head_dim") or head_dim


def layout_problem(hf_config, layers: int, heads: int, head_dim: int) -> str | None:
    """Why PEFT would lay a deep table for this base out otherwise than ptune does (None: it lays it out the same).

    Args:
        hf_config (`transformers.PretrainedConfig`): the base model's config.
        layers, heads, head_dim (`int`): the base's KV cache layout, as the deep prompt fills it.

    Returns:
        `str | None`: the reason, naming what PEFT would use instead.

    Example:
        >>> layout_problem(LlamaConfig(num_attention_heads=4, num_key_value_heads=2, hidden_size=32), 2, 2, 8)
    """
    peft_heads, peft_dim = peft_kv_shape(hf_config, heads, head_dim)
    if peft_heads is None or peft_dim is None:
        return ("the base's config gives its layers keys and values of several shapes (global_head_dim, "
                "per_layer_config, or no num_key_value_heads), and PEFT's prefix tuning would size the table by the "
                f"widest of them, not by the {heads} heads of width {head_dim} ptune's deep prompt fills")
    if (peft_heads, peft_dim) != (heads, head_dim):
        return (f"the base's KV cache holds {heads} key/value heads of width {head_dim}, but PEFT's prefix tuning "
                f"would reshape the table into {peft_heads} heads of width {peft_dim} from the model's config "
                f"(num_key_value_heads, head_dim), so its keys and values would differ from ptune's")
    return None


def prefix_adapter_config(n: int, layers: int, heads: int, head_dim: int, base_path: str,
                          revision: str | None) -> dict:
    """``adapter_config.json`` of a PEFT ``PREFIX_TUNING`` adapter holding a flat table (n, L*2*H*D) as it is:
    no projection, in inference mode, the layout written out so PEFT need not guess it.

    Example:
        >>> prefix_adapter_config(8, 30, 3, 64, "models/SmolLM2-135M", None)["token_dim"]
        192
    """
    return {
        "peft_type": PREFIX_TYPE,
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": int(n),
        "num_layers": int(layers),
        "num_attention_heads": int(heads),
        "token_dim": int(heads * head_dim),
        "encoder_hidden_size": int(heads * head_dim),
        "prefix_projection": False,
        "init_weights": None,
        "num_transformer_submodules": 1,
        "inference_mode": True,
        "base_model_name_or_path": base_path,
        "revision": revision,
        "modules_to_save": None,
        "auto_mapping": None,
    }


def prefix_table_problem(adapter: dict, shape: tuple[int, ...]) -> str | None:
    """Why a ``PREFIX_TUNING`` adapter's ``prompt_embeddings`` of ``shape`` is not a flat table of the size its
    config gives (None: it is). A table of width ``token_dim`` with ``prefix_projection`` would be the MLP's input,
    which PEFT never saves.

    Example:
        >>> prefix_table_problem({"num_virtual_tokens": 8, "num_layers": 30, "token_dim": 192}, (8, 11520))
    """
    layers, dim, n = adapter.get("num_layers"), adapter.get("token_dim"), adapter.get("num_virtual_tokens")
    if not all(isinstance(v, int) and v > 0 for v in (layers, dim, n)):
        return ("its config must give num_virtual_tokens, num_layers and token_dim as positive integers (got "
                f"{n!r}, {layers!r}, {dim!r})")
    if tuple(shape) != (n, layers * 2 * dim):
        return (f"prompt_embeddings has shape {tuple(shape)}; a prefix of {n} positions over {layers} layers of "
                f"keys and values of width {dim} is ({n}, {layers * 2 * dim})")
    return None


def import_layout(adapter: dict, hf_config) -> tuple[int, int, int]:
    """The (layers, heads, head_dim) a ``PREFIX_TUNING`` adapter's table has on a base with ``hf_config``, as PEFT
    would reshape it; raises `ValueError` saying why where it does not fit the base.

    Example:
        >>> import_layout({"num_layers": 2, "num_attention_heads": 2, "token_dim": 16}, tiny_llama.config)
        (2, 2, 8)
    """
    values = _text_config_values(hf_config)
    layers = values.get("num_hidden_layers", getattr(hf_config, "num_hidden_layers", None))
    heads, dim = adapter.get("num_attention_heads"), adapter["token_dim"]
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise ValueError(f"num_attention_heads {heads!r} does not divide token_dim {dim}")
    peft_heads, head_dim = peft_kv_shape(hf_config, heads, dim // heads)
    if peft_heads is None or head_dim is None:
        raise ValueError("the base's layers keep keys and values of different shapes; one flat table cannot fill "
                         "them all")
    if adapter["num_layers"] != layers or peft_heads * head_dim != dim:
        raise ValueError(f"the adapter's table is {adapter['num_layers']} layers of keys and values of width {dim}; "
                         f"the base has {layers} layers of {peft_heads} heads of width {head_dim} "
                         f"({peft_heads * head_dim}): give --model with the adapter's base model")
    return layers, peft_heads, head_dim
