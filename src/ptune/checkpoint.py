"""Checkpoints: a directory of safetensors files and JSON manifests; nothing is ever unpickled.

    DIR/ptune.json                 manifest for inference: config, template, labels, base identity, file checksums
    DIR/prompts-<hash>.safetensors the computed prompt table (n, d) that inference splices in, and a deep
                                   prompt's flat table (n_deep, L*2*H*D) of keys and values, if any
    DIR/encoder-<hash>.safetensors the encoder's weights (to fine-tune further or re-export)
    DIR/state.json                 manifest for --resume: progress, history, file checksums
    DIR/optimizer-<hash>.safetensors, DIR/last-encoder-<hash>.safetensors

Files are named by content and written before the manifest that names them; replacing the manifest (write to a
temporary name, fsync, rename) is the commit. A crash at any moment leaves the previous checkpoint intact, and a
damaged file is caught by its SHA-256 before it is used.

A save removes only what ptune itself wrote and no manifest names any more: its own tensor files (the four names
above) and its own temporary files. Anything else in the folder is never touched, and a folder holding a model's or
an adapter's files is refused as an output folder before any work starts (``check_out_dir``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError, PtuneError
from .files import looks_like_model_file, temp_target, write_atomic

FORMAT = "ptune-checkpoint"
VERSION = 1
MANIFEST = "ptune.json"
STATE = "state.json"
TENSOR_STEMS = ("prompts", "encoder", "last-encoder", "optimizer")  # every stem _put_tensors is given
_OWN_TENSOR = re.compile(rf"(?:{'|'.join(TENSOR_STEMS)})-[0-9a-f]{{16}}\.safetensors")
# what else a run writes into its folder (training/logging.py, interop/peft.py import, evaluation/search.py)
RUN_FILES = frozenset({MANIFEST, STATE, "metrics.jsonl", "curves.png", "train.yaml", "search.json", "search.md",
                       "search.png"})


def is_own_tensor_file(name: str) -> bool:
    """Whether ``name`` is a tensor file a ptune checkpoint writes (``encoder-<16 hex>.safetensors``, ...)."""
    return _OWN_TENSOR.fullmatch(name) is not None


def foreign_files(folder: Path) -> list[str]:
    """The files in ``folder`` that belong to a model, an adapter or a tokenizer, not to a ptune checkpoint
    (``model.safetensors``, ``pytorch_model.bin``, ``config.json``, ``adapter_config.json``, ...), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if looks_like_model_file(p.name) and not is_own_tensor_file(p.name) and not p.is_dir())


