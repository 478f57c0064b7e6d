"""The inference checkpoint of a trained model: config, labels, base identity, encoder weights and prompt table."""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..modeling.ptuning import PTuningModel
from ..session import Session


def save_inference(session: Session, model: PTuningModel, out_dir: Path, extra: dict | None = None,
                   seed: int | None = None) -> None:
    """Write the inference checkpoint (``ptune.json`` and its tensor files) that ``Predictor.load`` reads.

    Args:
        session (Session): the run's session (config, labels, base model identity).
        model (PTuningModel): the model to save; its prompt table (and deep prompt table, if any) is computed here,
            in eval mode, and its mode is put back afterwards. Its label offsets (``task.calibrate: prior``), if fitted, are saved too.
        out_dir (Path): the checkpoint folder (created if missing).
        extra (dict | None): more manifest fields (e.g. ``{"training": {"step": ..., "best": ...}}``).
        seed (int | None): the training seed actually used, where a caller overrode the config's (ensemble
            members), so the manifest says how to retrain the model.

    Returns:
        None.

    Example:
        >>> save_inference(session, model, Path("ckpt"), extra={"training": {"step": 40}})
        >>> Predictor.load("ckpt").predict_rows([{"text": "where is my parcel"}])
    """
    was_training = model.training
    model.eval()
    table = model.prompt_table()
    labels = session.task.labels.to_dict() if session.task.labels else None
    config = session.cfg.to_dict()
    if seed is not None:
        config["train"]["seed"] = seed
    if model.label_offsets is not None:
        extra = dict(extra or {}) | {"label_offsets": dict(zip(session.task.labels.labels,
                                                               model.label_offsets.tolist()))}
    checkpoint.save_model(out_dir, config=config, labels=labels, base=session.base.identity,
                          encoder_state=model.trainable_state(), prompts=table, extra=extra, deep=model.deep_table())
    model.train(was_training)
