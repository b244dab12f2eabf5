"""Building graphs end to end with real builders: dedup, order, references, keep-going."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.cli.main import run
from tests.build_helpers import build, build_json, counts, valid_paths, write_spec


def _step(name: str, deps: list[str], counter: Path) -> str:
    cats = " ".join(f"${{{{ {d} }}}}" for d in deps)
    script = f"echo {name} >> $COUNTER; echo {name} > $out"
    if deps:
        script += f"; for d in {cats}; do echo $d >> $out; done"
    return (f"  {name}:\n    builder: /bin/sh\n    args: [\"-c\", \"{script}\"]\n"
            f"    env: {{COUNTER: {counter}}}\n")


def test_diamond_builds_each_once_and_registers_references(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: str) -> None:
    counter = tmp_path / "counter"
    spec = write_spec(tmp_path, "derivations:\n" + _step("a", [], counter)
                      + _step("b", ["a"], counter) + _step("c", ["a"], counter)
                      + _step("d", ["b", "c"], counter))
    code, results = build_json(capsys, spec, "d")
    assert code == 0
    assert counts(counter) == {"a": 1, "b": 1, "c": 1, "d": 1}
    by_name = {Path(r["drvPath"]).name.split("-", 1)[1]: r for r in results}
    assert {r["status"] for r in results} == {"built"}
    a_out, d_out = by_name["a.drv"]["outputs"]["out"], by_name["d.drv"]["outputs"]["out"]
    refs = valid_paths(state_dir)
    assert refs[by_name["b.drv"]["outputs"]["out"]] == {a_out}
    assert refs[d_out] == {by_name["b.drv"]["outputs"]["out"], by_name["c.drv"]["outputs"]["out"]}
    # Outputs are canonical: read-only, mtime 1.
    st = os.stat(d_out)
    assert st.st_mtime == 1 and not st.st_mode & 0o222
    # A second run builds nothing and prints the same path.
    code, out, _ = build(capsys, spec, "d")
    assert code == 0 and out.strip() == d_out
    assert counts(counter) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_wide_graph_with_parallel_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    leaves = [f"leaf{i}" for i in range(24)]
    body = "derivations:\n" + "".join(_step(n, [], counter) for n in leaves)
    body += _step("top", leaves, counter)
    spec = write_spec(tmp_path, body)
    code, out, _ = build(capsys, "-j", "4", spec, "top")
    assert code == 0
    assert counts(counter) == {name: 1 for name in [*leaves, "top"]}
    assert len(Path(out.strip()).read_text().split()) == 25


def test_out_links_are_gc_roots(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                state_dir: str) -> None:
    spec = write_spec(tmp_path, """derivations:
  two:
    builder: /bin/sh
    args: ["-c", "echo a > $out; echo b > $doc"]
    outputs: [out, doc]
""")
    link = tmp_path / "res"
    assert run(["build", "--sandbox=off", "-o", str(link), spec]) == 0
    out = capsys.readouterr().out.split()
    assert sorted(os.readlink(p) for p in (link, tmp_path / "res-doc")) == sorted(out)
    auto = Path(state_dir) / "gcroots" / "auto"
    assert sorted(os.readlink(p) for p in auto.iterdir()) == sorted(
        [str(link), str(tmp_path / "res-doc")])


def _failing_graph(tmp_path: Path, counter: Path) -> str:
    return write_spec(tmp_path, "derivations:\n" + _step("good", [], counter) + """  bad:
    builder: /bin/sh
    args: ["-c", "echo bad >> $COUNTER; for i in $(seq 1 40); do echo line $i; done; exit 3"]
