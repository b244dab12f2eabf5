"""A quick "is this document certainly valid?" check against the spec JSON Schema.

Loading a spec checks it with `jsonschema`, whose import (~75 ms) and walk
(~0.12 ms per derivation) dominate `instantiate` of a valid spec. This module
interprets the few keywords the spec schema uses and answers True (valid),
False (invalid) or None (not sure: an edge case such as `1.0` for an integer,
or a keyword it does not know). Only True is trusted: anything else goes to
`jsonschema`, which finds and words the problems, so messages never depend on
this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Verdict = bool | None

# Keywords that never make a document invalid (annotations).
_ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "title", "description", "examples", "default",
    "deprecated", "readOnly", "writeOnly", "format", "$defs",
})
_TYPES: dict[str, Callable[[Any], Verdict]] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (None if v.is_integer() else False) if isinstance(v, float)
        else isinstance(v, int) and not isinstance(v, bool)
    ),
}
_SCALARS = (str, int, float, bool, type(None))


def _all(verdicts: list[Verdict]) -> Verdict:
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _equal(value: Any, expected: Any) -> Verdict:
    """jsonschema's `equal` where it is plain; None where it is subtle (1 == 1.0)."""
    if not isinstance(expected, _SCALARS) or not isinstance(value, _SCALARS):
        return None if isinstance(value, list | dict) == isinstance(expected, list | dict) \
            else False
    if type(value) is type(expected):
        return bool(value == expected)
    numbers = (int, float)
    if type(value) in numbers and type(expected) in numbers:
        return None
    return False  # str vs number, bool vs int, None vs anything: never equal


class QuickChecker:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self.patterns: dict[str, re.Pattern[str]] = {}

    def valid(self, value: Any) -> bool:
        return self.check(self.root, value) is True

    def check(self, schema: Any, value: Any) -> Verdict:
        if schema is True:
            return True
        if schema is False:
            return False
        if not isinstance(schema, dict):
            return None
        verdicts: list[Verdict] = []
        for key, arg in schema.items():
            if key in _ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "type":
                names = arg if isinstance(arg, list) else [arg]
                found = [_TYPES[n](value) if n in _TYPES else None for n in names]
                verdict: Verdict = True if True in found else (None if None in found else False)
            elif key == "$ref":
                target = self._ref(arg)
                verdict = None if target is None else self.check(target, value)
            elif key == "const":
                verdict = _equal(value, arg)
            elif key == "enum":
                found = [_equal(value, each) for each in arg]
                verdict = True if True in found else (None if None in found else False)
            elif key == "anyOf":
                found = [self.check(sub, value) for sub in arg]
                verdict = True if True in found else (None if None in found else False)
            elif key == "oneOf":
                found = [self.check(sub, value) for sub in arg]
                verdict = None if None in found else found.count(True) == 1
            elif key in ("minLength", "maxLength", "pattern"):
                verdict = self._string(key, arg, value)
            elif key in ("items", "minItems", "uniqueItems"):
                verdict = self._array(key, arg, value)
            elif key in ("properties", "additionalProperties", "required", "propertyNames"):
                verdict = self._object(key, arg, value, schema)
            elif key == "minimum":
                verdict = (
                    True if not isinstance(value, int | float) or isinstance(value, bool)
                    else bool(value >= arg)
                )
            else:
                return None  # a keyword this module does not know
            if verdict is False:
                return False
            verdicts.append(verdict)
        return _all(verdicts)

    def _ref(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            return None
        return self.root.get("$defs", {}).get(ref[len("#/$defs/"):])

    def _string(self, key: str, arg: Any, value: Any) -> Verdict:
        if not isinstance(value, str):
            return True
        if key == "minLength":
            return bool(len(value) >= arg)
        if key == "maxLength":
            return bool(len(value) <= arg)
        pattern = self.patterns.get(arg)
        if pattern is None:
            pattern = self.patterns[arg] = re.compile(arg)
        return pattern.search(value) is not None

    def _array(self, key: str, arg: Any, value: Any) -> Verdict:
        if not isinstance(value, list):
            return True
        if key == "minItems":
            return bool(len(value) >= arg)
        if key == "uniqueItems":
            if not arg:
                return True
            if not all(isinstance(item, str) for item in value):
                return None
            return len(set(value)) == len(value)
        return _all([self.check(arg, item) for item in value])

    def _object(self, key: str, arg: Any, value: Any, schema: Mapping[str, Any]) -> Verdict:
        if not isinstance(value, dict):
            return True
        if key == "required":
            return all(name in value for name in arg)
        if key == "propertyNames":
            return _all([self.check(arg, name) for name in value])
        if key == "properties":
            return _all([self.check(sub, value[name]) for name, sub in arg.items()
                         if name in value])
        if "patternProperties" in schema:
            return None
        known = schema.get("properties", {})
        return _all([self.check(arg, item) for name, item in value.items()
                     if name not in known])
