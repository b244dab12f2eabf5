"""Values to strings exactly as Nix's `derivation` builtin coerces attributes."""

from __future__ import annotations

from collections.abc import Callable

from runner.spec.interpolate import Ref, parse_template
from runner.spec.yaml_loader import Node

Resolve = Callable[[Ref], str]


def scalar_to_string(value: object, resolve: Resolve) -> str:
    """true → "1", false/null → "", ints in decimal, floats as C's `%f`, strings interpolated."""
    if value is True:
        return "1"
    if value is False or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:f}"
    if isinstance(value, str):
        return interpolate(value, resolve)
    raise TypeError(f"not a scalar: {value!r}")  # the schema rules this out


def interpolate(text: str, resolve: Resolve) -> str:
    return "".join(p if isinstance(p, str) else resolve(p) for p in parse_template(text))


def to_string(node: Node, resolve: Resolve) -> str:
    """A scalar or a flat list (items space-joined), as Nix's coerceToString."""
    if isinstance(node.value, list):
        return " ".join(scalar_to_string(item.value, resolve) for item in node.value)
    return scalar_to_string(node.value, resolve)
