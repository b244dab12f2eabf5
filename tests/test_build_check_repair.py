"""`runner build --check` (rebuild and compare) and `--repair` (replace corrupt outputs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.build.redirect import _rewrite_stream
from runner.build.repair import repair_paths
from runner.cli.main import run
from runner.settings import Settings
from runner.store import nar
from runner.store.local_store import LocalStore
from tests.build_helpers import build, build_json, counts, runner_process, write_spec

SPEC = """\
derivations:
  lib:
    builder: /bin/sh
    args: ["-c", "echo lib >> {counter}; mkdir $out; echo library > $out/data;
                  echo $out > $out/self; printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run"]
  app:
    builder: /bin/sh
    args: ["-c", "echo app >> {counter}; mkdir $out; cat ${{{{ lib }}}}/data > $out/data;
                  echo ${{{{ lib }}}} > $out/lib"]
  stamp:
    builder: /bin/sh
    args: ["-c", "echo stamp >> {counter}; mkdir $out; echo $out > $out/self;
                  date +%s%N > $out/date"]
  file:
    builder: /bin/sh
    args: ["-c", "date +%s%N > $out"]
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    return write_spec(tmp_path, SPEC.format(counter=tmp_path / "counter"))


def _outputs(capsys: pytest.CaptureFixture[str], spec: str, *names: str) -> dict[str, str]:
    code, results = build_json(capsys, spec, *names)
    assert code == 0
    return {os.path.basename(r["outputs"]["out"]).split("-", 1)[1]: r["outputs"]["out"]
            for r in results}


def _db_hash(path: str) -> str:
    with LocalStore(os.environ["RUNNER_STORE_DIR"], os.environ["RUNNER_STATE_DIR"]) as store:
        info = store.query_path_info(path)
        assert info is not None
        return str(info.nar_hash)


def test_check_passes_for_a_deterministic_builder(spec: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = _outputs(capsys, spec, "app")
    before = {p: _db_hash(p) for p in out.values()}
    code, results = build_json(capsys, "--check", spec, "app")
    assert code == 0, results
    assert counts(tmp_path / "counter") == {"lib": 1, "app": 2}  # only what was asked for
    assert {p: _db_hash(p) for p in out.values()} == before
    assert not [n for n in os.listdir(os.environ["RUNNER_STORE_DIR"]) if "lib" in n
                and n.endswith(".check")]


def test_check_catches_a_builder_that_writes_the_date(spec: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = _outputs(capsys, spec, "stamp", "file")
    before = {p: nar.hash_path(p)[0] for p in out.values()}
    code, _, err = build(capsys, "--check", spec, "stamp")
    assert code == 104
    assert "may not be deterministic" in err and "differs in: date" in err
    assert "self" not in err.split("differs in:")[1]  # its own path was rewritten back
    assert not os.path.exists(out["stamp"] + ".check")
    code, _, err = build(capsys, "--check", "-K", spec, "file")
    assert code == 104
    kept = out["file"] + ".check"
    assert os.path.isfile(kept) and Path(kept).read_text() != Path(out["file"]).read_text()
    assert kept in err
    assert {p: nar.hash_path(p)[0] for p in out.values()} == before  # originals untouched
    assert build(capsys, spec, "stamp")[0] == 0  # a check failure is not a cached failure


def test_check_needs_valid_outputs(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = build(capsys, "--check", spec, "lib")
    assert code != 0 and "not valid, so checking is not possible" in err


def _corrupt(path: str, name: str, text: str) -> None:
    os.chmod(path, 0o755)
    target = os.path.join(path, name)
    os.chmod(target, 0o644)
    Path(target).write_text(text)


def test_repair_restores_a_corrupted_output_and_its_inputs(
        spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _outputs(capsys, spec, "app")
    lib, app = out["lib"], out["app"]
    _corrupt(lib, "data", "evil")
    _corrupt(app, "lib", "evil")
    assert build(capsys, spec, "app")[0] == 0  # a normal build does not look
    assert Path(app, "lib").read_text() == "evil"
    code, results = build_json(capsys, "--repair", spec, "app")
    assert code == 0, results
    assert Path(lib, "data").read_text() == "library\n"
    assert Path(app, "lib").read_text() == lib + "\n"
    for path in (lib, app):
        assert str(nar.hash_path(path)[0]) == _db_hash(path)
        assert os.stat(path).st_mode & 0o222 == 0  # canonical again
    assert os.access(Path(lib, "run"), os.X_OK)
    assert counts(tmp_path / "counter") == {"lib": 2, "app": 2}
    code, _ = build_json(capsys, "--repair", spec, "app")
    assert counts(tmp_path / "counter") == {"lib": 2, "app": 2}  # healthy: nothing rebuilt


def test_repair_of_a_deleted_output(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _outputs(capsys, spec, "lib")
    from runner.store.canonicalise import remove_tree
    remove_tree(out["lib"])
    assert build(capsys, "--repair", spec, "lib")[0] == 0
    assert str(nar.hash_path(out["lib"])[0]) == _db_hash(out["lib"])


def test_repair_paths_for_verify(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _outputs(capsys, spec, "app")
    _corrupt(out["lib"], "data", "evil")
    settings = Settings.load()
    with LocalStore(settings.store_dir, settings.state_dir) as store:
        unrepaired = repair_paths(store, [out["lib"]], settings)
    assert unrepaired == []
    assert Path(out["lib"], "data").read_text() == "library\n"


def test_rewriting_a_stream_across_chunk_boundaries() -> None:
    old, new = b"a" * 32, b"b" * 32
    data = b"x" * 50 + old + b"y" * 7 + old
    for size in (1, 5, 31, 32, 33, 64, 1000):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert b"".join(_rewrite_stream(chunks, {old: new})) == data.replace(old, new)


_REFERS = """\
derivations:
  lib:
    builder: /bin/sh
    args: ["-c", "echo lib >> {counter}; echo library > $out"]
  app:
    builder: /bin/sh
    args: ["-c", "echo app >> {counter}; echo ${{{{ lib }}}} > $out"]
"""


def _built_elsewhere(spec: str) -> dict[str, dict]:  # type: ignore[type-arg]
    """Build in another process (its temporary roots end with it); name -> --json entry."""
    proc = runner_process("build", "--sandbox=off", "--no-out-link", "--json", spec, "app")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return {os.path.basename(e["drvPath"])[33:-4]: e for e in json.loads(out)}


def _corrupt_file(path: str) -> None:
    os.chmod(path, 0o644)
    Path(path).write_text("evil\n")
    os.chmod(path, 0o444)


@pytest.mark.parametrize("deriver_gone", [False, True], ids=["drv-valid", "drv-deleted"])
def test_repair_restores_a_corrupted_dependency_of_a_healthy_output(
        tmp_path: Path, deriver_gone: bool, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, _REFERS.format(counter=tmp_path / "counter"))
    built = _built_elsewhere(spec)
    lib, app = built["lib"]["outputs"]["out"], built["app"]["outputs"]["out"]
    _corrupt_file(lib)  # in app's closure; app itself is healthy
    if deriver_gone:
        assert run(["store", "delete", built["app"]["drvPath"], built["lib"]["drvPath"]]) == 0
        assert run(["store", "verify", "--check-contents", "--repair"]) == 1
        assert f"not fixed: '{lib}' is broken but still referenced by '{app}'" \
            in capsys.readouterr().out
    code, _, err = build(capsys, "--repair", spec, "app")
    assert code == 0, err
    assert Path(lib).read_text() == "library\n"
    assert str(nar.hash_path(lib)[0]) == _db_hash(lib)
    assert counts(tmp_path / "counter") == {"lib": 2, "app": 1}  # app was healthy
    assert run(["store", "verify", "--check-contents"]) == 0


_BUILD_ONLY = """\
derivations:
  tool:
    builder: /bin/sh
    args: ["-c", "echo tool >> {counter}; echo made-by-tool > $out"]
  app:
    builder: /bin/sh
    args: ["-c", "echo app >> {counter}; cat ${{{{ tool }}}} > $out"]
"""


def test_repair_of_a_healthy_output_leaves_its_build_only_inputs_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As nix-build --repair: the output closure is repaired, not what it was built from."""
    spec = write_spec(tmp_path, _BUILD_ONLY.format(counter=tmp_path / "counter"))
    built = _built_elsewhere(spec)
    tool = built["tool"]["outputs"]["out"]
    assert run(["store", "delete", tool]) == 0  # app does not refer to it (gc would take it)
    code, _, err = build(capsys, "--repair", spec, "app")
    assert code == 0, err
    assert counts(tmp_path / "counter") == {"tool": 1, "app": 1}  # nothing rebuilt
    assert not os.path.exists(tool)
