"""`runner why` and `runner diff`: real specs built with the real CLI on a real store,
then changed; the answer must name the change, root cause first."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from runner.cli import main
from runner.cli.main import run
from runner.errors import RunnerError
from runner.store.derivation import Derivation, DerivationOutput, fill_output_paths
from runner.store.local_store import LocalStore
from runner.why import history
from tests.build_helpers import build

SPEC = """\
version: 1
inputs:
  src: ./src
defaults:
  builder: /bin/sh
derivations:
  base:
    args: ["-c", "cat ${{ src }}/a.txt > $out; echo $MODE >> $out"]
    env: {MODE: fast}
  mid:
    args: ["-c", "cat ${{ base }} > $out"]
  top:
    args: ["-c", "cat ${{ mid }} > $out; echo top >> $out"]
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("hello\n")
    (tmp_path / "src" / "b.txt").write_text("gone soon\n")
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


SCHEMAS = Path(__file__).parent.parent / "runner" / "schemas"


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / f"{name}-output.schema.json").read_text())
    return data


def _validate(kind: str, data: object) -> None:
    """`runner why|diff --json` output against its published JSON Schema."""
    registry: Registry[Any] = Registry().with_resources(
        (_schema(n)["$id"], Resource.from_contents(_schema(n))) for n in ("diff", "why"))
    jsonschema.Draft202012Validator(_schema(kind), registry=registry).validate(data)


def _why(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["why", *argv])
    out, err = capsys.readouterr()
    if "--json" in argv:
        _validate("why", json.loads(out))
    return code, out, err


def _error(*argv: str) -> RunnerError:
    """The RunnerError a command raises (to assert its reason code)."""
    args = main.build_parser(argv).parse_args(list(argv))
    with pytest.raises(RunnerError) as info:
        args.func(args, main._settings_from(args))
    return info.value


def _built(capsys: pytest.CaptureFixture[str], spec: Path, *names: str) -> None:
    code, _, err = build(capsys, str(spec), *names)
    assert code == 0, err


