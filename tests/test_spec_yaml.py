"""The YAML loader, the schema, templates and coercion: the pieces under `load_spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from runner.errors import SpecError
from runner.spec.coerce import scalar_to_string, to_string
from runner.spec.interpolate import Ref, TemplateError, parse_template
from runner.spec.validate import nix_attributes, spec_schema
from runner.spec.yaml_loader import (
    ALIAS_BUDGET,
    MAX_DEPTH,
    TOO_DEEP,
    Node,
    load_yaml,
    parse_yaml,
)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_yaml(text, "f.yaml")
    assert info.value.reason == "spec"
    return info.value.problems


def test_positions_of_values_and_keys() -> None:
    root = parse_yaml("version: 1\nderivations:\n  hello:\n    builder: /bin/sh\n", "f.yaml")
    builder = root.at("derivations", "hello", "builder")
    assert builder is not None and builder.value == "/bin/sh"
    assert str(builder.pos) == "f.yaml:4:14"
    hello = root.at("derivations", "hello")
    assert hello is not None and str(hello.key_pos["builder"]) == "f.yaml:4:5"


def test_yaml_1_2_core_scalars() -> None:
    root = parse_yaml(
        "a: NO\nb: yes\nc: true\nd: 0x1F\ne: 0o17\nf: 010\ng: 1.5\nh: ~\ni:\nj: '1'\nk: False\n",
        "f.yaml",
    )
    assert root.plain() == {
        "a": "NO", "b": "yes", "c": True, "d": 31, "e": 15, "f": 10, "g": 1.5,
        "h": None, "i": None, "j": "1", "k": False,
    }


def test_keys_are_strings_as_written() -> None:
    assert parse_yaml("1: a\ntrue: b\nnull: c\n", "f.yaml").plain() == {
        "1": "a", "true": "b", "null": "c",
    }


def test_duplicate_keys_are_all_reported() -> None:
    assert problems("a: 1\nb: 2\na: 3\nc: {x: 1, x: 2}\n") == [
        "f.yaml:3:1: duplicate key 'a' (first defined at line 1)",
        "f.yaml:4:11: duplicate key 'x' (first defined at line 4)",
    ]


def test_merge_keys_fill_in_missing_keys() -> None:
    root = parse_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\n", "f.yaml")
    assert root.plain()["use"] == {"x": 1, "y": 3}  # type: ignore[index]


def test_aliases_within_budget_are_fine() -> None:
    uses = ALIAS_BUDGET // 2  # each use of `a` reaches two nodes again: the list and its item
    text = "a: &a [1]\n" + "".join(f"k{i}: *a\n" for i in range(uses))
    assert len(parse_yaml(text, "f.yaml").plain()) == uses + 1  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="expand to too many values"):
        parse_yaml(text + "one-more: *a\n", "f.yaml")


def test_alias_bomb_is_refused_without_expanding() -> None:
    lines = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 30):  # 10**30 nodes if expanded
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    (problem,) = problems("\n".join(lines))
    assert "expand to too many values" in problem


@pytest.mark.parametrize("depth", [65, 999, 1001, 5000])  # libyaml has a limit of its own at 1000
@pytest.mark.parametrize("open_close", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused(open_close: tuple[str, str], depth: int) -> None:
    opening, closing = open_close
    with pytest.raises(SpecError) as info:
        parse_yaml("x: " + opening * depth + "1" + closing * depth + "\n", "f.yaml")
    assert info.value.reason == TOO_DEEP
    (problem,) = info.value.problems
    column = 4 + (MAX_DEPTH - 1) * len(opening)  # the mapping of `x` is level 1
    assert problem.startswith(f"f.yaml:1:{column}: ")


def test_nesting_at_the_limit_is_fine() -> None:
    levels = MAX_DEPTH - 2  # the mapping of `x` and the scalar are levels too
    text = "x: " + "[" * levels + "1" + "]" * levels + "\n"
    assert parse_yaml(text, "f.yaml").at("x") is not None
    with pytest.raises(SpecError):
        parse_yaml("x: " + "[" * (levels + 1) + "1" + "]" * (levels + 1) + "\n", "f.yaml")


def test_recursive_alias() -> None:
    (problem,) = problems("a: &a [1, *a]\n")
    assert problem == "f.yaml:1:4: an alias refers to a value that contains it (recursive alias)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1\n", "f.yaml:1:4: invalid YAML: the '[' list that starts here is not closed "
                    "(did not find expected ',' or ']' at line 2, column 1)"),
        ("a: !!binary aGk=\n", "f.yaml:1:4: unsupported YAML tag 'tag:yaml.org,2002:binary'"),
        ("a: !custom x\n", "f.yaml:1:4: unsupported YAML tag '!custom'"),
        ("? [1]\n: 2\n", "f.yaml:1:3: a mapping key must be a plain string"),
        ("a: .inf\n", "f.yaml:1:4: '.inf' is not a finite number"),
        ("# only a comment\n\n", "f.yaml:1:1: the file is empty"),
        ("", "f.yaml:1:1: the file is empty"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2:1: invalid YAML: but found another document"),
        ("a: 1\0\n", "f.yaml:1:1: the file contains a NUL character"),
    ],
)
def test_bad_yaml(text: str, expected: str) -> None:
    (problem,) = problems(text)
    assert problem.startswith(expected), problem


def test_files_not_utf8_missing_or_directories(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(SpecError, match=r"bad.yaml:2:10: the file is not valid UTF-8"):
        load_yaml(bad)
    with pytest.raises(SpecError, match=r"nope.yaml:1:1: no such file"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"is a directory"):
        load_yaml(tmp_path)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfversion: 1\n")
    assert load_yaml(bom).plain() == {"version": 1}


def test_templates() -> None:
    assert parse_template("a ${{ x }}-${{y.dev}} $${{ z }} $out ${out} $$") == [
        "a ", Ref("x"), "-", Ref("y", "dev"), " ${{ z }} $out ${out} $$",
    ]
    assert parse_template("") == []
    for bad in ("${{ x", "${{ }}", "${{ a b }}", "${{ .x }}", "${{ x. }}"):
        with pytest.raises(TemplateError):
            parse_template(bad)


def test_coercion_as_nix() -> None:
    def resolve(ref: Ref) -> str:
        return f"/store/{ref}"

    assert [scalar_to_string(v, resolve) for v in (True, False, None, 0, -12, 1.5, 1e20)] == [
        "1", "", "", "0", "-12", "1.500000", "100000000000000000000.000000",
    ]
    node = parse_yaml("[a, 1, true, null, '${{ x.doc }}']", "f.yaml")
    assert to_string(node, resolve) == "a 1 1  /store/x.doc"
    assert to_string(Node([], node.pos), resolve) == ""


def test_schema_is_valid_and_documents_every_key() -> None:
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(props: dict[str, Any]) -> None:
        for key, prop in props.items():
            assert prop.get("description"), key
            assert prop.get("examples"), key
            walk(prop.get("properties", {}))

    walk(schema["properties"])
    walk(schema["$defs"]["derivation"]["properties"])
    walk(schema["$defs"]["substituter"]["properties"])
    # defaults take the same keys as a derivation, except `name` and the runner-only
    # `junit`, `shards`, `retries` and `flaky`, which describe one derivation
    # (docs/test-pipelines.md).
    derivation_keys = set(schema["$defs"]["derivation"]["properties"])
    assert set(schema["properties"]["defaults"]["properties"]) == (
        derivation_keys - {"name", "junit", "shards", "retries", "flaky"})


def test_kebab_keys_map_to_nix_attribute_names() -> None:
    attrs = nix_attributes()
    assert attrs["output-hash"] == "outputHash"
    assert attrs["allowed-references"] == "allowedReferences"
    assert attrs["prefer-local-build"] == "preferLocalBuild"
    assert attrs["impure-env-vars"] == "impureEnvVars"
    assert attrs["no-chroot"] == "__noChroot"
    assert "env" not in attrs
    assert len(set(attrs.values())) == len(attrs)


@pytest.mark.parametrize(
    ("text", "needle", "nth", "where"),
    [
        ('a: "x ${{ b }} ${{ b }}"\n', "${{ b }}", 1, (1, 16)),
        ("a: |\n  one\n  two ${{ b }}\n", "${{ b }}", 0, (3, 7)),
        ("a: >\n  one\n\n  two ${{ b }}\n", "${{ b }}", 0, (4, 7)),
        ("a:\r\n  - x\r\n  - 'y ${{ b }}'\r\n", "${{ b }}", 0, (3, 8)),
        ("a: {k: [1, \"é ${{ b }}\"]}\n", "${{ b }}", 0, (1, 15)),
        # Not written verbatim (an escape inside): the string's own position.
        ('a: "x \\x24{{ b }}"\n', "${{ b }}", 0, (1, 4)),
    ],
)
def test_locate_points_inside_strings(text: str, needle: str, nth: int,
                                      where: tuple[int, int]) -> None:
    root = parse_yaml(text, "f.yaml")
    node = root.at("a")
    assert node is not None
    while isinstance(node.value, (list, dict)):
        node = list(node.value.values())[-1] if isinstance(node.value, dict) else node.value[-1]
    assert (node.locate(needle, nth).line, node.locate(needle, nth).col) == where


def test_escape_error_inside_a_multi_line_string_points_at_the_escape() -> None:
    with pytest.raises(SpecError) as info:
        parse_yaml('a: "one\n  two \\q"\n', "f.yaml")
    # libyaml points at the backslash, the pure-Python parser at the letter after it.
    assert info.value.problems[0].startswith(("f.yaml:2:7: invalid YAML",
                                              "f.yaml:2:8: invalid YAML"))
