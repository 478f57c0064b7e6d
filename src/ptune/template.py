"""Templates: where virtual tokens, data fields, anchor text and the target sit in a model input.

Syntax: ``[P*n]`` a run of n virtual tokens (``[P]`` is one), ``{column name}`` a data field, ``[TARGET]`` (or its
alias ``[MASK]``) the target slot, anything else fixed anchor text. ``{{`` and ``}}`` are literal braces.

    "[P*3] {sub_label} [P*3] [TARGET]"
    "[P*20] Tweet text : {Tweet text} Label : [TARGET]"
    "{sentence} [P*2] It was [MASK] ."

No torch here: parsing and validation only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

from .errors import TemplateError


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Virtual:
    count: int


@dataclass(frozen=True)
class Target:
    pass


Segment = Union[Text, Field, Virtual, Target]

_TOKEN = re.compile(r"\{\{|\}\}|\[P(?:\*([0-9]+))?\]|\[(?:TARGET|MASK)\]|\{([^{}]*)\}|[{}]")
# one run of virtual tokens as written, its count (if any) in group 1
VIRTUAL_RUN = re.compile(r"\[P(?:\*([0-9]+))?\]")
MAX_VIRTUAL = 4096


@dataclass(frozen=True)
class Template:
    source: str
    segments: tuple[Segment, ...]

    @property
    def n_virtual(self) -> int:
        return sum(s.count for s in self.segments if isinstance(s, Virtual))

    @property
    def fields(self) -> list[str]:
        seen: list[str] = []
        for s in self.segments:
            if isinstance(s, Field) and s.name not in seen:
                seen.append(s.name)
        return seen

    @property
    def is_prefix(self) -> bool:
        """True when all virtual tokens come first (the only shape PEFT's prompt learning supports)."""
        seen_other = False
        for s in self.segments:
            if isinstance(s, Virtual):
                if seen_other:
                    return False
            elif not (isinstance(s, Text) and not s.text.strip()):
                seen_other = True
        return True

    def validate(self, *, kind: str | None = "causal", needs_virtual: bool = True, columns: Iterable[str] | None = None,
                 field_map: dict[str, str] | None = None, where: str = "template") -> None:
        """Refuse templates the run cannot use; the message says what is wrong and where."""
        if needs_virtual and self.n_virtual == 0:
            raise TemplateError(f"{where} {self.source!r} has no virtual tokens; add a run such as [P*4]")
        if kind == "causal":
            after = self.segments[self.segments.index(Target()) + 1:]
            if any(not (isinstance(s, Text) and not s.text.strip()) for s in after):
                raise TemplateError(
                    f"{where} {self.source!r}: the target must come last for a causal LM (found text after [TARGET])")
        if columns is not None:
            columns = list(columns)
            field_map = field_map or {}
            for name in self.fields:
                column = field_map.get(name, name)
                if column not in columns:
                    raise TemplateError(f"{where} {self.source!r} names field {{{name}}} but the data has no column "
                                        f"{column!r}; columns present: {', '.join(map(repr, columns))}")


def parse_template(source: str) -> Template:
    """Parse a template string (syntax in the module docstring); ``TemplateError`` says what is wrong and where.

    Args:
        source (`str`): e.g. ``"[P*4] Review : {review} Sentiment : [TARGET]"``.

    Returns:
        `Template`: its segments, with ``n_virtual``, ``fields`` and ``is_prefix``.

    Example:
        >>> t = parse_template("[P*4] Review : {review} Sentiment : [TARGET]")
        >>> t.n_virtual, t.fields, t.is_prefix
        (4, ['review'], True)
    """
    if not isinstance(source, str):
        raise TemplateError(f"template must be a string, got {type(source).__name__}")
    segments: list[Segment] = []
    text = []
    pos = 0

    def flush():
        if text:
            segments.append(Text("".join(text)))
            text.clear()

    for m in _TOKEN.finditer(source):
        text.append(source[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            text.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(f"template {source!r}: unbalanced {token!r} at character {m.start()} "
                                "(write {{ or }} for a literal brace)")
        elif token.startswith("[P"):
            # a 5000-digit count would make int() itself fail; anything that long is out of range anyway
            digits = (m.group(1) or "1").lstrip("0") or "0"
            count = int(digits) if len(digits) <= 6 else MAX_VIRTUAL + 1
            if not 1 <= count <= MAX_VIRTUAL:
                raise TemplateError(f"template {source!r}: {token} at character {m.start()} must hold 1 to "
                                    f"{MAX_VIRTUAL} virtual tokens")
            flush()
            segments.append(Virtual(count))
        elif token in ("[TARGET]", "[MASK]"):
            flush()
            if Target() in segments:
                raise TemplateError(f"template {source!r}: a second target {token} at character {m.start()}; "
                                    "a template has exactly one")
            segments.append(Target())
        else:
            name = m.group(2)
            if not name.strip():
                raise TemplateError(f"template {source!r}: empty field {{}} at character {m.start()}")
            flush()
            segments.append(Field(name.strip()))
    text.append(source[pos:])
    flush()
    if Target() not in segments:
        raise TemplateError(f"template {source!r} names no target; mark where the answer goes with [TARGET] "
                            "(or [MASK] for a masked LM)")
    return Template(source, tuple(s for s in segments if not (isinstance(s, Text) and s.text == "")))


def without_virtual(source: str) -> str:
    """The template ``source`` with its virtual runs taken out: the manual prompt it is built on, as the zero-shot
    baseline reads it. A run's surrounding spaces collapse to one, and none is left at the start.

    Args:
        source (`str`): a template, e.g. ``"[P*8] Tweet : {Tweet text} [P*8] Complaint ? [TARGET]"``.

    Returns:
        `str`: a template without virtual tokens (literal braces still escaped).

    Example:
        >>> without_virtual("[P*8] Tweet : {Tweet text} [P*8] Complaint ? [TARGET]")
        'Tweet : {Tweet text} Complaint ? [TARGET]'
    """
    pieces: list[str] = []
    after_run = True  # at the start, as after a run: no leading space
    for segment in parse_template(source).segments:
        if isinstance(segment, Virtual):
            after_run = True
            continue
        if isinstance(segment, Text):
            text = segment.text.replace("{", "{{").replace("}", "}}")
            if after_run and (not pieces or pieces[-1][-1:].isspace()):
                text = text.lstrip()
        else:
            text = "{" + segment.name + "}" if isinstance(segment, Field) else "[TARGET]"
        after_run = False
        pieces.append(text)
    return "".join(pieces)


def residual_form(manual: str, tokenizer) -> tuple[str, str]:
    """The manual prompt with its anchor text (between the last field and ``[TARGET]``) replaced by as many virtual
    tokens as the anchor has tokens, and the anchor text (with the space the template puts before it) they start at.

    Args:
        manual (`str`): a manual template ending ``{field} words [TARGET]``.
        tokenizer: the base model's tokenizer (counts the anchor's tokens).

    Returns:
        `tuple[str, str]`: (P-tuned template, ``encoder.init_text``).

    Example:
        >>> residual_form("Review : {sentence} Sentiment : [TARGET]", tok)  # doctest: +SKIP
        ('Review : {sentence} [P*3] [TARGET]', ' Sentiment :')
    """
    head, brace, tail = manual.rpartition("}")
    anchor = tail.removesuffix("[TARGET]").strip() if tail.rstrip().endswith("[TARGET]") else ""
    if not brace or not anchor or "[P" in anchor:
        raise TemplateError(f"manual template {manual!r}: the residual start needs anchor words between the last "
                            "{field} and a final [TARGET]")
    init_text = " " + anchor
    n = len(tokenizer.encode(init_text, add_special_tokens=False))
    return f"{head}}} [P*{n}] [TARGET]", init_text


def from_residual_form(template: str, init_text: str) -> str:
    """The manual prompt ``residual_form`` made ``template`` from: its one virtual run read as ``init_text`` again.

    Example:
        >>> from_residual_form("Review : {sentence} [P*3] [TARGET]", " Sentiment :")
        'Review : {sentence} Sentiment : [TARGET]'
    """
    runs = [s for s in parse_template(template).segments if isinstance(s, Virtual)]
    if len(runs) != 1:
        raise TemplateError(f"template {template!r}: a prompt started at its words has one virtual run, "
                            f"not {len(runs)}")
    words = init_text.strip().replace("{", "{{").replace("}", "}}")
    return VIRTUAL_RUN.sub(lambda m: words, template, count=1)