def test_changed_source_file_is_named_with_sizes(
        spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _built(capsys, spec, "top")
    code, out, _ = _why(capsys, str(spec), "top")
    assert code == 0 and "nothing changed since then" in out  # control: same drv
    (spec.parent / "src" / "a.txt").write_text("hello, world\n")
    (spec.parent / "src" / "b.txt").unlink()
    (spec.parent / "src" / "c.txt").write_text("new\n")
    code, out, err = _why(capsys, str(spec), "top")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == "root cause in 'base' (via top → mid → base):"
    assert "      modified  a.txt (6 → 13 bytes)" in lines
    assert "      removed   b.txt (10 bytes)" in lines
    assert "      added     c.txt (4 bytes)" in lines
    assert "root cause in 'mid'" not in out and "root cause in 'top'" not in out
    assert "args" not in out  # base's args differ only in the source's store path

    code, out, _ = _why(capsys, "-p", str(spec), "top")
    assert "-hello" in out and "+hello, world" in out

    code, out, _ = _why(capsys, "--json", str(spec), "top")
    data = json.loads(out)
    [cause] = data["diff"]["rootCauses"]
    assert cause["trail"] == ["top", "mid", "base"]
    [change] = cause["changes"]
    assert change["kind"] == "source" and not change["oldCollected"]
    assert [(f["path"], f["change"]) for f in change["files"]] == [
        ("a.txt", "modified"), ("b.txt", "removed"), ("c.txt", "added")]


def test_changed_env_var_is_named_with_old_and_new_value(
        spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _built(capsys, spec, "top")
    spec.write_text(SPEC.replace("MODE: fast", "MODE: slow"))
    code, out, _ = _why(capsys, str(spec), "top")
    assert code == 0
    assert "root cause in 'base' (via top → mid → base):" in out
    assert '  env MODE: "fast" → "slow"' in out.splitlines()
    assert "source" not in out


def test_walks_down_to_the_dependency_whose_args_changed(
        spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _built(capsys, spec, "top")
    spec.write_text(SPEC.replace("cat ${{ base }} > $out", "cat ${{ base }} ${{ base }} > $out"))
    code, out, _ = _why(capsys, "--json", str(spec), "top")
    assert code == 0
    [cause] = json.loads(out)["diff"]["rootCauses"]
    assert cause["derivation"] == "mid" and cause["trail"] == ["top", "mid"]
    assert [c["kind"] for c in cause["changes"]] == ["args"]
    _, out, _ = _why(capsys, str(spec), "top")
    assert "root cause in 'mid' (via top → mid):" in out
    assert "  args[1] changed:" in out  # a long value: shown as a line diff
    [plus] = [line for line in out.splitlines() if line.startswith("      +cat")]
    assert plus.count("-base") == 2


def _runner(*argv: str) -> None:
    """A separate process: its temporary GC roots die with it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    subprocess.run([sys.executable, "-m", "runner", *argv], env=env, check=True,
                   capture_output=True)


def test_old_source_collected_says_so(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _runner("build", "--sandbox=off", "--no-out-link", str(spec), "base")
    (spec.parent / "src" / "a.txt").write_text("changed\n")
    _runner("gc")  # nothing is rooted: the old .drv and its source go
    code, out, err = _why(capsys, str(spec), "base")
    assert code == 0, err
    assert "old source no longer in the store" in out
    # The old derivation itself came from the history's archive.
    old = json.loads(_why(capsys, "--json", str(spec), "base")[1])["lastSuccess"]["drvPath"]
    assert not os.path.exists(old)


def test_cached_failure_of_the_same_drv_says_nothing_changed(
        spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = SPEC.replace('echo $MODE >> $out"]', 'test $MODE = fast"]')
    spec.write_text(failing)
    _built(capsys, spec, "base")
    spec.write_text(failing.replace("MODE: fast", "MODE: slow"))
    code, _, _ = build(capsys, str(spec), "base")
    assert code == 100
    code, out, _ = _why(capsys, str(spec), "base")
    assert code == 0
    lines = out.splitlines()
    assert '  env MODE: "fast" → "slow"' in lines
    assert lines[-2].startswith("nothing changed since its cached failure")
    assert lines[-1] == f"to retry: runner build {spec} base --rebuild-failed"
    data = json.loads(_why(capsys, "--json", str(spec), "base")[1])
    assert data["nothingChangedSinceFailure"] and data["cachedFailure"] is not None
    assert data["lastFailure"]["status"] == "failed"


def test_no_recorded_success_is_a_clear_error(
        spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _error("why", str(spec), "top").reason == "no-success"
    code, out, err = _why(capsys, str(spec), "top")
    assert code == 1 and out == ""
    assert err.startswith("error: no recorded success of 'top'") and err.count("\n") == 1
    assert _error("why", str(spec), "nope").reason == "not-found"
    code, out, _ = _why(capsys, "--json", str(spec), "top")  # still says what it knows
    assert code == 1 and json.loads(out)["lastSuccess"] is None and json.loads(out)["diff"] is None
    with pytest.raises(jsonschema.ValidationError):  # control: the schema does reject
        _validate("why", {**json.loads(out), "diff": {"old": 1}})


def test_check_records_history_too(spec: Path, capsys: pytest.CaptureFixture[str],
                                   state_dir: str, store_dir: str) -> None:
    assert run(["check", "--sandbox=off", str(spec), "mid"]) == 0
    capsys.readouterr()
    last = history.last(state_dir, store_dir, os.path.realpath(spec), "mid", ok=True)
    assert last is not None and last.drv_path.endswith("-mid.drv")


def _drv(store: LocalStore, name: str, **changes: object) -> str:
    fields: dict[str, object] = {
        "outputs": {"out": DerivationOutput("")}, "input_drvs": {}, "input_srcs": [],
        "system": "x86_64-linux", "builder": "/bin/sh", "args": ["-c", "echo hi > $out"],
        "env": {"name": name, "out": "", "KEEP": "same"}}
    fields.update(changes)
    drv = fill_output_paths(Derivation(**fields), store.store_dir,  # type: ignore[arg-type]
                            store.read_derivation, {})
    return store.write_derivation(drv)


def test_diff_of_hand_made_derivations(store_dir: str, state_dir: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with LocalStore(store_dir, state_dir) as store:
        dep1 = _drv(store, "dep")
        dep2 = _drv(store, "dep", system="aarch64-linux")
        fixed = {"out": DerivationOutput("", "r:sha256", "00" * 32)}
        fod1 = _drv(store, "fetched", outputs=fixed)
        fod2 = _drv(store, "fetched", outputs={"out": DerivationOutput("", "r:sha256", "11" * 32)})
        old = _drv(store, "app", input_drvs={dep1: ["out"], fod1: ["out"]},
                   env={"name": "app", "out": "", "A": "1", "GONE": "x"})
        new = _drv(store, "app", input_drvs={dep2: ["out"], fod2: ["out"]}, builder="/bin/bash",
                   env={"name": "app", "out": "", "A": "2", "NEW": "y"})
    assert run(["diff", old, old]) == 0
    assert capsys.readouterr().out == "the derivations are identical\n"
    assert run(["diff", old, new]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "root cause in 'app':"
    assert '  builder: "/bin/sh" → "/bin/bash"' in out
    assert '  env A: "1" → "2"' in out
    assert '  env GONE removed (was "x")' in out
    assert '  env NEW added: "y"' in out
    assert "root cause in 'dep' (via app → dep):" in out
    assert '  system: "x86_64-linux" → "aarch64-linux"' in out
    assert "root cause in 'fetched' (via app → fetched):" in out
    assert f"  fixed-output hash of 'out': r:sha256:{'00' * 32} → r:sha256:{'11' * 32}" in out
    assert run(["diff", "--json", old, new]) == 0
    data = json.loads(capsys.readouterr().out)
    _validate("diff", data)
    assert {c["derivation"] for c in data["rootCauses"]} == {"app", "dep", "fetched"}


def test_diff_bad_input_is_one_line_error(tmp_path: Path, store_dir: str, state_dir: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with LocalStore(store_dir, state_dir) as store:
        good = _drv(store, "good")
    plain = tmp_path / "notes.txt"
    plain.write_text("not a derivation")
    missing = os.path.join(store_dir, "0" * 32 + "-missing.drv")
    corrupt = os.path.join(store_dir, "1" * 32 + "-corrupt.drv")
    Path(corrupt).write_text('Derive([("out","/x","",""")],')
    outside = tmp_path / "elsewhere.drv"
    outside.write_text("Derive(")
    cases = {str(plain): "not-drv", missing: "not-found", corrupt: "bad-drv",
             str(outside): "bad-path"}
    for path, reason in cases.items():
        assert _error("diff", good, path).reason == reason
        assert run(["diff", good, path]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_history_is_bounded_and_keeps_the_last_success(state_dir: str) -> None:
    history.record(state_dir, "/s", [("/spec", "x", "/s/ok.drv", "built", True)],
                   lambda _: [("/s/ok.drv", b"Derive(...)")])
    for i in range(history.KEEP + 5):
        history.record(state_dir, "/s", [("/spec", "x", f"/s/f{i}.drv", "failed", False)],
                       lambda _, i=i: [(f"/s/f{i}.drv", b"x")])  # type: ignore[misc]
    rows = history.outcomes(state_dir, "/s", "/spec", "x")
    assert len(rows) == history.KEEP + 1
    success = history.last(state_dir, "/s", "/spec", "x", ok=True)
    assert success is not None and success.drv_path == "/s/ok.drv"
    with history.Archive(state_dir) as archive:
        assert archive.text("/s/ok.drv") == b"Derive(...)"
        assert archive.text(f"/s/f{history.KEEP + 4}.drv") == b"x"
        assert archive.text("/s/f0.drv") is None  # pruned with its run


_WRITER = """
import sys
from runner.why import history
state, who, ready, go = sys.argv[1:]
open(ready, "w").close()
while True:
    try:
        open(go).close()
        break
    except FileNotFoundError:
        pass
for i in range(15):
    history.record(state, "/s", [("/spec", who, f"/s/{who}{i}.drv", "built", True)],
                   lambda _: [(f"/s/{who}{i}.drv", b"t"), ("/s/shared.drv", b"s")])
"""


def test_concurrent_runs_record_safely(tmp_path: Path, state_dir: str) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    procs = []
    for who in ("a", "b"):
        ready = tmp_path / f"ready-{who}"
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", _WRITER, state_dir, who, str(ready), str(go)], env=env)))
    while not all(ready.exists() for ready, _ in procs):
        pass
    go.touch()
    for _, proc in procs:
        assert proc.wait(timeout=60) == 0
    for who in ("a", "b"):
        assert len(history.outcomes(state_dir, "/s", "/spec", who)) == 15


def test_damaged_history_warns_on_build_and_fails_why_cleanly(
        spec: Path, state_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    Path(state_dir, history.FILE).write_bytes(b"not a database" * 100)
    code, _, err = build(capsys, str(spec), "base")
    assert code == 0  # the build itself is not the history's business
    assert "warning: could not record the build history" in err
    assert _error("why", str(spec), "base").reason == "bad-history"
    code, _, err = _why(capsys, str(spec), "base")
    assert code == 1 and err.startswith("error: build history") and err.count("\n") == 1


def test_same_outcome_again_refreshes_the_newest_instead_of_adding(
        spec: Path, state_dir: str, store_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    _built(capsys, spec, "base")
    [first] = history.outcomes(state_dir, store_dir, os.path.realpath(spec), "base")
    _built(capsys, spec, "base")  # valid now: same drv, same success
    [again] = history.outcomes(state_dir, store_dir, os.path.realpath(spec), "base")
    assert again.drv_path == first.drv_path and again.time > first.time
    spec.write_text(SPEC.replace("MODE: fast", "MODE: slower"))
    _built(capsys, spec, "base")
    assert len(history.outcomes(state_dir, store_dir, os.path.realpath(spec), "base")) == 2


def _chain(store: LocalStore, depth: int, bottom: str) -> str:
    """A chain of `depth` derivations; only the bottom one's env says `bottom`."""
    from runner.store.derivation import derivation_path

    drvs: list[Derivation] = []
    by_path: dict[str, Derivation] = {}
    cache: dict[str, bytes] = {}
    below = ""
    for i in range(depth):
        env = {"name": f"link{i}", "out": ""} | ({"WHAT": bottom} if i == 0 else {})
        drv = fill_output_paths(Derivation(
            {"out": DerivationOutput("")}, {below: ["out"]} if below else {}, [],
            "x86_64-linux", "/bin/sh", ["-c", "true"], env), store.store_dir,
            by_path.__getitem__, cache)
        below = derivation_path(drv, store.store_dir)
        by_path[below] = drv
        drvs.append(drv)
    assert store.write_derivations(drvs)[-1] == below
    return below


def test_diff_walks_a_chain_deeper_than_the_recursion_limit(
        store_dir: str, state_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    depth = 300
    with LocalStore(store_dir, state_dir) as store:
        old, new = _chain(store, depth, "a"), _chain(store, depth, "b")
    # The walk runs with less stack than the chain is deep: recursion would fail.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + depth // 2)
    try:
        code = run(["diff", "--json", old, new])
    finally:
        sys.setrecursionlimit(limit)
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    _validate("diff", data)
    [cause] = data["rootCauses"]
    assert cause["derivation"] == "link0" and len(cause["trail"]) == depth
    assert cause["changes"] == [{"kind": "env", "name": "WHAT", "old": "a", "new": "b"}]


def test_diff_says_when_an_input_is_in_neither_store_nor_history(
        store_dir: str, state_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalStore(store_dir, state_dir) as store:
        dep1, dep2 = _drv(store, "dep"), _drv(store, "dep", args=["-c", "other"])
        old = _drv(store, "app", input_drvs={dep1: ["out"]})
        new = _drv(store, "app", input_drvs={dep2: ["out"]})
        text = Path(old).read_bytes()
        # Only `old` itself is archived; then both leave the store.
        history.record(state_dir, store_dir, [("/spec", "app", old, "built", True)],
                       lambda _: [(old, text)])
        store.delete_path(old)
        store.delete_path(dep1)
    assert run(["diff", old, new]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["root cause in 'dep' (via app → dep):",
                   f"  '{dep1}' is no longer in the store nor in the history; "
                   "cannot compare further"]


def test_failure_not_cached_of_the_same_drv_gives_a_plain_retry(
        spec: Path, state_dir: str, store_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    _built(capsys, spec, "base")
    real = os.path.realpath(spec)
    success = history.last(state_dir, store_dir, real, "base", ok=True)
    assert success is not None
    # A run that timed out (not cached: the next run may well succeed).
    history.record(state_dir, store_dir, [(real, "base", success.drv_path, "timed-out", False)],
                   lambda _: [])
    _, out, _ = _why(capsys, str(spec), "base")
    assert out.splitlines()[-2].startswith("nothing changed since its last failure")
    assert out.splitlines()[-1] == f"to retry: runner build {spec} base"
    _built(capsys, spec, "base")  # it succeeds again: that failure is old news
    _, out, _ = _why(capsys, str(spec), "base")
    assert out.splitlines()[1:] == ["nothing changed since then"]
