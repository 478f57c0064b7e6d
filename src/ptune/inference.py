"""Predictor: load a checkpoint once (base model checked, prompt table read, no encoder run), predict rows in
batches. Used by ``ptune eval``, ``ptune predict``, the server and the Python API. Ensemble: several checkpoints of
one classification task over one base, their label probabilities averaged (``ptune eval/predict DIR DIR ...``).
Rows come from a file, a list of dicts or a pandas DataFrame (duck-typed: pandas is not needed otherwise)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import Config, config_from_dict
from .data.labels import LabelSpace
from .data.tables import Table, cell_text, read_table
from .errors import CheckpointError, DataError, PtuneError
from .evaluator import evaluate
from .modeling.base import FrozenBase
from .modeling.ptuning import PTuningModel
from .session import Session, check_inputs, open_session, report_truncated
from .tasks.ensemble import ensemble_predictions


def is_dataframe(rows: Any) -> bool:
    """Whether ``rows`` is a pandas DataFrame (or anything that reads like one), without importing pandas."""
    return all(hasattr(rows, name) for name in ("columns", "to_dict", "notna", "assign"))


def python_cell_text(value: Any) -> str | None:
    """A value given in Python as the text a data file would hold: numpy scalars unwrapped and NaN missing (as a
    DataFrame marks a missing cell), then as the file readers make text (``data.tables.cell_text``)."""
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars from a DataFrame
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return cell_text(value)


def rows_table(rows: Any) -> Table:
    """Rows given in Python as a ``Table``: a list of dicts, or a DataFrame (its missing cells become None).

    Args:
        rows (`list[dict]` or `pandas.DataFrame`): one mapping (or DataFrame row) per input row.

    Returns:
        `Table`: the rows with text values; its columns are the DataFrame's, or every key in order of appearance.

    Example:
        >>> rows_table([{"text": "hi", "n": 3}]).rows
        [{'text': 'hi', 'n': '3'}]
    """
    if is_dataframe(rows):
        source, columns = "the given DataFrame", [str(c) for c in rows.columns]
        records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    elif isinstance(rows, (list, tuple)) and all(isinstance(r, dict) for r in rows):
        source, records = "the given rows", list(rows)
        columns = list(dict.fromkeys(str(k) for r in records for k in r))
    else:
        raise DataError(f"expected a list of dicts or a pandas DataFrame, got {type(rows).__name__}")
    return Table(source, columns, [{str(k): python_cell_text(v) for k, v in r.items()} for r in records])


@dataclass
class SavedCheckpoint:
    """A checkpoint directory read and checked, before anything is built from it: what ``Predictor.load`` starts
    from (and the server, which keeps only the prompt table of each of its many tasks).

    Args:
        folder (`Path`): the checkpoint directory.
        meta (`dict`): its manifest.
        cfg (`Config`): the config it was trained with (``model_override`` and ``device`` applied).
        labels (`LabelSpace` or None): its labels (classification).
        saved_base (`dict`): the identity of the base model it was trained on.
        encoder_state (`dict[str, torch.Tensor]`): the trained tensors by name (the encoder's, a linear head's).
        prompts (`torch.Tensor`): (n, d) the prompt table inference splices in.
        deep (`torch.Tensor`, *optional*): (n_deep, L*2*H*D) a deep prompt's keys and values (``modeling.deep``).

    Example:
        >>> saved = read_checkpoint("runs/complaints")
        >>> saved.prompts.shape
        torch.Size([8, 576])
    """
    folder: Path
    meta: dict
    cfg: Config
    labels: LabelSpace | None
    saved_base: dict
    encoder_state: dict[str, torch.Tensor]
    prompts: torch.Tensor
    deep: torch.Tensor | None = None

    def check_base(self, identity: dict) -> None:
        """Refuse a base model (``FrozenBase.identity``) other than the one this checkpoint was trained on."""
        checkpoint.check_identity(self.saved_base, identity, f"checkpoint {self.folder}")

    def label_offsets(self, names: list[str]) -> torch.Tensor | None:
        """(labels,) the fitted offsets of ``task.calibrate: prior`` in the order of ``names``; None without."""
        offsets = self.meta.get("label_offsets")
        if offsets is None:
            return None
        values = list(offsets.values()) if isinstance(offsets, dict) else []
        if (not isinstance(offsets, dict) or sorted(offsets) != sorted(names)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values)):
            raise CheckpointError(f"{self.folder / checkpoint.MANIFEST}: the manifest's label_offsets is invalid: it "
                                  f"must give a finite number for each label {names}")
        return torch.tensor([float(offsets[n]) for n in names])


def _saved_labels(saved, folder: Path) -> LabelSpace | None:
    """The manifest's ``labels`` (label -> its words, as ``LabelSpace.to_dict`` writes them), checked: a hand-edited
    value would otherwise fail only when a row is scored."""
    if not saved:
        return None
    if not isinstance(saved, dict) or not all(
            isinstance(words, list) and words and all(isinstance(w, str) and w.strip() for w in words)
            for words in saved.values()):
        raise CheckpointError(f"{folder / checkpoint.MANIFEST}: the manifest's labels is invalid: it must map each "
                              "label to a list of words")
    return LabelSpace(list(saved), list(saved.values()))


def read_checkpoint(folder: str | Path, *, model_override: str | None = None, device: str | None = None,
                    check_file=None, top_labels: int | None = None) -> SavedCheckpoint:
    """Read a checkpoint directory: its manifest and tensor files, every file verified.

    Args:
        folder (`str` or `Path`): the checkpoint directory.
        model_override (`str`, *optional*): the base model's path instead of the one recorded.
        device (`str`, *optional*): overrides the config's ``model.device``.
        check_file (`Callable[[Path], None]`, *optional*): called on each file before it is read; raises to refuse
            it (the server refuses files outside its tasks directory).
        top_labels (`int`, *optional*): overrides the config's ``task.top_labels`` (score only the best labels).

    Returns:
        `SavedCheckpoint`: the parts, nothing built yet.

    Example:
        >>> read_checkpoint("runs/complaints").cfg.task.type
        'classification'
    """
    folder = Path(folder)
    meta, encoder_state, prompts, deep = checkpoint.load_tables(folder, check_file)
    try:  # a hand-edited manifest: say which file is wrong rather than which config key
        cfg = config_from_dict(meta["config"])
        labels = _saved_labels(meta.get("labels"), folder)
        saved_base = dict(meta["base"])
    except (PtuneError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{folder / checkpoint.MANIFEST}: unusable manifest ({err})") from None
    if model_override:
        cfg = cfg.replace({"model.name_or_path": model_override, "model.gguf_file": None})
    if device:
        cfg = cfg.replace({"model.device": device})
    if top_labels is not None:
        cfg = cfg.replace({"task.top_labels": top_labels})
    return SavedCheckpoint(folder, meta, cfg, labels, saved_base, encoder_state, prompts, deep)


class RowPredictor:
    """What a Predictor and an Ensemble share: predicting and scoring rows given in Python or read from a file.
    Subclasses give ``sessions`` (a list of ``Session``), ``check``, ``predict_rows`` and ``evaluate_table``."""

    def predict(self, rows: Any, show_progress: bool = False) -> Any:
        """Predict rows given in Python.

        Args:
            rows (`list[dict]` or `pandas.DataFrame`): the template's data fields per row (labels not needed).
            show_progress (`bool`, defaults to False): show a progress bar.

        Returns:
            `list[dict]` (one ``{"prediction": ..., "scores": {label: log-probability}}`` per row; ``scores`` for
            classification only), or for a DataFrame a copy of it with ``prediction`` (and ``scores``) columns.

        Example:
            >>> predictor.predict([{"message": "My parcel never arrived."}])[0]["prediction"]  # doctest: +SKIP
            'complaint'
        """
        table = rows_table(rows)
        preds = []
        if table.rows:  # no rows, no columns to check
            self.checked(table, labelled=False)
            preds = self.predict_rows(table.rows, show_progress)
        if not is_dataframe(rows):
            return preds
        keys = list(dict.fromkeys(k for p in preds for k in p)) or ["prediction"]
        return rows.assign(**{k: [p.get(k) for p in preds] for k in keys})

    def evaluate(self, rows: Any, show_progress: bool = False) -> dict:
        """Score labelled rows given in Python.

        Args:
            rows (`list[dict]` or `pandas.DataFrame`): the template's data fields and the label column per row.
            show_progress (`bool`, defaults to False): show a progress bar.

        Returns:
            `dict`: the task's metrics (``accuracy``, ``macro_f1``, ``per_label``; ``p@1``; ``exact_match``) and,
            for a single model, the mean ``loss``.

        Example:
            >>> predictor.evaluate(pandas.read_csv("test.csv"))["accuracy"]  # doctest: +SKIP
            0.9
        """
        table = rows_table(rows)
        if not table.rows:
            raise DataError(f"{table.source}: no rows to evaluate")
        return self.evaluate_table(self.checked(table, labelled=True), show_progress)

    def predict_file(self, path: str | Path, fmt: str = "auto",
                     show_progress: bool = True) -> tuple[Table, list[dict]]:
        """Predict every row of a data file: ``(the rows read, one prediction per row)``."""
        table = self.checked(read_table(path, fmt), labelled=False)
        return table, self.predict_rows(table.rows, show_progress)

    def evaluate_file(self, path: str | Path, fmt: str = "auto", show_progress: bool = True) -> dict:
        """The metrics of a labelled data file (see ``evaluate``)."""
        return self.evaluate_table(self.checked(read_table(path, fmt), labelled=True), show_progress)

    def checked(self, table: Table, *, labelled: bool) -> Table:
        """``table`` after the column (and, if ``labelled``, label) checks; rows whose fields are cut to fit are
        reported on stderr."""
        self.check(table, labelled=labelled)
        for session in self.sessions:
            report_truncated(session, table)
        return table

    def check(self, table: Table, *, labelled: bool) -> None:
        raise NotImplementedError

    def predict_rows(self, rows: list[dict], show_progress: bool = False) -> list[dict]:
        raise NotImplementedError

    def evaluate_table(self, table: Table, show_progress: bool) -> dict:
        raise NotImplementedError


@dataclass
class Predictor(RowPredictor):
    """A trained checkpoint, loaded once, that predicts and scores rows.

    Args:
        session (`Session`): the base model, template and task the checkpoint was trained with.
        model (`PTuningModel`): the prompt encoder (its prompt table precomputed) over the frozen base.
        meta (`dict`): the checkpoint's manifest.

    Example:
        >>> predictor = Predictor.load("runs/complaints")  # or ptune.load("runs/complaints")
        >>> predictor.predict([{"message": "Where is my refund?"}])[0]["prediction"]
        'complaint'
    """
    session: Session
    model: PTuningModel
    meta: dict

    @classmethod
    def load(cls, folder: str | Path, *, base: FrozenBase | None = None, model_override: str | None = None,
             device: str | None = None, top_labels: int | None = None) -> "Predictor":
        """Load a checkpoint directory written by ``ptune train`` (or ``ptune.train``).

        Args:
            folder (`str` or `Path`): the checkpoint directory.
            base (`FrozenBase`, *optional*): an already loaded base model to share (its identity is checked).
            model_override (`str`, *optional*): load the base from this path instead of the one recorded (the
                same model moved elsewhere; its identity is still checked).
            device (`str`, *optional*): ``cpu``, ``cuda``, ``cuda:N``; else the checkpoint's ``model.device``.
            top_labels (`int`, *optional*): score only each row's best ``top_labels`` labels (``task.top_labels``),
                whatever the checkpoint says.

        Returns:
            `Predictor`: ready to predict.

        Example:
            >>> Predictor.load("runs/complaints", device="cpu").labels
            ['complaint', 'no complaint']
        """
        saved = read_checkpoint(folder, model_override=model_override, device=device, top_labels=top_labels)
        if base is not None:
            saved.check_base(base.identity)
        # a checkpoint may hold no virtual tokens: the linear probe, or a zero-shot prompt chosen by `ptune search`
        session = open_session(saved.cfg, labels=saved.labels, base=base, check_identity=saved.check_base,
                               allow_no_virtual=True)
        model = session.new_model()
        try:
            model.load_trainable_state(saved.encoder_state)
        except ValueError as err:
            raise CheckpointError(f"{saved.folder}: the encoder weights do not fit the manifest's config "
                                  f"({err})") from None
        model.set_prompt_table(saved.prompts)
        if saved.deep is not None:
            model.set_deep_table(saved.deep)
        offsets = saved.label_offsets(session.task.labels.labels if session.task.labels else [])
        if offsets is not None:  # task.calibrate: prior
            model.label_offsets = offsets
        model.eval()
        return cls(session, model, saved.meta)

    @property
    def name(self) -> str:
        return self.meta.get("name", "")

    @property
    def labels(self) -> list[str] | None:
        """The label values a classification checkpoint predicts (None for generation and probing)."""
        return list(self.session.task.labels.labels) if self.session.task.labels else None

    @property
    def sessions(self) -> list[Session]:
        return [self.session]

    def check(self, table: Table, *, labelled: bool) -> None:
        check_inputs(self.session.cfg, self.session.template, table, labelled=labelled, allow_no_virtual=True)
        if labelled:
            self.session.task.check(table)

    def predict_rows(self, rows: list[dict], show_progress: bool = False) -> list[dict]:
        """Predict rows of text values, unchecked (``predict`` checks them first)."""
        bar = tqdm(total=len(rows), desc="predict", disable=not show_progress, unit="row")
        out = self.session.predict(self.model, rows, progress=bar.update)
        bar.close()
        return out

    def evaluate_table(self, table: Table, show_progress: bool) -> dict:
        return evaluate(self.model, self.session, table, show_progress)


@dataclass
class Ensemble(RowPredictor):
    """Several checkpoints of one classification task (e.g. trained with different seeds) over one base model: each
    row's label probabilities are averaged over the members (``tasks.ensemble``). It costs one prediction
    pass per member.

    Args:
        members (`list[Predictor]`): the loaded checkpoints, sharing their labels (and, from ``load``, one base).

    Example:
        >>> ensemble = Ensemble.load(["runs/seed-1", "runs/seed-2", "runs/seed-3"])
        >>> ensemble.predict([{"message": "Where is my refund?"}])[0]["prediction"]
        'complaint'
    """
    members: list[Predictor]

    @classmethod
    def load(cls, folders: list[str | Path], *, device: str | None = None, top_labels: int | None = None
             ) -> "Ensemble":
        """Load several checkpoints over one copy of their base model.

        Args:
            folders (`list[str | Path]`): checkpoint directories; with more than one, every one a classification
                checkpoint with the same labels over the same base.
            device (`str`, *optional*): ``cpu``, ``cuda``, ``cuda:N``; else the first checkpoint's ``model.device``.
            top_labels (`int`, *optional*): each member scores only its best ``top_labels`` labels; the labels a
                member leaves out count as probability 0 for it.

        Returns:
            `Ensemble`: ready to predict.

        Example:
            >>> len(Ensemble.load(["runs/seed-1", "runs/seed-2"]).members)
            2
        """
        if not folders:
            raise PtuneError("give at least one checkpoint directory")
        first = Predictor.load(folders[0], device=device, top_labels=top_labels)
        members = [first] + [Predictor.load(f, base=first.session.base, device=device, top_labels=top_labels)
                             for f in folders[1:]]
        if len(members) > 1:
            for folder, member in zip(folders, members):
                kind, labels = member.session.cfg.task.type, member.session.task.labels
                if kind != "classification":
                    raise CheckpointError(f"{folder}: an ensemble averages label probabilities, so every member "
                                          f"must be a classification checkpoint, not {kind!r}")
                if labels.labels != first.session.task.labels.labels:
                    raise CheckpointError(f"{folder}: labels {labels.labels} differ from {folders[0]}'s "
                                          f"{first.session.task.labels.labels}; ensemble members must share them")
        return cls(members)

    @property
    def session(self) -> Session:
        return self.members[0].session

    @property
    def labels(self) -> list[str] | None:
        """The label values the ensemble predicts (the members share them)."""
        return self.members[0].labels

    @property
    def sessions(self) -> list[Session]:
        return [member.session for member in self.members]

    def check(self, table: Table, *, labelled: bool) -> None:
        for member in self.members:  # members may read different columns (different templates)
            member.check(table, labelled=labelled)

    def predict_rows(self, rows: list[dict], show_progress: bool = False) -> list[dict]:
        """Predict rows of text values, unchecked (``predict`` checks them first)."""
        if len(self.members) == 1:
            return self.members[0].predict_rows(rows, show_progress)
        bar = tqdm(total=len(rows) * len(self.members), desc="predict", disable=not show_progress, unit="row")
        member_predictions = [m.session.predict(m.model, rows, progress=bar.update) for m in self.members]
        bar.close()
        return ensemble_predictions(member_predictions, self.labels)

    def evaluate_table(self, table: Table, show_progress: bool) -> dict:
        if len(self.members) == 1:
            return self.members[0].evaluate_table(table, show_progress)
        return self.session.task.metrics(table.rows, self.predict_rows(table.rows, show_progress))
