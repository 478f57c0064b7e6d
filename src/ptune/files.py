"""Writing files safely: every file ptune writes appears whole or not at all, with the usual permissions, and a name
that belongs to a model, an adapter or a tokenizer is recognised so that ptune never writes over one.

A file is written to a temporary name beside it (``.NAME.XXXXXXXX.tmp``), flushed to disk and renamed over the
target; a crash leaves the old file (or none) and at worst a temporary file. The temporary file is created with mode
0666, which the system reduces by the process's umask, as for any file a program creates (``tempfile.mkstemp``
would make it 0600, unreadable to a server running as another user).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .errors import PtuneError

# a model's, adapter's or tokenizer's files: weights by their suffix, configs and tokenizers by their name
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".onnx", ".h5", ".msgpack", ".pkl",
                   ".pickle")
MODEL_FILE_NAMES = frozenset({
    "config.json", "adapter_config.json", "generation_config.json", "preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model"})

_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-z_]{8}\.tmp")  # write_atomic's temporary names (and mkstemp's, before)


def looks_like_model_file(name: str) -> bool:
    """Whether a file name is one a model, adapter or tokenizer folder holds (weights, a config, a vocabulary).

    Args:
        name (`str`): a file name (no folder).

    Returns:
        `bool`: True for e.g. ``model.safetensors``, ``pytorch_model.bin``, ``x.gguf``, ``config.json``,
        ``adapter_config.json``, ``tokenizer.json``, ``model.safetensors.index.json``.

    Example:
        >>> looks_like_model_file("adapter_model.safetensors"), looks_like_model_file("notes.txt")
        (True, False)
    """
    lower = name.lower()
    return lower.endswith(WEIGHT_SUFFIXES) or lower in MODEL_FILE_NAMES or lower.endswith(".index.json")


def temp_target(name: str) -> str | None:
    """The file a temporary name of ``write_atomic`` was for (``.metrics.jsonl.1a2b3c4d.tmp`` -> ``metrics.jsonl``);
    None for any other name."""
    match = _TEMP.fullmatch(name)
    return match["name"] if match else None


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``, mode 0666 less the umask (the system applies it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary name in the same folder, fsync, rename over
    ``path``, fsync the folder. The file gets the usual mode (0666 less the umask: 0644 under umask 022).

    Args:
        path (`str` or `Path`): the file to write or replace; its folder must exist.
        data (`bytes`): the whole content.

    Returns:
        None. On any error (disk full, interrupted) ``path`` is as it was and the temporary file is removed.

    Example:
        >>> write_atomic(Path("run/summary.json"), b'{"accuracy": 0.9}')
    """
    path = Path(path)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_out_file(path: str | Path) -> None:
    """Refuse an output file that would replace a model's, adapter's or tokenizer's file (``--out config.json`` in
    a model's folder), before any work starts.

    Args:
        path (`str` or `Path`): the file a command is about to write (``ptune predict --out``, ``ptune cv --out``).

    Returns:
        None; raises `PtuneError` naming the file and what to do.

    Example:
        >>> check_out_file("models/smol/model.safetensors")  # doctest: +SKIP
        PtuneError: models/smol/model.safetensors: a model's or adapter's file (weights, a config or a tokenizer) ...
    """
    path = Path(path)
    if path.is_dir():
        raise PtuneError(f"{path}: a folder; --out takes the name of a file to write")
    if path.exists() and looks_like_model_file(path.name):
        raise PtuneError(f"{path}: a model's or adapter's file (weights, a config or a tokenizer) that ptune will "
                         "not overwrite; choose another --out")
