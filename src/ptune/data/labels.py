"""The label space of a classification task: data values and the words (verbalizer) the model scores for each."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError


@dataclass
class LabelSpace:
    labels: list[str]
    """Label values as they appear in the data, in a fixed order."""
    words: list[list[str]]
    """For each label, one or more alternative words (each may be several tokens)."""

    @classmethod
    def build(cls, verbalizer: dict, values: list[str] | None = None) -> "LabelSpace":
        if verbalizer:
            labels = [str(k) for k in verbalizer]
            words = [[str(w) for w in v] if isinstance(v, list) else [str(v)] for v in verbalizer.values()]
            if any(not w or any(not x.strip() for x in w) for w in words):
                raise DataError("task.verbalizer: every label needs at least one non-empty word")
        else:
            if not values:
                raise DataError("task.verbalizer is empty and there are no training labels to take words from")
            labels = sorted(set(values))
            words = [[v] for v in labels]
        return cls(labels, words)

    def index(self, value: str, where: str = "") -> int:
        try:
            return self.labels.index(value)
        except ValueError:
            raise DataError(f"{where}label {value!r} is not in the verbalizer; known labels: "
                            f"{', '.join(map(repr, self.labels))}") from None

    def to_dict(self) -> dict:
        return {label: words for label, words in zip(self.labels, self.words)}
