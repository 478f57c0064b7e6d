"""Random-weight causal LMs with the shapes of real ones, saved once to a local folder that both PEFT and ptune
load like any model. Speed and memory depend on the shapes, not on the weights, and no model hub is needed.

    python benchmarks/random_models.py --size 0.5b --out-root /tmp/ptune-bench-models    # prints the folder
    python benchmarks/random_models.py --save-tokenizer tok/   # for --tokenizer tok/ where the package is absent

Shapes (hidden, intermediate, layers, attention heads, key/value heads, vocabulary, rope theta, tied embeddings)
are those of each model's published config.json:
- ``135m``: SmolLM2-135M (Llama): 576, 1536, 30, 9, 3, 49152, 1e5, tied      -> 134,515,008 parameters
- ``0.5b``: Qwen2.5-0.5B (Qwen2): 896, 4864, 24, 14, 2, 151936, 1e6, tied    -> 494,032,768 parameters
- ``1.5b``: Qwen2.5-1.5B (Qwen2): 1536, 8960, 28, 12, 2, 151936, 1e6, tied   -> 1,543,714,304 parameters
- ``tiny``: a 2-layer Llama of width 64 with SmolLM2's vocabulary, for smoke tests only.

Every folder holds the embedded model's tokenizer (SmolLM2's, 49,152 tokens): its ids fit every vocabulary above,
and the special-token ids in the configs are set to its own (begin 1, end and pad 2). Only those ids differ from
the real configs; they change no computation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

SPECIAL_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}

SHAPES: dict[str, dict] = {
    "tiny": dict(family="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, rope_theta=1e5, tie_word_embeddings=True,
                 rms_norm_eps=1e-5, max_position_embeddings=2048),
    "135m": dict(family="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, rope_theta=1e5, tie_word_embeddings=True,
                 rms_norm_eps=1e-5, max_position_embeddings=8192),
    "0.5b": dict(family="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
                 rms_norm_eps=1e-6, max_position_embeddings=32768),
    "1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                 tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=131072),
}
PUBLISHED = {"135m": "SmolLM2-135M", "0.5b": "Qwen2.5-0.5B", "1.5b": "Qwen2.5-1.5B", "tiny": "none (smoke test)"}


def build_config(size: str):
    """The transformers config of a size in ``SHAPES``.

    Args:
        size (`str`): a key of ``SHAPES``.

    Returns:
        `LlamaConfig | Qwen2Config`: with the embedded tokenizer's special-token ids.

    Example:
        >>> build_config("0.5b").hidden_size
        896
    """
    from transformers import LlamaConfig, Qwen2Config

    spec = dict(SHAPES[size])
    family = spec.pop("family")
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return cls(**spec, **SPECIAL_TOKENS, architectures=[f"{cls.__name__.replace('Config', '')}ForCausalLM"])


def count_parameters(size: str) -> int:
    """Parameters of a size's model, counted on the meta device (no memory, no time)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(size))
    return sum(p.numel() for p in model.parameters())


def embedded_tokenizer_folder() -> Path:
    """The folder of the embedded model's cached float copy (dequantised from its GGUF file on first use)."""
    from ptune.config import EMBEDDED_MODEL, ModelConfig
    from ptune.modeling.base import describe_base

    return Path(describe_base(ModelConfig(name_or_path=EMBEDDED_MODEL))[0])


def model_folder(size: str, root: str | Path) -> Path:
    """Where a size's model lives under ``root``: named by the size and a hash of its shape, so a changed shape is
    built afresh."""
    digest = hashlib.sha256(json.dumps(SHAPES[size], sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / f"{size}-{digest}"


def ensure_model(size: str, root: str | Path, seed: int = 0, tokenizer: str | Path | None = None) -> Path:
    """The folder of a size's random-weight model (float32 safetensors + tokenizer), built and saved on first use.

    The folder is written under a temporary name and renamed when complete, so an interrupted build is never used.

    Args:
        size (`str`): a key of ``SHAPES``.
        root (`str | Path`): the folder that holds the built models.
        seed (`int`, defaults to 0): torch seed for the random weights.
        tokenizer (`str | Path`, *optional*): a folder holding the embedded model's tokenizer, saved beforehand
            (for a machine without the embedded model's package); by default it is read from that package.

    Returns:
        `Path`: the model folder.

    Example:
        >>> ensure_model("tiny", "/tmp/ptune-bench-models").name.startswith("tiny-")
        True
    """
    target = model_folder(size, root)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_config(size), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer or embedded_tokenizer_folder(), trust_remote_code=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        if target.exists():  # a folder left without its config.json is not a model
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_root() -> Path:
    return Path(tempfile.gettempdir()) / "ptune-bench-models"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SHAPES), help="which shape to build")
    p.add_argument("--out-root", default=str(default_root()), help="folder holding the built models "
                   "(default: %(default)s)")
    p.add_argument("--tokenizer", help="folder with the embedded model's tokenizer, saved beforehand (default: "
                   "read from the embedded model's package)")
    p.add_argument("--save-tokenizer", metavar="FOLDER", help="only save the embedded model's tokenizer to FOLDER, "
                   "for --tokenizer on a machine without the package")
    args = p.parse_args(argv)
    if args.save_tokenizer:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(embedded_tokenizer_folder()).save_pretrained(args.save_tokenizer)
        return print(args.save_tokenizer)
    if not args.size:
        p.error("--size is required (or --save-tokenizer)")
    print(ensure_model(args.size, args.out_root, tokenizer=args.tokenizer))


if __name__ == "__main__":
    main()
