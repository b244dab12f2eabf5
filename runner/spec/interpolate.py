"""`${{ NAME }}` / `${{ NAME.OUTPUT }}` references inside spec strings.

`$${{` is a literal `${{`; shell `$out` and `${out}` are plain text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_REF = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_+-]*)(?:\.([A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*))?")

# `${{ name }}` / `${{ name.output }}` as a whole. Names have no `}`, so the first
# `}}` after `${{` ends it, as in the general case below, which also reports errors.
_WELL_FORMED = re.compile(r"\$\{\{\s*" + _REF.pattern + r"\s*\}\}")


@dataclass(frozen=True)
class Ref:
    """A reference to input or derivation `name` (and one of its outputs)."""

    name: str
    output: str | None = None

    def __str__(self) -> str:
        return self.name if self.output is None else f"{self.name}.{self.output}"


Part = str | Ref


class TemplateError(ValueError):
    """A malformed `${{ … }}`; the message is meant for the user. `offset` is where the
    offending `${{` starts in the text (to point at it)."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


def parse_template(text: str) -> list[Part]:
    """Split `text` into literal strings and `Ref`s."""
    return list(_parse(text))


@functools.lru_cache(maxsize=65536)
def _ref(name: str, output: str | None) -> Ref:
    """One `Ref` per distinct reference (a dense spec names each dependency 100 times)."""
    return Ref(name, output)


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> tuple[Part, ...]:
    """Memoised: a spec repeats the same strings (defaults, `${{ dep }}` lists) per entry."""
    if "${{" not in text:
        return (text,) if text else ()
    return tuple(part for part, _start, _end in _scan(text))


def ref_spans(text: str) -> list[tuple[Ref, int, int]]:
    """Each reference in `text` with its `[start, end)` offsets (to point at it in an
    error); raises `TemplateError` when malformed."""
    return [(p, start, end) for p, start, end in _scan(text) if isinstance(p, Ref)]


def _scan(text: str) -> list[tuple[Part, int, int]]:
    """`text` as literal strings and `Ref`s, each with its offsets (a literal's are those
    of its last piece: only references' offsets are used)."""
    parts: list[tuple[Part, int, int]] = []
    literal: list[str] = []
    i = 0
    while (j := text.find("${{", i)) >= 0:
        if j > i and text[j - 1] == "$":  # `$${{` is a literal `${{`
            literal.append(text[i : j - 1])
            literal.append("${{")
            i = j + 3
            continue
        literal.append(text[i:j])
        if (m := _WELL_FORMED.match(text, j)) is not None:  # what the general case finds
            if text_ := "".join(literal):
                parts.append((text_, i, j))
            literal = []
            parts.append((_ref(*m.group(1, 2)), j, m.end()))
            i = m.end()
            continue
        end = text.find("}}", j + 3)
        if end < 0:
            raise TemplateError("'${{' is not closed with '}}' (write '$${{' for a literal)", j)
        inner = text[j + 3 : end].strip()
        match = _REF.fullmatch(inner)
        if not match:
            what = f"'{inner}'" if inner else "an empty reference"
            raise TemplateError(
                f"{what} inside '${{{{ … }}}}' is not a name or name.output", j
            )
        if text_ := "".join(literal):
            parts.append((text_, i, j))
        literal = []
        parts.append((_ref(*match.group(1, 2)), j, end + 2))
        i = end + 2
    literal.append(text[i:])
    if text_ := "".join(literal):
        parts.append((text_, i, len(text)))
    return parts


def references(text: str) -> list[Ref]:
    """The references in `text` (raises `TemplateError` when malformed)."""
    return [p for p in parse_template(text) if isinstance(p, Ref)]
