"""YAML → a tree of `Node`s that remember where they came from.

We compose with libyaml when available (fast), then walk the composed graph
ourselves so that every value keeps its `file:line:col`, duplicate keys are
refused, and aliases are counted instead of expanded without limit.
Scalars follow YAML 1.2's core schema: only `true`/`false` are booleans, so
`country: NO` stays a string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from runner.errors import SpecError
from runner.reasons import Reason

# Nodes reached again through aliases: far more than any real spec needs, far
# less than what an "alias bomb" would expand to (we stop counting there).
ALIAS_BUDGET = 10_000
# Specs are shallow; refusing deep nesting keeps the recursive walk safe.
MAX_DEPTH = 64
TOO_DEEP = Reason.SPEC_TOO_DEEP  # the reason of the SpecError for MAX_DEPTH

Scalar = str | int | float | bool | None
Value = Union[Scalar, "dict[str, Node]", "list[Node]"]


@dataclass(frozen=True)
class Pos:
    """A 1-based position in a spec file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Node:
    """A YAML value with its position; mappings also remember each key's position."""

    value: Value
    pos: Pos
    key_pos: dict[str, Pos] = field(default_factory=dict)
    # The text a string scalar holding `${{` was written as (quotes, indentation and all),
    # so that an error can point at one reference inside it: see `locate`.
    source: str | None = None

    def locate(self, needle: str, nth: int = 0) -> Pos:
        """Where the `nth` occurrence of `needle`, a piece of this string's value, was
        written; the value's own position when it was not written verbatim (an escape
        or a line fold inside it)."""
        if self.source is None:
            return self.pos
        at = -1
        for _ in range(nth + 1):
            at = self.source.find(needle, at + 1)
            if at < 0:
                return self.pos
        breaks = list(_line_breaks(self.source[:at]))
        if not breaks:
            return Pos(self.pos.file, self.pos.line, self.pos.col + at)
        return Pos(self.pos.file, self.pos.line + len(breaks), at - breaks[-1] + 1)

    def plain(self) -> object:
        """The value as plain Python data (for JSON Schema validation)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def at(self, *path: str | int) -> Node | None:
        """The node at `path` below this one, or None when it is not there."""
        node: Node | None = self
        for step in path:
            if node is None:
                return None
            if isinstance(step, str) and isinstance(node.value, dict):
                node = node.value.get(step)
            elif isinstance(step, int) and isinstance(node.value, list):
                node = node.value[step] if 0 <= step < len(node.value) else None
            else:
                return None
        return node


_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # YAML's line breaks


def _line_breaks(text: str) -> Iterator[int]:
    """The offset just past each line break in `text`."""
    return (m.end() for m in _BREAK.finditer(text))


_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CoreLoader(_BaseLoader):  # type: ignore[misc]
    """Composer with YAML 1.2 core-schema scalar resolution."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}


_CORE_RESOLVERS: list[tuple[str, str, str]] = [
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_NULL, r"^(?:~|null|Null|NULL|)$", "~nN"),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        _FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    (_MERGE, r"^<<$", "<"),
]
for _tag, _regexp, _first in _CORE_RESOLVERS:
    _CoreLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))
_CoreLoader.add_implicit_resolver(_NULL, re.compile(r"^$"), [""])


def _pos(file: str, node: yaml.Node) -> Pos:
    return Pos(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _scalar(tag: str, text: str) -> Scalar:
    if tag == _BOOL:
        return text.lower() == "true"
    if tag == _NULL:
        return None
    if tag == _INT:
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)
    if tag == _FLOAT:
        return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf"))
    return text


