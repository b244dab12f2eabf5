"""`${{ NAME }}` / `${{ NAME.OUTPUT }}` references inside spec strings.

`$${{` is a literal `${{`; shell `$out` and `${out}` are plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REF = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_+-]*)(?:\.([A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*))?")


@dataclass(frozen=True)
class Ref:
    """A reference to input or derivation `name` (and one of its outputs)."""

    name: str
    output: str | None = None

    def __str__(self) -> str:
        return self.name if self.output is None else f"{self.name}.{self.output}"


Part = str | Ref


class TemplateError(ValueError):
    """A malformed `${{ … }}`; the message is meant for the user."""


def parse_template(text: str) -> list[Part]:
    """Split `text` into literal strings and `Ref`s."""
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${{", i):
            literal.append("${{")
            i += 4
        elif text.startswith("${{", i):
            end = text.find("}}", i + 3)
            if end < 0:
                raise TemplateError("'${{' is not closed with '}}' (write '$${{' for a literal)")
            inner = text[i + 3 : end].strip()
            match = _REF.fullmatch(inner)
            if not match:
                what = f"'{inner}'" if inner else "an empty reference"
                raise TemplateError(
                    f"{what} inside '${{{{ … }}}}' is not a name or name.output"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Ref(match.group(1), match.group(2)))
            i = end + 2
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def references(text: str) -> list[Ref]:
    """The references in `text` (raises `TemplateError` when malformed)."""
    return [p for p in parse_template(text) if isinstance(p, Ref)]
