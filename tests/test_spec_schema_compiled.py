"""The compiled spec schema (fastjsonschema): up to date with the schema, and of one mind
with jsonschema (which words the errors) on what is valid."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

from runner.errors import SpecError
from runner.spec import compiled_schema
from runner.spec.validate import _validator, schema_problems, spec_schema
from runner.spec.yaml_loader import load_yaml, parse_yaml

ROOT = Path(__file__).parent.parent
SPECS = sorted([*(ROOT / "specs").glob("*.yaml"), *(ROOT / "tests/specs_good").glob("*.yaml"),
                *(ROOT / "tests/specs_bad").glob("*.yaml")])
# Values that sit on the schema's edges: 1.0 is an integer and true is not; 1 and true
# are different items; empty strings, `=` in names, unknown enum words.
VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 2.5, -0.0, "", "x", "out", "a=b", "a b",
                     [], ["a", "a"], ["a"], [1], [True], [1, True], [1, 1.0], ["x", 1], {},
                     {"a": 1}, {"=": 1}, {"": "x"}, "flat", "recursive", "sha256", "md5x",
                     3600, "file:///c", "http://x", "ftp://x", "k:AAAA", "k:", "index", [None]]
KEYS = ["extra", "name", "outputs", "timeout", "env", "git", "version", "args", "builder",
        "url", "command", "priority", "path", "exclude", "max-silent-time", "output-hash"]


def _documents() -> list[Any]:
    docs = []
    for path in SPECS:
        try:
            docs.append(load_yaml(path, str(path)).plain())
        except SpecError:  # bad YAML is not a schema case
            continue
    return docs


def _paths(x: Any, pre: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield pre
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield from _paths(v, (*pre, k))


def _mutate(doc: Any, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not paths:
            break
        path = rng.choice(paths)
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if rng.random() < 0.6:
                parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
            elif isinstance(parent, dict):
                parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
            elif isinstance(parent, list):
                parent.append(copy.deepcopy(rng.choice(VALUES)))
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def test_generated_code_is_up_to_date() -> None:
    assert compiled_schema.GENERATED.read_text("utf-8") == compiled_schema.generate(), \
        "run: python -m runner.spec.compiled_schema"


def test_valid_specs_pass_and_invalid_ones_fail() -> None:
    docs = _documents()
    valid = [d for d in docs if _validator().is_valid(d)]
    invalid = [d for d in docs if not _validator().is_valid(d)]
    assert len(valid) >= 5 and len(invalid) >= 10  # the corpus has both kinds
    assert all(compiled_schema.is_valid(d) for d in valid)
    assert not any(compiled_schema.is_valid(d) for d in invalid)


def _fuzz(is_valid: Callable[[Any], bool], seed: int, count: int = 1000) -> tuple[
        list[Any], dict[bool, int]]:
    """Fuzzed specs on which `is_valid` and jsonschema disagree, and jsonschema's tally."""
    rng = random.Random(seed)
    docs = _documents()
    verdicts = {True: 0, False: 0}
    disagree = []
    for _ in range(count):
        doc = _mutate(rng.choice(docs), rng)
        expected = _validator().is_valid(doc)
        if is_valid(doc) != expected:
            disagree.append(doc)
        verdicts[expected] += 1
    return disagree, verdicts


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_jsonschema_on_fuzzed_specs(seed: int) -> None:
    disagree, verdicts = _fuzz(compiled_schema.is_valid, seed)
    assert disagree == []
    assert min(verdicts.values()) >= 50  # both answers are exercised


def test_the_fuzzing_finds_a_validator_that_misses_one_rule() -> None:
    """Control: a validator compiled without one rule (no unknown keys in a derivation)
    disagrees with jsonschema on some fuzzed spec."""
    schema = compiled_schema.prepared(spec_schema())
    del schema["properties"]["derivations"]["additionalProperties"]["additionalProperties"]
    weakened = fastjsonschema.compile(schema)

    def is_valid(doc: Any) -> bool:
        try:
            weakened(doc)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    disagree, _ = _fuzz(is_valid, 0)
    assert disagree


def test_a_rejected_document_is_still_worded_by_jsonschema() -> None:
    root = parse_yaml("version: 1\nderivations:\n  a: {builder: /bin/sh, timeout: 1.5}\n",
                      "f.yaml")
    assert not compiled_schema.is_valid(root.plain())
    ((pos, message),) = schema_problems(root)
    assert (pos.line, pos.col) == (3, 34)
    assert message == "'timeout' of derivation 'a' must be an integer, not a number"
