"""Reason codes are a closed set: runner/reasons.py lists every code runner/ raises or
matches, every listed code is used, tests match only listed codes, the docs are current."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runner.errors import RunnerError, SpecError, raise_not_valid
from runner.reasons import RENAMED, Reason, markdown

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "runner"
GENERATED = ("_protos", "_spec_schema_code.py")


def _sources(top: Path) -> dict[str, ast.AST]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p))
            for p in sorted(top.rglob("*.py")) if not any(g in str(p) for g in GENERATED)}


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def _mentions_reason(node: ast.AST) -> bool:
    """`x.reason`, `x["reason"]`, `[r.reason for r in …]` (not `f(x.reason)`: urllib3's
    reasons are not ours)."""
    if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
        node = node.elt
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "reason"
    return isinstance(node, ast.Attribute) and node.attr == "reason"


def codes_in(tree: ast.AST, *, keywords: bool = True) -> tuple[list[tuple[int, str]], list[str]]:
    """(line, code) of every code written in `tree`: `reason="…"` keywords (unless not
    `keywords`: pytest's skip reasons are prose), defaults of `reason` parameters,
    strings compared with a `.reason`; and the `Reason.NAME` members it names."""
    codes: list[tuple[int, str]] = []
    members: list[str] = []
    for node in ast.walk(tree):
        if keywords and isinstance(node, ast.keyword) and node.arg == "reason" \
                and isinstance(node.value, ast.Constant):
            codes.append((node.value.lineno, str(node.value.value)))
        elif isinstance(node, ast.arguments):
            params = node.posonlyargs + node.args
            defaulted = params[len(params) - len(node.defaults):]
            for arg, default in [*zip(defaulted, node.defaults, strict=True),
                                 *zip(node.kwonlyargs, node.kw_defaults, strict=True)]:
                if arg.arg == "reason" and isinstance(default, ast.Constant):
                    codes.append((default.lineno, str(default.value)))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            sides = [node.left, *node.comparators]
            if isinstance(node.ops[0], ast.In | ast.NotIn):  # `"x" in e.reason`: a substring
                sides = sides if _mentions_reason(node.left) else []
            if any(_mentions_reason(s) for s in sides):
                codes += [(node.lineno, text) for s in sides for text in _strings(s)
                          if not _mentions_reason(s)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "Reason":
            members.append(node.attr)
    return codes, members


REGISTERED = {r.value for r in Reason}


def test_every_code_runner_writes_is_registered() -> None:
    unknown = [f"{path}:{line}: {code!r}" for path, tree in _sources(RUNNER).items()
               for line, code in codes_in(tree)[0] if code not in REGISTERED]
    assert unknown == [], "register these in runner/reasons.py (or fix the typo)"


def test_every_registered_code_is_used_in_runner() -> None:
    used: set[str] = set()
    for path, tree in _sources(RUNNER).items():
        if path == "runner/reasons.py":
            continue
        codes, members = codes_in(tree)
        used.update(code for _, code in codes)
        used.update(Reason[name].value for name in members if name in Reason.__members__)
    assert sorted(REGISTERED - used) == [], "unused codes: remove them from runner/reasons.py"


def test_every_code_the_tests_assert_is_registered() -> None:
    unknown = [f"{path}:{line}: {code!r}" for path, tree in _sources(ROOT / "tests").items()
               if not path.endswith("test_reasons.py")
               for line, code in codes_in(tree, keywords=False)[0] if code not in REGISTERED]
    assert unknown == []


def test_the_probe_finds_codes_wherever_they_are_written() -> None:
    """Control: each form the scans rely on is seen, and an unregistered one stands out."""
    tree = ast.parse('def f(reason="error"): pass\n'
                     'raise RunnerError("m", reason="no-such-code")\n'
                     'if e.reason in ("busy", "lock"): pass\n'
                     'assert [r.reason for r in x] == ["unsigned"]\n'
                     'assert d["error"]["reason"] == "usage"\n'
                     'assert "prose" in problem.reason\n'
                     'y = Reason.IO\n')
    codes, members = codes_in(tree)
    assert sorted(c for _, c in codes) == ["busy", "error", "lock", "no-such-code", "unsigned",
                                          "usage"]
    assert members == ["IO"]
    assert {c for _, c in codes} - REGISTERED == {"no-such-code"}


def test_runner_error_refuses_an_unregistered_code() -> None:
    with pytest.raises(ValueError, match="unregistered reason code 'bad-hsah'"):
        RunnerError("x", reason="bad-hsah")
    with pytest.raises(ValueError, match="corrupt-nar"):  # a renamed code is gone for good
        RunnerError("x", reason="corrupt-nar")
    with pytest.raises(ValueError):
        SpecError(["f:1:1: x"], reason="spec-too-shallow")
    error = RunnerError("x", reason=Reason.BAD_NAR)
    assert error.reason == "bad-nar" and type(error.reason) is str  # plain str for JSON/f""
    assert RunnerError("x").reason == "error" and SpecError([]).reason == "spec"


def test_a_reason_formats_as_its_code() -> None:
    """Python 3.11 changed str() of (str, Enum) members to `Reason.IO`; ours stays 'io'."""
    assert f"{Reason.IO}" == str(Reason.IO) == Reason.IO.value == "io"
    assert all(r.meaning and "\n" not in r.meaning for r in Reason)


def test_renamed_codes_are_gone_and_point_to_registered_ones() -> None:
    assert not set(RENAMED) & REGISTERED
    assert all(isinstance(new, Reason) for new in RENAMED.values())


def test_not_valid_is_one_error() -> None:
    with pytest.raises(RunnerError) as e:
        raise_not_valid("/nix/store/00000000000000000000000000000000-x")
    assert e.value.reason == "invalid-path"
    assert e.value.message == "path '/nix/store/00000000000000000000000000000000-x' is not valid"
    copies = [path for path, text in ((p, p.read_text()) for p in RUNNER.rglob("*.py"))
              if "is not valid\", reason=" in text]
    assert copies == []


def test_the_docs_table_is_current() -> None:
    assert (ROOT / "docs" / "reasons.md").read_text() == markdown(), \
        "run: python -m runner.reasons > docs/reasons.md"


def unchecked_raises(tree: ast.AST) -> list[int]:
    """Lines of `with pytest.raises(RunnerError|SpecError)` whose function never looks at
    the error's reason (nor returns the error for its caller to)."""
    lines = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        text = ast.unparse(fn)
        for node in ast.walk(fn):
            if not isinstance(node, ast.With):
                continue
            for item in node.items:
                call = item.context_expr
                if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "pytest.raises"
                        and call.args and ast.unparse(call.args[0]).endswith(
                            ("RunnerError", "SpecError"))):
                    continue
                name = item.optional_vars.id if isinstance(item.optional_vars, ast.Name) else ""
                if not name or (f"{name}.value.reason" not in text
                                and f"return {name}.value" not in text):
                    lines.append(node.lineno)
    return lines


def test_every_raised_runner_error_is_checked_for_its_reason() -> None:
    unchecked = [f"{path}:{line}" for path, tree in _sources(ROOT / "tests").items()
                 for line in unchecked_raises(tree)]
    assert unchecked == [], "assert `e.value.reason == ...` after these"


def test_the_probe_sees_an_unchecked_raises() -> None:
    tree = ast.parse("def test_a():\n    with pytest.raises(RunnerError):\n        f()\n"
                     "def test_b():\n    with pytest.raises(RunnerError) as e:\n        f()\n"
                     "    assert e.value.reason == 'io'\n"
                     "def test_c():\n    with pytest.raises(SpecError, match='x') as e:\n"
                     "        f()\n")
    assert unchecked_raises(tree) == [2, 9]
