"""Validate a spec document against `schemas/spec.schema.json` with friendly, positioned messages.

The JSON Schema is the single source of truth for which keys exist and what
types they take; this module only turns jsonschema's errors into
`FILE:LINE:COL: message` lines a user understands.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from runner.spec import compiled_schema
from runner.spec.hints import did_you_mean
from runner.spec.yaml_loader import Node, Pos

if TYPE_CHECKING:
    import jsonschema

Path = Sequence[str | int]

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
    "array": "a list",
    "object": "a mapping",
}

_NAME_RULE = "use letters, digits, '_', '-' and '+' ('.' is reserved for ${{ name.output }})"
_STORE_NAME_RULE = "use letters, digits and '+-._?=', not starting with '.'"


@functools.cache
def spec_schema() -> dict[str, Any]:
    """The spec JSON Schema (draft 2020-12)."""
    text = resources.files("runner").joinpath("schemas/spec.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def nix_attributes() -> dict[str, str]:
    """Derivation key → Nix attribute name (`output-hash` → `outputHash`), from the schema."""
    props = spec_schema()["$defs"]["derivation"]["properties"]
    return {key: prop["x-nix"] for key, prop in props.items() if "x-nix" in prop}


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema  # ~75 ms: only for documents the compiled check rejects

    return jsonschema.Draft202012Validator(spec_schema())


def schema_problems(root: Node) -> list[tuple[Pos, str]]:
    """Every schema problem of one spec file, with its position."""
    plain = root.plain()
    if compiled_schema.is_valid(plain):  # jsonschema would find nothing: skip its cost
        return []
    found: list[tuple[Pos, str]] = []
    for error in _validator().iter_errors(plain):
        found.extend(_explain(root, error))
    return found


def validate_document(root: Node) -> list[str]:
    """Every schema problem of one spec file, as sorted `FILE:LINE:COL: message` lines."""
    found = sorted(schema_problems(root), key=lambda item: (item[0].line, item[0].col))
    return list(dict.fromkeys(f"{pos}: {message}" for pos, message in found))


def describe(path: Path) -> str:
    """Words for a location in a spec: `'args' of derivation 'hello'`."""
    steps = list(path)
    owner = ""
    if len(steps) >= 2 and steps[0] in ("derivations", "inputs"):
        owner = f"{str(steps[0])[:-1]} '{steps[1]}'"
        steps = steps[2:]
    elif len(steps) >= 2 and steps[0] == "substituters" and isinstance(steps[1], int):
        owner = f"substituter #{steps[1] + 1}"
        steps = steps[2:]
    elif steps and steps[0] == "defaults":
        owner = "defaults"
        steps = steps[1:]
    words = ""
    if steps:
        keys = [s for s in steps if isinstance(s, str)]
        last_key = keys[-1] if keys else ""
        if len(keys) >= 2 and keys[-2] == "env":
            words = f"env '{last_key}'"
        elif last_key:
            words = f"'{last_key}'"
        if isinstance(steps[-1], int):
            words = f"item {steps[-1] + 1} of {words}" if words else f"item {steps[-1] + 1}"
    if words and owner:
        return f"{words} of {owner}"
    return words or owner or "the spec"


def _node_pos(root: Node, path: Path) -> Pos:
    node: Node = root
    for step in path:
        child = node.at(step)
        if child is None:
            break
        node = child
    return node.pos


def _key_pos(root: Node, path: Path, key: str) -> Pos:
    node = root.at(*path)
    if node is not None and key in node.key_pos:
        return node.key_pos[key]
    return _node_pos(root, path)


def _type_words(expected: object) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)  # type: ignore[call-overload]
    if set(names) >= {"string", "integer", "number", "boolean", "null"}:
        return "a string, number, boolean or null"
    words = [_TYPE_WORDS.get(str(n), str(n)) for n in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _explain(root: Node, error: jsonschema.ValidationError) -> Iterator[tuple[Pos, str]]:
    path = list(error.absolute_path)
    where = describe(path)
    kind = str(error.validator)
    value: Any = error.instance
    expected: Any = error.validator_value
    schema: Any = error.schema
    if "propertyNames" in error.schema_path:
        yield _key_pos(root, path, str(value)), _bad_key_name(path, str(value))
    elif kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                owner = describe(path)
                hint = did_you_mean(key, allowed)
                yield _key_pos(root, path, key), f"unknown key '{key}' in {owner}{hint}"
    elif kind == "required":
        for key in expected:
            if isinstance(value, dict) and key not in value:
                yield _node_pos(root, path), f"{where} is missing the required key '{key}'"
    elif kind == "type":
        words = _type_words(expected)
        yield _node_pos(root, path), f"{where} must be {words}, not {_kind(value)}"
    elif kind == "const" and path == ["version"]:
        yield _node_pos(root, path), (
            f"unsupported spec version {json.dumps(value)} (this runner reads version 1)"
        )
    elif kind == "enum":
        choices = ", ".join(f"'{c}'" for c in expected)
        hint = did_you_mean(str(value), [str(c) for c in expected])
        yield _node_pos(root, path), f"{where} must be one of {choices}, not '{value}'{hint}"
    elif kind == "pattern":
        yield _node_pos(root, path), _bad_pattern(path, where, str(value))
    elif kind in ("anyOf", "oneOf"):
        yield from _explain_choice(root, error, where)
    else:
        yield _node_pos(root, path), _simple(kind, where, error)


def _explain_choice(
    root: Node, error: jsonschema.ValidationError, where: str
) -> Iterator[tuple[Pos, str]]:
    schema: Any = error.schema
    custom = schema.get("x-message") if isinstance(schema, dict) else None
    path = list(error.absolute_path)
    if custom:
        yield _node_pos(root, path), f"{where}: {custom}"
        return
    # Explain the branch whose type matched: its errors are the specific ones.
    specific = [
        e for e in error.context or [] if e.validator != "type" or len(e.absolute_path) > len(path)
    ]
    if specific:
        for sub in specific:
            yield from _explain(root, sub)
        return
    options = []
    for sub in error.context or []:
        if sub.validator == "type":
            options.append(_type_words(sub.validator_value))
    scalar = _type_words(["string", "integer", "number", "boolean", "null"])
    if options == [scalar, "a list"]:
        options = [f"{scalar[:-len(' or null')]}, null or a list of them"]
    expected = " or ".join(options) if options else "something else"
    yield _node_pos(root, path), f"{where} must be {expected}, not {_kind(error.instance)}"


def _bad_key_name(path: Path, key: str) -> str:
    section = path[-1] if path else ""
    if section == "env":
        return f"env key '{key}' must not be empty or contain '=' or NUL"
    what = "derivation" if section == "derivations" else "input"
    return f"'{key}' is not a valid {what} name: {_NAME_RULE}"


def _bad_pattern(path: Path, where: str, value: str) -> str:
    field = next((s for s in reversed(path) if isinstance(s, str)), "")
    if field in ("name", "outputs"):
        what = "output name" if field == "outputs" else "store name"
        return f"'{value}' is not a valid {what} ({where}): {_STORE_NAME_RULE}"
    if field == "url":
        return f"{where} must start with file://, http:// or https://, not '{value}'"
    if field == "impure-env-vars":
        return f"'{value}' in {where} is not an environment variable name"
    if field == "trusted-public-keys":
        return f"'{value}' in {where} is not a public key of the form name:base64"
    return f"'{value}' is not allowed as {where}"


def _simple(kind: str, where: str, error: jsonschema.ValidationError) -> str:
    limit: Any = error.validator_value
    if kind == "uniqueItems":
        return f"{where} lists the same value twice"
    if kind == "minItems":
        return f"{where} must have at least {limit} item{'s' if limit != 1 else ''}"
    if kind == "minLength":
        return f"{where} must not be empty"
    if kind == "maxLength":
        return f"{where} is longer than {limit} characters"
    if kind == "minimum":
        return f"{where} must be at least {limit}"
    return f"{where}: {error.message}"
