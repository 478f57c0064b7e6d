"""The label space of a classification task: data values and the words (verbalizer) the model scores for each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DataError


def words_from_name(name: str) -> str:
    """The label word spoken for a label ``name`` when the config gives no verbalizer: underscores and hyphens become
    spaces (a model reads ``card arrival`` as words, ``card_arrival`` as pieces of an identifier), runs of spaces
    become one, and the ends are trimmed. A name with nothing else left is its own word.

    Args:
        name (`str`): the label as it appears in the data.

    Returns:
        `str`: the word.

    Example:
        >>> words_from_name("card_payment_not_recognised")
        'card payment not recognised'
    """
    return " ".join(re.sub(r"[_-]", " ", name).split()) or name


@dataclass
class LabelSpace:
    labels: list[str]
    """Label values as they appear in the data, in a fixed order."""
    words: list[list[str]]
    """For each label, one or more alternative words (each may be several tokens)."""

    @classmethod
    def build(cls, verbalizer: dict, values: list[str] | None = None) -> "LabelSpace":
        """The labels and their words: the ``verbalizer``'s (label -> word or list of words) as written, or, when it
        is empty, the distinct ``values`` sorted, each spoken as ``words_from_name`` of it.

        Example:
            >>> LabelSpace.build({}, ["card_arrival", "age_limit"]).to_dict()
            {'age_limit': ['age limit'], 'card_arrival': ['card arrival']}
        """
        if verbalizer:
            labels = [str(k) for k in verbalizer]
            words = [[str(w) for w in v] if isinstance(v, list) else [str(v)] for v in verbalizer.values()]
            if any(not w or any(not x.strip() for x in w) for w in words):
                raise DataError("task.verbalizer: every label needs at least one non-empty word")
        else:
            if not values:
                raise DataError("task.verbalizer is empty and there are no training labels to take words from")
            labels = sorted(set(values))
            spoken = [words_from_name(v) for v in labels]
            # names that would speak alike (a_b, a-b) keep their own values: alike words tie on every row
            words = [[w if spoken.count(w) == 1 else v] for v, w in zip(labels, spoken)]
        return cls(labels, words)

    def index(self, value: str, where: str = "") -> int:
        try:
            return self.labels.index(value)
        except ValueError:
            raise DataError(f"{where}label {value!r} is not in the verbalizer; known labels: "
                            f"{', '.join(map(repr, self.labels))}") from None

    def to_dict(self) -> dict:
        return {label: words for label, words in zip(self.labels, self.words)}