""" + f"    env: {{COUNTER: {counter}}}\n" + _step("after", ["bad"], counter))


def test_keep_going_builds_the_healthy_branch(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    spec = _failing_graph(tmp_path, counter)
    code, results = build_json(capsys, "-k", spec, "after", "good")
    assert code == 100
    status = {Path(r["drvPath"]).name.split("-", 1)[1]: r["status"] for r in results}
    assert status == {"good.drv": "built", "bad.drv": "failed",
                      "after.drv": "dependency-failed"}
    assert counts(counter) == {"good": 1, "bad": 1}


def test_failure_shows_log_tail_and_is_cached(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    spec = _failing_graph(tmp_path, counter)
    code, _, err = build(capsys, spec, "bad")
    assert code == 100
    assert "failed with exit code 3" in err
    assert "> line 40" in err and "> line 16" in err and "> line 15\n" not in err  # 25 lines
    assert "run 'runner log " in err
    # Asked again: fails at once from the cache, with the tail, without running the builder.
    code, _, err = build(capsys, spec, "bad")
    assert code == 100
    assert "failed previously (cached" in err and "> line 40" in err
    assert "--rebuild-failed" in err
    assert counts(counter) == {"bad": 1}
    # Dry run and `failed list` show it; dependents report it.
    assert run(["build", "--dry-run", spec, "after"]) == 0
    assert "failed previously" in capsys.readouterr().err
    assert run(["store", "failed", "list"]) == 0
    assert "-bad" in capsys.readouterr().out
    code, results = build_json(capsys, "-k", spec, "after")
    assert {r["status"] for r in results} == {"cached-failure", "dependency-failed"}
    # --rebuild-failed runs it again.
    code, _, err = build(capsys, "--rebuild-failed", spec, "bad")
    assert code == 100 and counts(counter) == {"bad": 2}
    assert run(["store", "failed", "clear"]) == 0
    capsys.readouterr()
    code, _, _ = build(capsys, spec, "bad")
    assert counts(counter) == {"bad": 3}


def test_log_command_prints_the_full_log(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    spec = _failing_graph(tmp_path, counter)
    build(capsys, spec, "bad")
    assert run(["log", spec, "bad"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"line {i}" for i in range(1, 41)]
    _code, results = build_json(capsys, spec, "good")
    assert run(["log", results[0]["outputs"]["out"]]) == 0
    assert capsys.readouterr().out == ""  # `good` prints nothing; its log exists but is empty
    assert run(["log", str(tmp_path / "nope")]) == 1


def test_missing_output_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  lazy:
    builder: /bin/sh
    args: ["-c", "echo did nothing"]
    outputs: [out, dev]
""")
    code, _, err = build(capsys, spec)
    assert code == 100
    assert "failed to produce output path" in err


def test_dry_run_builds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    spec = write_spec(tmp_path, "derivations:\n" + _step("a", [], counter)
                      + _step("b", ["a"], counter))
    assert run(["build", "--dry-run", "--json", spec, "b"]) == 0
    plan = __import__("json").loads(capsys.readouterr().out)
    assert [e["status"] for e in plan] == ["will-build", "will-build"]
    assert not counter.exists()


def test_without_keep_going_the_requested_derivation_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As Nix: `1 dependencies of derivation '…x4.drv' failed to build` (x4 ends when its
    first input fails), for each level of a chain, though the run stops at that failure."""
    spec = write_spec(tmp_path, """derivations:
  x1: {builder: /bin/sh, args: [-c, 'exit 1']}
  x2: {builder: /bin/sh, args: [-c, 'echo ${{ x1 }} > $out']}
  x3: {builder: /bin/sh, args: [-c, 'echo ${{ x2 }} > $out']}
  x4: {builder: /bin/sh, args: [-c, 'echo ${{ x3 }} ${{ x1 }} > $out']}
""")
    code, _, err = build(capsys, spec, "x4")
    assert code == 100
    x4 = next(line.split("'")[1] for line in err.splitlines() if "x4.drv" in line)
    assert x4.endswith("-x4.drv")
    assert f"error: 1 dependencies of derivation '{x4}' failed to build" in err
    code, results = build_json(capsys, spec, "x4")  # the failure is cached now
    by_name = {Path(r["drvPath"]).name.split("-", 1)[1]: r for r in results}
    assert by_name["x4.drv"]["status"] == "dependency-failed"
    assert by_name["x4.drv"]["error"] == f"1 dependencies of derivation '{x4}' failed to build"
    assert {r["status"] for r in results} == {"cached-failure", "dependency-failed"}