class _Walker:
    """Turns composed yaml nodes into `Node`s, collecting problems as it goes."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.problems: list[str] = []
        self.seen: set[int] = set()
        self.aliases = 0
        self.active: set[int] = set()
        self.depth = 0

    def problem(self, pos: Pos, message: str) -> None:
        self.problems.append(f"{pos}: {message}")

    def walk(self, node: yaml.Node) -> Node:
        pos = _pos(self.file, node)
        if id(node) in self.seen:
            # Seen before: reached through an alias.
            self.aliases += 1
            if self.aliases > ALIAS_BUDGET:
                raise _TooManyAliases(pos)
            if id(node) in self.active:
                self.problem(pos, "an alias refers to a value that contains it (recursive alias)")
                return Node(None, pos)
        self.seen.add(id(node))
        self.active.add(id(node))
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeep(pos)
        try:
            return self._walk(node, pos)
        finally:
            self.depth -= 1
            self.active.discard(id(node))

    def _walk(self, node: yaml.Node, pos: Pos) -> Node:
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
                self.problem(pos, f"unsupported YAML tag '{node.tag}'")
                return Node(None, pos)
            try:
                value = _scalar(node.tag, node.value)
            except ValueError:
                self.problem(pos, f"'{node.value}' is not a valid {node.tag.rsplit(':', 1)[-1]}")
                return Node(None, pos)
            if isinstance(value, float) and not math.isfinite(value):
                self.problem(pos, f"'{node.value}' is not a finite number; quote it for a string")
                return Node(None, pos)
            if isinstance(value, str) and "\0" in value:
                # An escaped "\0": no argument, environment value or file name can hold it.
                self.problem(pos, "the value contains a NUL character (\\0)")
                return Node(None, pos)
            if isinstance(value, str) and "${{" in value:
                source = self.text[node.start_mark.index : node.end_mark.index]
                return Node(value, pos, source=source)
            return Node(value, pos)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self.problem(pos, f"unsupported YAML tag '{node.tag}'")
            return Node([self.walk(item) for item in node.value], pos)
        if node.tag != _MAP:
            self.problem(pos, f"unsupported YAML tag '{node.tag}'")
        return self._mapping(node, pos)

    def _mapping(self, node: yaml.Node, pos: Pos) -> Node:
        result = Node({}, pos)
        merged: list[Node] = []
        for key_node, value_node in node.value:
            key_pos = _pos(self.file, key_node)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                merged.extend(self._merge_sources(self.walk(value_node)))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_pos, "a mapping key must be a plain string")
                continue
            key = str(key_node.value)
            assert isinstance(result.value, dict)
            if key in result.value:
                first = result.key_pos[key]
                self.problem(key_pos, f"duplicate key '{key}' (first defined at line {first.line})")
                continue
            aliased = id(value_node) in self.seen
            value = self.walk(value_node)
            if aliased or _block_below(key_node, value_node):
                # A block collection on the lines below its key has no token of its own
                # (its first token is its first child's); an alias's own position is
                # lost in composing. Point at the key that introduces the value.
                value.pos = key_pos
                value.source = None  # its text is the anchor's, elsewhere in the file
            result.value[key] = value
            result.key_pos[key] = key_pos
        # `<<: *base` fills in keys the mapping does not set itself.
        for source in merged:
            assert isinstance(source.value, dict) and isinstance(result.value, dict)
            for key, value in source.value.items():
                if key not in result.value:
                    result.value[key] = value
                    result.key_pos[key] = source.key_pos.get(key, source.pos)
        return result

    def _merge_sources(self, value: Node) -> list[Node]:
        items = value.value if isinstance(value.value, list) else [value]
        good = [item for item in items if isinstance(item.value, dict)]
        if len(good) != len(items):
            self.problem(value.pos, "'<<' must merge a mapping or a list of mappings")
        return good


def _block_below(key: yaml.Node, value: yaml.Node) -> bool:
    return (isinstance(value, (yaml.MappingNode, yaml.SequenceNode)) and not value.flow_style
            and value.start_mark.line > key.start_mark.line)


class _TooManyAliases(Exception):
    def __init__(self, pos: Pos) -> None:
        super().__init__(str(pos))
        self.pos = pos


class _TooDeep(_TooManyAliases):
    pass


def _decode(data: bytes, file: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise SpecError(
            [f"{file}:{line}:{col}: the file is not valid UTF-8 (byte 0x{data[err.start]:02x})"]
        ) from None
    return text.removeprefix("\ufeff")


def parse_yaml(text: str, file: str) -> Node:
    """Parse one YAML document from `text`; raises `SpecError` with every problem found."""
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise SpecError([f"{file}:1:1: the file is empty; a spec needs at least 'version: 1'"])
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise SpecError([f"{file}:{line}:1: the file contains a NUL character"])
    loader = _CoreLoader(text)
    try:
        _check_depth(text, file)  # before composing: libyaml's composer recurses in C
        composed = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        if "nesting depth" in str(err.problem):
            # libyaml (>= 0.2.6) has a nesting limit of its own and scans ahead, so it can
            # refuse before our check sees level 65; find that level with the pure parser.
            _check_depth(text, file, yaml.SafeLoader)
        raise SpecError([_yaml_error(err, file)]) from None
    except yaml.YAMLError as err:
        raise SpecError([f"{file}:1:1: invalid YAML: {err}"]) from None
    finally:
        loader.dispose()
    if composed is None:
        raise SpecError([f"{file}:1:1: the file is empty; a spec needs at least 'version: 1'"])
    walker = _Walker(file, text)
    try:
        root = walker.walk(composed)
    except _TooDeep as err:
        raise SpecError([_too_deep(err.pos)], reason=TOO_DEEP) from None
    except _TooManyAliases as err:
        raise SpecError(
            [f"{err.pos}: YAML aliases here expand to too many values (more than "
             f"{ALIAS_BUDGET}); refusing to expand them"]
        ) from None
    if walker.problems:
        raise SpecError(walker.problems)
    return root


def _too_deep(pos: Pos) -> str:
    return f"{pos}: values are nested more than {MAX_DEPTH} levels deep"


def _check_depth(text: str, file: str, loader: type = _CoreLoader) -> None:
    """Refuse deep nesting using the parser's flat event stream."""
    events = loader(text)
    depth = 0
    try:
        while events.check_event():
            event = events.get_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                    raise SpecError([_too_deep(Pos(file, line, col))], reason=TOO_DEEP)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    finally:
        events.dispose()