def check_out_dir(folder: str | Path, *, resume: bool = False, resumable: bool = False) -> None:
    """Refuse an output folder ptune must not write into, before any work starts (before a model loads).

    A new run needs a folder that does not exist, or holds no ptune checkpoint and no model's or adapter's files;
    ``resume`` needs one that holds the resumable state of a run (whatever else is beside it is left untouched).

    Args:
        folder (`str` or `Path`): the output folder (``--out``).
        resume (`bool`, defaults to False): continue the run saved there (``ptune train --resume``).
        resumable (`bool`, defaults to False): the command can resume (the message then suggests ``--resume``).

    Returns:
        None; raises `PtuneError` naming the folder, what it holds, and what to do.

    Example:
        >>> check_out_dir("models/SmolLM2-135M")  # doctest: +SKIP
        PtuneError: models/SmolLM2-135M holds config.json, model.safetensors: ...
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PtuneError(f"{folder}: a file, not a folder; --out names the folder to write")
    if resume:
        if not has_state(folder):
            raise PtuneError(f"--resume: {folder} holds no training state to resume from")
        return
    if (folder / MANIFEST).exists() or has_state(folder):
        raise PtuneError(f"{folder} already holds a checkpoint; choose another --out"
                         + (", or --resume it" if resumable else ""))
    refuse_foreign(folder)


def refuse_foreign(folder: Path) -> None:
    """Raise `PtuneError` where ``folder`` holds a model's or adapter's files (``foreign_files``), naming them."""
    found = foreign_files(folder)
    if found:
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise PtuneError(f"{folder} holds {shown}: the files of a model or adapter, which ptune did not write and "
                         "will not write beside, overwrite or delete; choose a new or empty folder for --out")


def _put_tensors(folder: Path, stem: str, tensors: dict[str, torch.Tensor]) -> dict:
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:16]}.safetensors"
    if not (folder / name).exists():
        write_atomic(folder / name, data)
    return {"file": name, "sha256": digest}


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:  # permission denied, a folder where a file should be, ...
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None


def _get_tensors(folder: Path, entry: dict, check_file=None) -> dict[str, torch.Tensor]:
    name = entry["file"]
    # a manifest names files in its own folder only ("../x" or "/x" would read outside it)
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{folder}: the manifest names {name!r}, not a tensor file of this folder")
    path = folder / name
    if check_file is not None:
        check_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
    data = _read_bytes(path)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (the file is truncated or corrupted)")
    try:
        return st_load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as err:  # torch can object to the payload too
        raise CheckpointError(f"{path}: not a valid safetensors file: {err}") from None


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {path.parent} a ptune checkpoint directory?")
    try:
        meta = json.loads(_read_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupted manifest: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version", 0), int):
        raise CheckpointError(f"{path}: not a ptune checkpoint manifest")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer ptune (format version {meta['version']})")
    return meta


def _collect_garbage(folder: Path) -> None:
    """Remove ptune's own tensor files that no manifest names (left by earlier saves), and ptune's own temporary
    files (left by a process killed mid-write; there is one writer per folder). Nothing else is touched."""
    keep = set()
    for manifest in (MANIFEST, STATE):
        if (folder / manifest).is_file():
            try:
                meta = json.loads((folder / manifest).read_text(encoding="utf-8"))
                keep |= {e["file"] for e in meta.get("files", {}).values()}
            except (ValueError, KeyError, TypeError, AttributeError):
                return  # unreadable manifest: delete nothing
    for path in folder.iterdir():
        name, target = path.name, temp_target(path.name)
        stale = is_own_tensor_file(name) and name not in keep
        own_temp = target is not None and (target in RUN_FILES or is_own_tensor_file(target))
        if (stale or own_temp) and not path.is_dir():
            path.unlink(missing_ok=True)


def _check_first_save(folder: Path) -> None:
    """The first save into a folder: refuse one holding a model's or adapter's files, whichever caller got here."""
    if not ((folder / MANIFEST).exists() or has_state(folder)):
        refuse_foreign(folder)


def save_model(folder: Path, *, config: dict, labels: dict | None, base: dict, encoder_state: dict,
               prompts: torch.Tensor, extra: dict | None = None, deep: torch.Tensor | None = None) -> None:
    """Write (or replace) the inference checkpoint in ``folder``; ``deep``: a deep prompt's flat table, kept in the
    prompts file beside the prompt table."""
    folder.mkdir(parents=True, exist_ok=True)
    _check_first_save(folder)
    tables = {"prompts": prompts.float()} | ({} if deep is None else {"deep": deep.float()})
    files = {"encoder": _put_tensors(folder, "encoder", encoder_state),
             "prompts": _put_tensors(folder, "prompts", tables)}
    shapes = {} if deep is None else {"deep_tokens": int(deep.shape[0]), "deep_width": int(deep.shape[1])}
    meta = {"format": FORMAT, "version": VERSION, "config": config, "template": config["task"]["template"],
            "labels": labels, "base": base, "n_virtual": int(prompts.shape[0]), "hidden_size": int(prompts.shape[1]),
            **shapes, "files": files, **(extra or {})}
    write_atomic(folder / MANIFEST, json.dumps(meta, indent=2).encode())
    _collect_garbage(folder)


def load_model(folder: str | Path, check_file=None) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """(manifest, encoder state, prompt table), every file verified; ``check_file(path)``, if given, is called on
    each file before it is read (to refuse one, it raises)."""
    return load_tables(folder, check_file)[:3]


def load_tables(folder: str | Path, check_file=None
                ) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """``load_model``'s parts and the deep prompt's flat table (n_deep, L*2*H*D), None where the checkpoint has no
    deep prompt.

    Example:
        >>> meta, encoder, prompts, deep = load_tables("runs/deep")
        >>> deep.shape  # 8 positions, 30 layers x keys and values x 3 heads x 64
        torch.Size([8, 11520])
    """
    folder = Path(folder)
    if check_file is not None:
        check_file(folder / MANIFEST)
    meta = _read_manifest(folder / MANIFEST)
    try:
        encoder = _get_tensors(folder, meta["files"]["encoder"], check_file)
        tables = _get_tensors(folder, meta["files"]["prompts"], check_file)
        prompts, deep = tables["prompts"], tables.get("deep")
    except (KeyError, TypeError):
        raise CheckpointError(f"{folder / MANIFEST}: manifest lacks its file entries") from None
    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    if tuple(prompts.shape) != (meta.get("n_virtual"), meta.get("hidden_size")) or (
            prompts.shape[-1] != base.get("hidden_size", prompts.shape[-1])):
        raise CheckpointError(f"{folder}: prompt table shape {tuple(prompts.shape)} disagrees with the manifest")
    deep_shape = None if deep is None else tuple(deep.shape)
    if deep_shape != ((meta["deep_tokens"], meta.get("deep_width")) if "deep_tokens" in meta else None):
        raise CheckpointError(f"{folder}: deep prompt table shape {deep_shape} disagrees with the manifest")
    return meta, encoder, prompts, deep


def save_state(folder: Path, *, encoder_state: dict, optimizer: torch.optim.Optimizer, progress: dict) -> None:
    """Write the resumable training state: encoder, optimizer moments, progress counters and history."""
    folder.mkdir(parents=True, exist_ok=True)
    _check_first_save(folder)
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    files = {"encoder": _put_tensors(folder, "last-encoder", encoder_state)}
    if tensors:
        files["optimizer"] = _put_tensors(folder, "optimizer", tensors)
    meta = {"format": FORMAT, "version": VERSION, "progress": progress, "files": files,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}}
    write_atomic(folder / STATE, json.dumps(meta, indent=2).encode())
    _collect_garbage(folder)


def load_state(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore the optimizer in place; return (encoder state, progress)."""
    meta = _read_manifest(folder / STATE)
    try:
        encoder = _get_tensors(folder, meta["files"]["encoder"])
        tensors = _get_tensors(folder, meta["files"]["optimizer"]) if "optimizer" in meta["files"] else {}
        state: dict = {}
        for key, value in list(tensors.items()) + list(meta["optimizer"]["scalars"].items()):
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        # the optimizer checks that the saved groups match this encoder's parameters (a changed config fails here)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        progress = dict(meta["progress"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{folder / STATE}: cannot resume from this state ({type(err).__name__}: {err}); "
                              "was the config changed since?") from None
    return encoder, progress


def has_state(folder: Path) -> bool:
    return (folder / STATE).is_file()


def check_identity(saved: dict, actual: dict, where: str) -> None:
    """Refuse a base model other than the one the checkpoint was trained on."""
    for key in ("hidden_size", "vocab_size"):
        if saved.get(key) != actual.get(key):
            raise CheckpointError(f"{where} was trained on a base model with {key} {saved.get(key)}, but "
                                  f"{actual.get('name_or_path')!r} has {actual.get(key)}")
    for key in ("sha256", "config_sha256", "model_type"):
        if key in saved and key in actual and saved[key] != actual[key]:
            raise CheckpointError(f"{where} was trained on {saved.get('name_or_path')!r} ({key} "
                                  f"{str(saved[key])[:16]}), not on {actual.get('name_or_path')!r} "
                                  f"({str(actual[key])[:16]})")
