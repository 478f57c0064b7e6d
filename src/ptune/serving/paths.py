"""The server's files as its clients see them. A path a client sends (``POST /v1/tasks``) is taken only inside the
tasks directory, and every path outside it gets one answer whether or not it exists, so the answers do not map the
server's disk; every file of a checkpoint loaded from there (manifest, tensor files, vocabulary file) must lie
inside it too, symlinks resolved; and no message that leaves the server holds one of its absolute paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from ..checkpoint import MANIFEST
from ..config import Config
from ..errors import CheckpointError
from .protocol import RequestError

PATH_STOP = "\\s'\"`,;:()\\[\\]{}<>"
"""Characters that end a path in a message (a regex character class body): spaces, quotes, brackets, ``:``."""
ABSOLUTE_PATH = re.compile(rf"(?<![\w.:/\\-])/[^{PATH_STOP}]*")
"""An absolute path in a message: a ``/`` that starts a word (not the ``/`` of ``a/b`` or of ``http://``)."""


def public_message(message: str, root: Path | None = None) -> str:
    """``message`` as a client may read it: paths inside ``root`` (the tasks directory) named relative to it, as a
    client names them, and every other absolute path, quoted or not, by its last part only.

    Args:
        message (str): an error message that may name the server's files (checkpoints, a base model's folder).
        root (Path | None): the tasks directory, resolved (None: the server has none).

    Returns:
        str: the message without an absolute path of the server.

    Example:
        >>> public_message("/srv/tasks/a/ptune.json: corrupted manifest", Path("/srv/tasks"))
        'a/ptune.json: corrupted manifest'
        >>> public_message("checkpoint /srv/tasks/a was trained on 'bert', not on /srv/models/llama", Path("/srv/tasks"))
        "checkpoint a was trained on 'bert', not on llama"
    """
    if root is not None:
        message = message.replace(f"{root}{os.sep}", "")  # what follows is a path inside the directory
        message = re.sub(re.escape(str(root)) + f"(?![^{PATH_STOP}])", ".", message)
    return ABSOLUTE_PATH.sub(lambda m: PurePosixPath(m[0]).name or m[0], message)


def is_under(path: str | Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or inside it, by their names alone (nothing on disk is read)."""
    return Path(path).is_relative_to(root)


def checkpoint_dir(root: Path, path) -> Path:
    """The checkpoint directory a client names by ``path`` (relative to ``root``, or absolute), every symlink
    resolved. A path whose name leads outside ``root`` is refused before anything on disk is read, with one answer
    (403) for every such path; one that leads outside only through a symlink gets the answer of a path that does not
    exist (404), so neither answer says what exists outside.

    Args:
        root (Path): the tasks directory, already resolved.
        path: what the client sent.

    Returns:
        Path: the resolved checkpoint directory (inside ``root``, holding an entry named ``ptune.json``).

    Example:
        >>> checkpoint_dir(Path("/srv/tasks"), "../etc")
        Traceback (most recent call last):
        ...
        ptune.serving.protocol.RequestError: '../etc' is outside the tasks directory
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RequestError(422, "'path' must be a non-empty string: a checkpoint directory inside the tasks directory")
    shown = repr(path[:200])
    if not is_under(os.path.normpath(root / path), root):  # "/etc", "../x", "a/../../x"
        raise RequestError(403, f"{shown} is outside the tasks directory")
    missing = RequestError(404, f"no checkpoint directory at {shown} in the tasks directory")
    try:
        resolved = (root / path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, unreadable
        raise missing from None
    if not is_under(resolved, root) or not resolved.is_dir():
        raise missing
    if not os.path.lexists(resolved / MANIFEST):  # where it leads is the loader's check (check_inside)
        raise RequestError(404, f"no checkpoint at {shown} in the tasks directory: the folder holds no {MANIFEST}")
    return resolved


def check_inside(root: Path, path: Path) -> None:
    """Refuse a file of a checkpoint that leads outside ``root`` (it is, or lies in, a symlink pointing out),
    whether or not its target exists.

    Args:
        root (Path): the tasks directory, resolved.
        path (Path): the file as the checkpoint names it (inside ``root`` by name).

    Raises:
        CheckpointError: naming ``path``.

    Example:
        >>> check_inside(Path("/srv/tasks"), Path("/srv/tasks/a/prompts-0123.safetensors"))  # doctest: +SKIP
    """
    try:
        real = path.resolve()  # not strict: a link to a missing file outside is refused like one to a file
    except (OSError, RuntimeError):
        raise CheckpointError(f"{path}: cannot be resolved (a symlink loop?)") from None
    if not is_under(real, root):
        raise CheckpointError(f"{path}: a symlink that leads outside the tasks directory; the server reads a "
                              "checkpoint's files from inside that directory only")


def confined_vocab(cfg: Config, folder: Path, root: Path) -> Config:
    """``cfg`` with ``task.vocab_file`` (a probing checkpoint's word list) as an absolute path that lies inside
    ``root``; a relative one is read from the checkpoint directory ``folder``.

    Args:
        cfg (Config): the checkpoint's config.
        folder (Path): the checkpoint directory, resolved.
        root (Path): the tasks directory, resolved.

    Returns:
        Config: ``cfg`` itself when it names no vocabulary file, else a copy naming it absolutely.

    Example:
        >>> confined_vocab(cfg, Path("/srv/tasks/lama"), Path("/srv/tasks")).task.vocab_file  # doctest: +SKIP
        '/srv/tasks/lama/vocab.json#bert-base-cased'
    """
    if not cfg.task.vocab_file:
        return cfg
    file, sep, key = cfg.task.vocab_file.partition("#")
    path = Path(os.path.normpath(folder / file))
    if not is_under(path, root):
        raise CheckpointError(f"{folder / MANIFEST}: the manifest's task.vocab_file is outside the tasks directory; "
                              "put the word list in the checkpoint directory and name it relative to it")
    check_inside(root, path)
    return cfg.replace({"task.vocab_file": f"{path}{sep}{key}"})