# Contexts of a token left open: the parser notices only on a later line (often at the end
# of the file), so the error points where the token starts, and says where it gave up.
_UNCLOSED = {
    "while scanning a quoted scalar": "the quoted string that starts here is not closed",
    "while parsing a flow sequence": "the '[' list that starts here is not closed",
    "while parsing a flow mapping": "the '{' mapping that starts here is not closed",
}


def _yaml_error(err: yaml.MarkedYAMLError, file: str) -> str:
    opened, gave_up = err.context_mark, err.problem_mark
    if (err.context in _UNCLOSED and opened is not None and gave_up is not None
            and gave_up.line > opened.line):
        return (f"{file}:{opened.line + 1}:{opened.column + 1}: invalid YAML: "
                f"{_UNCLOSED[err.context]} ({err.problem} at line {gave_up.line + 1}, "
                f"column {gave_up.column + 1})")
    mark = err.problem_mark or err.context_mark
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else f"{file}:1:1"
    what = err.problem or err.context or "invalid YAML"
    context = f" ({err.context})" if err.context and err.problem else ""
    return f"{where}: invalid YAML: {what}{context}"


def load_yaml(path: Path, display: str | None = None,
              on_read: Callable[[bytes], object] | None = None) -> Node:
    """Read and parse the spec file at `path`; positions name it as `display`.
    `on_read` sees the bytes parsed (the eval cache hashes exactly those)."""
    file = display if display is not None else str(path)
    try:
        data = path.read_bytes()
        if on_read is not None:
            on_read(data)
    except FileNotFoundError:
        raise SpecError([f"{file}:1:1: no such file"]) from None
    except IsADirectoryError:
        raise SpecError([f"{file}:1:1: is a directory, not a spec file"]) from None
    except OSError as err:
        raise SpecError([f"{file}:1:1: cannot read: {err.strerror}"]) from None
    return parse_yaml(_decode(data, file), file)
