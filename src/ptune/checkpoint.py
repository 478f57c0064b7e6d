"""Checkpoints: a directory of safetensors files and JSON manifests; nothing is ever unpickled.

    DIR/ptune.json                 manifest for inference: config, template, labels, base identity, file checksums
    DIR/prompts-<hash>.safetensors the computed prompt table (n, d) that inference splices in
    DIR/encoder-<hash>.safetensors the encoder's weights (to fine-tune further or re-export)
    DIR/state.json                 manifest for --resume: progress, history, file checksums
    DIR/optimizer-<hash>.safetensors, DIR/last-encoder-<hash>.safetensors

Files are named by content and written before the manifest that names them; replacing the manifest (write to a
temporary name, fsync, rename) is the commit. A crash at any moment leaves the previous checkpoint intact, and a
damaged file is caught by its SHA-256 before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError

FORMAT = "ptune-checkpoint"
VERSION = 1
MANIFEST = "ptune.json"
STATE = "state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename over ``path``, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _put_tensors(folder: Path, stem: str, tensors: dict[str, torch.Tensor]) -> dict:
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:16]}.safetensors"
    if not (folder / name).exists():
        write_atomic(folder / name, data)
    return {"file": name, "sha256": digest}


def _get_tensors(folder: Path, entry: dict) -> dict[str, torch.Tensor]:
    name = entry["file"]
    # a manifest names files in its own folder only ("../x" or "/x" would read outside it)
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{folder}: the manifest names {name!r}, not a tensor file of this folder")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
    data = path.read_bytes()
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
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupted manifest: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version", 0), int):
        raise CheckpointError(f"{path}: not a ptune checkpoint manifest")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer ptune (format version {meta['version']})")
    return meta


def _collect_garbage(folder: Path) -> None:
    """Remove tensor files that no manifest names (left by earlier saves)."""
    keep = set()
    for manifest in (MANIFEST, STATE):
        if (folder / manifest).is_file():
            try:
                meta = json.loads((folder / manifest).read_text())
                keep |= {e["file"] for e in meta.get("files", {}).values()}
            except (json.JSONDecodeError, KeyError, TypeError):
                return  # unreadable manifest: delete nothing
    for path in folder.glob("*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in folder.glob(".*.tmp"):  # left by a process killed mid-write (there is one writer per folder)
        path.unlink(missing_ok=True)


def save_model(folder: Path, *, config: dict, labels: dict | None, base: dict, encoder_state: dict,
               prompts: torch.Tensor, extra: dict | None = None) -> None:
    """Write (or replace) the inference checkpoint in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"encoder": _put_tensors(folder, "encoder", encoder_state),
             "prompts": _put_tensors(folder, "prompts", {"prompts": prompts.float()})}
    meta = {"format": FORMAT, "version": VERSION, "config": config, "template": config["task"]["template"],
            "labels": labels, "base": base, "n_virtual": int(prompts.shape[0]), "hidden_size": int(prompts.shape[1]),
            "files": files, **(extra or {})}
    write_atomic(folder / MANIFEST, json.dumps(meta, indent=2).encode())
    _collect_garbage(folder)


def load_model(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """(manifest, encoder state, prompt table), every file verified."""
    folder = Path(folder)
    meta = _read_manifest(folder / MANIFEST)
    try:
        encoder = _get_tensors(folder, meta["files"]["encoder"])
        prompts = _get_tensors(folder, meta["files"]["prompts"])["prompts"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{folder / MANIFEST}: manifest lacks its file entries") from None
    base = meta.get("base") if isinstance(meta.get("base"), dict) else {}
    if tuple(prompts.shape) != (meta.get("n_virtual"), meta.get("hidden_size")) or (
            prompts.shape[-1] != base.get("hidden_size", prompts.shape[-1])):
        raise CheckpointError(f"{folder}: prompt table shape {tuple(prompts.shape)} disagrees with the manifest")
    return meta, encoder, prompts


def save_state(folder: Path, *, encoder_state: dict, optimizer: torch.optim.Optimizer, progress: dict) -> None:
    """Write the resumable training state: encoder, optimizer moments, progress counters and history."""
    folder.mkdir(parents=True, exist_ok=True)
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
