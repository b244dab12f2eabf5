"""The quick schema check: never "valid" where jsonschema finds a problem."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.errors import SpecError
from runner.spec.quick_schema import QuickChecker
from runner.spec.validate import _validator, spec_schema
from runner.spec.yaml_loader import load_yaml

ROOT = Path(__file__).parent.parent
SPECS = sorted([*(ROOT / "specs").glob("*.yaml"), *(ROOT / "tests/specs_good").glob("*.yaml"),
                *(ROOT / "tests/specs_bad").glob("*.yaml")])
VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 2.5, "", "x", "out", "a=b", [], ["a", "a"],
                     ["a"], [1], [True], {}, {"a": 1}, {"=": 1}, "flat", "sha256", "md5x", 3600]


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
    for _ in range(rng.randint(1, 3)):
        if not paths:
            break
        path = rng.choice(paths)
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if rng.random() < 0.7:
                parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
            elif isinstance(parent, dict):
                parent[rng.choice(["extra", "name", "outputs", "timeout", "env", "git"])] = (
                    copy.deepcopy(rng.choice(VALUES)))
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def test_valid_documents_pass_quickly() -> None:
    quick = QuickChecker(spec_schema())
    valid = [d for d in _documents() if _validator().is_valid(d)]
    assert len(valid) >= 5
    assert all(quick.valid(d) for d in valid)


@pytest.mark.parametrize("seed", range(3))
def test_never_valid_where_jsonschema_finds_a_problem(seed: int) -> None:
    quick, full = QuickChecker(spec_schema()), _validator()
    rng = random.Random(seed)
    docs = _documents()
    for _ in range(1500):
        doc = _mutate(rng.choice(docs), rng)
        if quick.valid(doc):
            assert full.is_valid(doc), doc


def test_edge_cases_are_left_to_jsonschema() -> None:
    quick = QuickChecker({"type": "integer", "minimum": 1})
    assert quick.check(quick.root, 2.0) is None  # jsonschema: an integer
    assert quick.check(quick.root, True) is False
    assert QuickChecker({"not": {}}).check({"not": {}}, 1) is None  # unknown keyword
