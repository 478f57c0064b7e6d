"""Predictor: load a checkpoint once (base model checked, prompt table read, no encoder run), predict rows in
batches. Used by ``ptune eval``, ``ptune predict`` and the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import checkpoint
from .base import BaseModel
from .config import config_from_dict
from .errors import CheckpointError, PtuneError
from .data import Table, read_table
from .labels import LabelSpace
from .model import PTuningModel
from .session import Session, check_inputs, open_session, report_truncated
from .train import evaluate


@dataclass
class Predictor:
    session: Session
    model: PTuningModel
    meta: dict

    @classmethod
    def load(cls, folder: str | Path, *, base: BaseModel | None = None, model_override: str | None = None,
             device: str | None = None) -> "Predictor":
        folder = Path(folder)
        meta, encoder_state, prompts = checkpoint.load_model(folder)
        try:  # a hand-edited manifest: say which file is wrong rather than which config key
            cfg = config_from_dict(meta["config"])
            labels = LabelSpace(list(meta["labels"]), list(meta["labels"].values())) if meta.get("labels") else None
            saved_base = dict(meta["base"])
        except (PtuneError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{folder / checkpoint.MANIFEST}: unusable manifest ({err})") from None
        if model_override:
            cfg.model.name_or_path = model_override
            cfg.model.gguf_file = None
        if device:
            cfg.model.device = device

        def check(identity: dict) -> None:
            checkpoint.check_identity(saved_base, identity, f"checkpoint {folder}")

        if base is not None:
            check(base.identity)
        session = open_session(cfg, labels=labels, base=base, check_identity=check)
        model = session.new_model()
        try:
            model.load_trainable_state(encoder_state)
        except ValueError as err:
            raise CheckpointError(f"{folder}: the encoder weights do not fit the manifest's config ({err})") from None
        model.set_prompt_table(prompts)
        model.eval()
        return cls(session, model, meta)

    @property
    def name(self) -> str:
        return self.meta.get("name", "")

    def check(self, table: Table, *, labelled: bool) -> None:
        check_inputs(self.session.cfg, self.session.template, table, labelled=labelled)
        if labelled:
            self.session.task.check(table)

    def predict_rows(self, rows: list[dict], show_progress: bool = False) -> list[dict]:
        bar = tqdm(total=len(rows), desc="predict", disable=not show_progress, unit="row")
        out = self.session.predict(self.model, rows, progress=bar.update)
        bar.close()
        return out

    def predict_file(self, path: str, fmt: str = "auto", show_progress: bool = True) -> tuple[Table, list[dict]]:
        table = read_table(path, fmt)
        self.check(table, labelled=False)
        report_truncated(self.session, table)
        return table, self.predict_rows(table.rows, show_progress)

    def evaluate_file(self, path: str, fmt: str = "auto", show_progress: bool = True) -> dict:
        table = read_table(path, fmt)
        self.check(table, labelled=True)
        report_truncated(self.session, table)
        return evaluate(self.model, self.session, table, show_progress)
