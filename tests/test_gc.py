"""GC roots, the temp-root protocol across real processes, collection and deletion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from runner.cli.main import run
from runner.errors import RunnerError
from runner.store import nar
from runner.store.derivation import Derivation, DerivationOutput, fill_output_paths
from runner.store.gc import GCOptions, collect_garbage, delete_paths
from runner.store.layout import STATE_MARKER
from runner.store.local_store import LocalStore
from runner.store.locks import PathLocks
from runner.store.path_info import PathInfo
from runner.store.roots import (
    TempRoots,
    add_perm_root,
    auto_roots_dir,
    find_roots,
    read_temp_roots,
    roots_dir,
)
from runner.store.verify import verify_store
from tests.build_helpers import runner_process


@pytest.fixture
def store(store_dir: str, state_dir: str) -> Iterator[LocalStore]:
    with LocalStore(store_dir, state_dir) as s:
        yield s


def _added_elsewhere(store: LocalStore) -> None:
    """Drop the temporary roots `add_*` gave this process, as if another process
    had added the paths and exited: what the collector sees in real use."""
    store.temp_roots.close()


def _chain(store: LocalStore, prefix: str, length: int) -> list[str]:
    """`length` text paths, each referring to the one before it."""
    paths: list[str] = []
    for i in range(length):
        paths.append(store.add_text(f"{prefix}{i}", f"{prefix} {i} {paths[-1:]}", paths[-1:]))
    _added_elsewhere(store)
    return paths


def _valid_and_present(store: LocalStore, paths: list[str]) -> bool:
    return all(store.is_valid(p) and os.path.lexists(p) for p in paths)


def _gone(store: LocalStore, paths: list[str]) -> bool:
    return not any(store.is_valid(p) or os.path.lexists(p) for p in paths)


# ------------------------------------------------------------------ roots


def test_gc_frees_exactly_the_unreachable_paths(store: LocalStore, tmp_path: Path) -> None:
    kept = _chain(store, "kept", 3)
    garbage = _chain(store, "junk", 2)
    result_link = tmp_path / "result"
    add_perm_root(store.store_dir, store.state_dir, kept[-1], str(result_link))

    first = collect_garbage(store)
    assert first.deleted == garbage[::-1]  # referrers before references
    assert _valid_and_present(store, kept) and _gone(store, garbage)

    result_link.unlink()
    second = collect_garbage(store)
    assert second.deleted == kept[::-1]
    assert second.bytes_freed > 0
    assert _gone(store, kept)
    assert os.listdir(auto_roots_dir(store.state_dir)) == []  # the dead indirect root went too


def test_direct_root_and_root_inside_a_path(store: LocalStore) -> None:
    paths = _chain(store, "p", 2)
    direct = Path(roots_dir(store.state_dir)) / "profiles" / "mine"
    direct.parent.mkdir(parents=True)
    direct.symlink_to(paths[1])
    assert find_roots(store.store_dir, store.state_dir) == {paths[1]: {str(direct)}}
    assert collect_garbage(store).deleted == []
    direct.unlink()
    direct.symlink_to(paths[0] + "/whatever")  # a link into a path keeps the whole path
    assert collect_garbage(store).deleted == [paths[1]]
    assert _valid_and_present(store, paths[:1])


def test_add_root_refuses_to_clobber_a_file(store: LocalStore, tmp_path: Path) -> None:
    path = store.add_text("x", "x")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(RunnerError) as e:
        add_perm_root(store.store_dir, store.state_dir, path, str(tmp_path / "file"))
    assert e.value.reason == "bad-root"
    assert (tmp_path / "file").read_text() == "precious"
    with pytest.raises(RunnerError) as e:
        add_perm_root(store.store_dir, store.state_dir, path, path + "-link")
    assert e.value.reason == "bad-root"


def test_cli_add_root_follows_links_and_gc_reports(store: LocalStore, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    paths = _chain(store, "c", 2)
    other = tmp_path / "other"
    other.symlink_to(paths[1])
    assert run(["store", "add-root", str(tmp_path / "keep"), str(other)]) == 0
    assert os.readlink(tmp_path / "keep") == paths[1]
    store.add_text("loose", "loose")
    _added_elsewhere(store)
    capsys.readouterr()
    assert run(["gc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 store paths would be deleted" in out
    assert run(["gc"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("1 store paths deleted, ") and last.endswith(" MiB freed")
    assert _valid_and_present(store, paths)


def test_dry_run_deletes_nothing(store: LocalStore) -> None:
    paths = _chain(store, "d", 3)
    result = collect_garbage(store, GCOptions(dry_run=True))
    assert result.deleted == paths[::-1]
    assert _valid_and_present(store, paths)


def test_max_freed_stops_early(store: LocalStore) -> None:
    paths = [store.add_text(f"big{i}", str(i) * 100_000) for i in range(4)]
    _added_elsewhere(store)
    result = collect_garbage(store, GCOptions(max_freed=1))
    assert len(result.deleted) == 1
    assert sum(store.is_valid(p) for p in paths) == 3
    assert run(["gc", "--max-freed", "150K"]) == 0
    assert sum(store.is_valid(p) for p in paths) == 1
    assert run(["gc", "--max-freed", "lots"]) == 1


def _built(store: LocalStore) -> tuple[str, str, str]:
    """(source, .drv, output): a derivation and its registered output."""
    src = store.add_text("src", "source")
    filled = fill_output_paths(Derivation(
        outputs={"out": DerivationOutput("")}, input_drvs={}, input_srcs=[src],
        system="x86_64-linux", builder="/bin/sh", args=["-c", "echo hi > $out"],
        env={"name": "hello", "builder": "/bin/sh", "system": "x86_64-linux"}),
        store.store_dir, store.read_derivation, {})
    out = filled.outputs["out"].path
    drv = store.write_derivation(filled)
    Path(out).write_text("hi\n")
    nar_hash, nar_size = nar.hash_path(out)
    store.register_valid_paths([PathInfo(out, nar_hash, nar_size, deriver=drv)])
    _added_elsewhere(store)
    return src, drv, out


def test_keep_derivations_and_keep_outputs(store: LocalStore, tmp_path: Path) -> None:
    src, drv, out = _built(store)
    link = tmp_path / "result"
    add_perm_root(store.store_dir, store.state_dir, out, str(link))
    dry = GCOptions(dry_run=True, keep_derivations=False)
    assert collect_garbage(store, dry).deleted == [drv, src]
    kept = GCOptions(dry_run=True)  # keep_derivations is the default, as in Nix
    assert collect_garbage(store, kept).deleted == []
    add_perm_root(store.store_dir, store.state_dir, drv, str(link))
    assert collect_garbage(store, dry).deleted == [out]
    assert collect_garbage(store, GCOptions(keep_outputs=True)).deleted == []
    assert collect_garbage(store).deleted == [out]
    assert _valid_and_present(store, [src, drv])


# ------------------------------------------------------------------ temporary roots


HOLDER = textwrap.dedent("""
    import hashlib, sys
    from runner.store.local_store import LocalStore
    from runner.store.paths import make_text_path

    store_dir, state_dir, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = LocalStore(store_dir, state_dir)
    previous = []
    for i in range(count):
        text = f"{prefix} {i} {previous}"
        path = make_text_path(f"{prefix}{i}", hashlib.sha256(text.encode()).digest(),
                              previous, store.store_dir)
        store.temp_roots.add_temp_root(path)  # before the path exists, as the protocol requires
        assert store.add_text(f"{prefix}{i}", text, previous) == path
        print(path, flush=True)
        previous = [path]
    print("ready", flush=True)
    sys.stdin.read()
""")


def _holder(store: LocalStore, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, store.store_dir, store.state_dir, prefix, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read_paths(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    paths: list[str] = []
    for line in proc.stdout:
        if line.strip() == "ready":
            return paths
        paths.append(line.strip())
    raise AssertionError(f"holder died with {proc.wait()}")


def test_temp_roots_of_a_live_process_survive_gc(store: LocalStore) -> None:
    proc = _holder(store, "held", 3)
    try:
        paths = _read_paths(proc)
        assert collect_garbage(store).deleted == []
        assert _valid_and_present(store, paths)
        assert set(read_temp_roots(store.state_dir)) == set(paths)
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    # Once the process is gone its roots are too.
    assert collect_garbage(store).deleted == paths[::-1]
    assert os.listdir(os.path.join(store.state_dir, "temproots")) == []


def test_temp_roots_of_a_killed_process_are_stale(store: LocalStore) -> None:
    proc = _holder(store, "killed", 2)
    paths = _read_paths(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_temp_roots(store.state_dir) == {}
    assert collect_garbage(store).deleted == paths[::-1]


GC_LOOP = textwrap.dedent("""
    import os, sys
    from runner.store.gc import collect_garbage
    from runner.store.local_store import LocalStore

    store = LocalStore(sys.argv[1], sys.argv[2])
    count = 0
    while not os.path.exists(sys.argv[3]) or count == 0:
        collect_garbage(store)
        count += 1
    print(count)
""")


def test_gc_running_while_other_processes_add_deletes_nothing_they_need(
        store: LocalStore, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    gc_loop = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, store.store_dir, store.state_dir, str(stop)],
        stdout=subprocess.PIPE, text=True)
    holders = [_holder(store, f"race{n}-", 30) for n in range(2)]
    try:
        held = [_read_paths(p) for p in holders]
        stop.touch()
        out, _ = gc_loop.communicate()
        assert gc_loop.returncode == 0 and int(out) >= 1
        collect_garbage(store)
        for paths in held:
            assert len(paths) == 30
            assert _valid_and_present(store, paths)
    finally:
        stop.touch()
        gc_loop.wait()
        for p in holders:
            p.communicate("")
    assert all(p.returncode == 0 for p in holders)
    assert len(collect_garbage(store).deleted) == 60


def test_gc_killed_midway_leaves_a_consistent_store(store: LocalStore, tmp_path: Path) -> None:
    chains = [_chain(store, f"k{n}-", 20) for n in range(10)]
    stop = tmp_path / "never"
    gc = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, store.store_dir, store.state_dir, str(stop)])
    try:
        # Kill it wherever it happens to be once it has started deleting.
        while all(os.path.lexists(c[-1]) for c in chains) and gc.poll() is None:
            pass
    finally:
        gc.kill()
        gc.wait()
    report = verify_store(store, check_contents=True)
    assert report.problems == []  # every valid path is whole, every reference valid
    collect_garbage(store)
    assert all(_gone(store, c) for c in chains)


def test_temp_roots_in_this_process(store: LocalStore) -> None:
    path = store.add_text("mine", "mine")
    _added_elsewhere(store)
    roots = TempRoots(store.state_dir)
    roots.add_temp_root(path)
    # The collector's own open of the file conflicts with our lock: we look alive.
    assert collect_garbage(store).deleted == []
    roots.close()
    assert collect_garbage(store).deleted == [path]


# ------------------------------------------------------------------ leftovers


def test_leftovers_and_stale_lock_files_are_removed(store: LocalStore) -> None:
    leftover = os.path.join(store.store_dir, "0" * 32 + "-leftover")
    os.mkdir(leftover)
    Path(leftover, "f").write_text("partial")
    busy = os.path.join(store.store_dir, "1" * 32 + "-busy")
    os.mkdir(busy)
    Path(store.store_dir, "2" * 32 + "-old.lock").write_text("")
    Path(store.store_dir, ".link-tmp-1-x").write_text("")  # an optimiser that crashed
    with PathLocks([busy]):
        result = collect_garbage(store)
        assert result.leftovers == [os.path.join(store.store_dir, ".link-tmp-1-x"), leftover]
        assert result.locks_removed == 1
        assert os.path.isdir(busy)  # its builder holds the lock
        assert os.path.exists(busy + ".lock")
    assert sorted(os.listdir(store.store_dir)) == [STATE_MARKER, os.path.basename(busy)]


def test_drop_failures_is_explicit(store: LocalStore) -> None:
    store.register_failure(store.store_dir + "/" + "3" * 32 + "-out", None, 1, "boom")
    collect_garbage(store)
    assert len(store.list_failures()) == 1
    assert collect_garbage(store, GCOptions(drop_failures=True)).failures_dropped == 1
    assert store.list_failures() == []


# ------------------------------------------------------------------ delete


def test_delete_refuses_referenced_paths_saying_by_what(store: LocalStore) -> None:
    a, b = _chain(store, "r", 2)
    with pytest.raises(RunnerError) as e:
        delete_paths(store, [a])
    assert e.value.reason == "in-use" and b in str(e.value)
    assert _valid_and_present(store, [a, b])
    assert delete_paths(store, [a, b]).deleted == [b, a]  # together is fine, referrer first
    assert _gone(store, [a, b])


def test_delete_refuses_rooted_paths(store: LocalStore, tmp_path: Path) -> None:
    path = store.add_text("rooted", "rooted")
    _added_elsewhere(store)
    add_perm_root(store.store_dir, store.state_dir, path, str(tmp_path / "result"))
    with pytest.raises(RunnerError) as e:
        delete_paths(store, [path])
    assert e.value.reason == "rooted" and str(tmp_path / "result") in str(e.value)
    roots = TempRoots(store.state_dir)
    other = store.add_text("temp", "temp")
    _added_elsewhere(store)
    roots.add_temp_root(other)
    with pytest.raises(RunnerError) as e:
        delete_paths(store, [other])
    assert e.value.reason == "rooted" and "temporary root" in str(e.value)
    roots.close()
    assert delete_paths(store, [other]).deleted == [other]


def test_cli_delete_errors_are_one_line(store: LocalStore,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = _chain(store, "e", 2)
    assert run(["store", "delete", a]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot delete") and "still referenced" in err
    assert run(["store", "delete", "/not/in/store"]) == 1
    assert run(["store", "delete", store.store_dir + "/" + "4" * 32 + "-absent"]) == 1
    assert "not in the store" in capsys.readouterr().err


# ------------------------------------------------------------------ with the real worker


SPEC = """\
version: 1
inputs:
  src: ./src
derivations:
  dep:
    builder: /bin/sh
    args: ["-c", "echo dep > $out"]
  main:
    builder: /bin/sh
    args: ["-c", "touch $STARTED; while [ ! -e $GO ]; do sleep 0.01; done;
                  cat ${{ dep }} ${{ src }}/f > $out"]
    env: {GO: "%(go)s", STARTED: "%(started)s"}
"""


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("hi\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"go": tmp_path / "go", "started": tmp_path / "started"})
    return spec


def _build(tmp_path: Path, spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "build", "--option", "sandbox", "off", str(spec),
         "main"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_gc_after_a_build_keeps_the_result_until_its_link_goes(store: LocalStore,
                                                               tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "go").touch()
    proc = _build(tmp_path, spec)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    main = out.strip()
    assert os.readlink(tmp_path / "result") == main
    deleted = collect_garbage(store, GCOptions(keep_derivations=False)).deleted
    assert main not in deleted and len(deleted) == 4  # two .drv files, src, dep
    assert (tmp_path / "result").read_text() == "dep\nhi\n"
    (tmp_path / "result").unlink()
    assert collect_garbage(store).deleted == [main]


def test_gc_during_a_build_deletes_nothing_the_build_needs(store: LocalStore,
                                                           tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    proc = _build(tmp_path, spec)
    try:
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)  # polling only; nothing asserts on time
        collect_garbage(store)
    finally:
        (tmp_path / "go").touch()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert (tmp_path / "result").read_text() == "dep\nhi\n"


def test_a_state_dir_belongs_to_one_store(tmp_path: Path, state_dir: str) -> None:
    """A second store on the same state dir is refused: otherwise GC would see the first
    store's paths as dead (their roots point elsewhere) and delete them."""
    with LocalStore(str(tmp_path / "store-a"), state_dir) as a:
        kept = a.add_text("kept", "kept")
    with pytest.raises(RunnerError) as e:
        LocalStore(str(tmp_path / "store-b"), state_dir)
    assert e.value.reason == "store-mismatch" and "store-a" in str(e.value)
    assert run(["gc", "--store-dir", str(tmp_path / "store-b"), "--state-dir", state_dir]) == 1
    assert os.path.exists(kept)


def test_gc_never_deletes_files_for_a_row_outside_the_store(store: LocalStore,
                                                           tmp_path: Path) -> None:
    outside = tmp_path / ("0" * 32 + "-outside")
    outside.write_text("not the store's")
    _raw_insert_valid(store, str(outside))
    collect_garbage(store)
    assert outside.read_text() == "not the store's"


def test_gc_removes_the_staging_dir_of_a_killed_sandboxed_build(store: LocalStore) -> None:
    out = os.path.join(store.store_dir, "1" * 32 + "-slow")
    staging = os.path.join(store.store_dir, ".sandbox-" + os.path.basename(out))
    os.makedirs(os.path.join(staging, "x"))
    os.chmod(os.path.join(staging, "x"), 0o555)
    with PathLocks([out]):  # its build is still running: keep
        collect_garbage(store)
        assert os.path.isdir(staging)
    result = collect_garbage(store)
    assert not os.path.lexists(staging) and staging in result.leftovers


def _raw_insert_valid(store: LocalStore, path: str) -> None:
    with store.db.transaction() as conn:
        conn.execute("insert into ValidPaths (path, hash, registrationTime, narSize)"
                     " values (?, ?, 1, 0)", (path, "sha256:" + "0" * 64))


# ------------------------------------------------------------------ keep-derivations / keep-outputs

_TWO_STEP = ("version: 1\nderivations:\n"
             "  dep: {builder: /bin/sh, args: [-c, 'echo dep > $out']}\n"
             "  app: {builder: /bin/sh, args: [-c, 'cat ${{ dep }} > $out; echo app >> $out']}\n")


def _build_linked(tmp_path: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    """Build the two-step spec with a `result` link to app; name -> its --json entry."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(_TWO_STEP)
    # Another process, as in real use: its temporary roots end with it.
    proc = runner_process("build", "--sandbox=off", "--json", "-o", str(tmp_path / "result"),
                          str(spec), "app")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    entries = json.loads(out)
    return {os.path.basename(e["drvPath"]).split("-", 1)[1][:-4]: e for e in entries}


def test_gc_keeps_the_derivation_of_a_rooted_output(
        store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = _build_linked(tmp_path)
    app_drv, app_out = built["app"]["drvPath"], built["app"]["outputs"]["out"]
    assert run(["gc"]) == 0
    capsys.readouterr()
    # keep-derivations (on by default, as in Nix): the .drv and its closure stay.
    assert store.is_valid(app_drv) and store.is_valid(built["dep"]["drvPath"])
    assert store.is_valid(app_out)
    assert not store.is_valid(built["dep"]["outputs"]["out"])  # nothing refers to it
    # Turned off, the .drv is garbage; the rooted output stays.
    assert run(["gc", "--option", "keep-derivations", "false"]) == 0
    assert app_drv in capsys.readouterr().out.split()
    assert not store.is_valid(app_drv) and store.is_valid(app_out)


def test_gc_keep_outputs_keeps_the_outputs_of_a_rooted_derivation(
        store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = _build_linked(tmp_path)
    (tmp_path / "result").unlink()
    drv_link = tmp_path / "drv-link"
    assert run(["store", "add-root", str(drv_link), built["app"]["drvPath"]]) == 0
    assert run(["gc", "--option", "keep-outputs", "true"]) == 0
    capsys.readouterr()
    # The rooted .drv keeps its outputs and, through its inputs, theirs too.
    assert store.is_valid(built["app"]["outputs"]["out"])
    assert store.is_valid(built["dep"]["outputs"]["out"])
    assert run(["gc"]) == 0  # keep-outputs is off by default
    assert built["app"]["outputs"]["out"] in capsys.readouterr().out.split()
    assert store.is_valid(built["app"]["drvPath"])


def test_gc_deletes_stale_lock_files_of_live_paths(store: LocalStore, tmp_path: Path) -> None:
    (path,) = _chain(store, "rooted", 1)
    add_perm_root(store.store_dir, store.state_dir, path, str(tmp_path / "result"))
    # A process that dies holding the path's lock (SIGKILL: no clean-up) leaves the file.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from runner.store.locks import PathLocks;"
         f" locks = PathLocks([{path!r}]); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert collect_garbage(store).deleted == []
    assert os.path.exists(path + ".lock")  # held: a build or add in progress
    holder.kill()
    holder.wait()
    assert os.path.exists(path + ".lock")
    collect_garbage(store)
    assert not os.path.exists(path + ".lock") and _valid_and_present(store, [path])


# ------------------------------------------------------------------ one store, one state dir


SOLO = "version: 1\nderivations:\n  solo: {{builder: /bin/sh, args: [-c, 'echo {text} > $out']}}\n"


def test_a_second_state_dir_on_one_store_is_refused(tmp_path: Path) -> None:
    """Issue 23: state dir y built into x's store, x's gc then deleted y's rooted output."""
    store_dir = str(tmp_path / "S")
    spec = tmp_path / "solo.yaml"

    def runner(state: str, *argv: str) -> tuple[int, str, str]:
        env = {**os.environ, "RUNNER_STORE_DIR": store_dir,
               "RUNNER_STATE_DIR": str(tmp_path / state)}
        proc = runner_process(*argv, env=env, cwd=str(tmp_path))
        out, err = proc.communicate()
        return proc.returncode, out, err

    spec.write_text(SOLO.format(text="one"))
    code, out, err = runner("x", "build", "--sandbox=off", str(spec), "-o", "x-link")
    assert code == 0, err
    x_out = out.strip()
    spec.write_text(SOLO.format(text="two"))
    code, _, err = runner("y", "build", "--sandbox=off", str(spec), "-o", "y-link")
    assert code == 1 and not (tmp_path / "y-link").exists()
    assert err.startswith(f"error: the store '{store_dir}' belongs to the state dir "
                          f"'{tmp_path / 'x'}', not '{tmp_path / 'y'}'")
    code, out, err = runner("x", "gc")
    assert code == 0, err
    assert (tmp_path / "x-link").read_text() == "one\n" and x_out not in out
    # Every store entry is one x's database knows: nothing of y's was ever written.
    with LocalStore(store_dir, str(tmp_path / "x")) as x:
        assert all(x.is_valid(os.path.join(store_dir, n))
                   for n in os.listdir(store_dir) if not n.startswith("."))
        assert x.is_valid(x_out)


def test_the_store_binding_names_the_reason(tmp_path: Path) -> None:
    with LocalStore(str(tmp_path / "s"), str(tmp_path / "a")):
        pass
    os.symlink(tmp_path / "a", tmp_path / "a-again")
    with LocalStore(str(tmp_path / "s"), str(tmp_path / "a-again")):  # the same dir
        pass
    with pytest.raises(RunnerError) as caught:
        LocalStore(str(tmp_path / "s"), str(tmp_path / "b"))
    assert caught.value.reason == "store-mismatch"
    assert not os.path.exists(tmp_path / "s" / ".links")  # refused before any change


def test_gc_dry_run_lists_exactly_what_gc_deletes(store: LocalStore, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    kept = _chain(store, "kept", 2)
    garbage = _chain(store, "junk", 3)
    busy = _chain(store, "busy", 2)
    add_perm_root(store.store_dir, store.state_dir, kept[-1], str(tmp_path / "result"))
    d = store.store_dir
    os.mkdir(os.path.join(d, "0" * 32 + "-interrupted"))  # an add that died mid-way
    Path(d, "0" * 32 + "-interrupted", "f").write_text("partial")
    os.mkdir(os.path.join(d, ".tmp-999999999-abc"))  # a temp dir whose process is gone
    Path(d, ".link-tmp-1-x").write_text("")  # an optimiser that crashed
    os.mkdir(os.path.join(d, ".sandbox-" + "1" * 32 + "-out"))  # a killed sandboxed build
    Path(d, "2" * 32 + "-old.lock").write_text("")
    with PathLocks([busy[-1]]):  # being rebuilt: it, and so what it refers to, stay
        before = set(os.listdir(d))
        assert run(["gc", "--dry-run", "--json"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert set(os.listdir(d)) == before  # a dry run changes nothing
        assert run(["gc", "--json"]) == 0
        real = json.loads(capsys.readouterr().out)
    assert (dry["deleted"], dry["leftovers"]) == (real["deleted"], real["leftovers"])
    assert real["deleted"] == garbage[::-1] and dry["dryRun"] and not real["dryRun"]
    assert len(real["leftovers"]) == 4 and dry["lockFilesRemoved"] == real["lockFilesRemoved"]
    assert dry["bytesFreed"] == real["bytesFreed"] > 0
    # Every entry that went is one it listed (lock files are counted).
    vanished = {os.path.join(d, n) for n in before - set(os.listdir(d))
                if not n.endswith(".lock")}
    assert vanished == set(real["deleted"]) | set(real["leftovers"])
    assert _valid_and_present(store, kept + busy)


def test_cli_gc_json(store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = _chain(store, "junk", 2)
    assert run(["gc", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == garbage[::-1] and report["bytesFreed"] > 0
    assert report["dryRun"] is False and report["leftovers"] == []
    schema = json.loads(resources.files("runner").joinpath("schemas/gc.schema.json").read_text())
    jsonschema.validate(report, schema)
    with pytest.raises(jsonschema.ValidationError):  # control: the schema does check
        jsonschema.validate({**report, "bytesFreed": "0"}, schema)


def test_temporary_roots_belong_to_a_store_and_end_with_it(store: LocalStore) -> None:
    with LocalStore(store.store_dir, store.state_dir) as other:
        path = other.add_text("held", "held")
        assert collect_garbage(store).deleted == []  # the open store's roots keep it
    # Closed: its roots are gone although this process lives on (no process-global).
    assert collect_garbage(store).deleted == [path]


def test_verify_repair_keeps_a_broken_derivation_a_root_keeps_alive(store: LocalStore,
                                                                    tmp_path: Path) -> None:
    _, drv, out = _built(store)
    add_perm_root(store.store_dir, store.state_dir, out, str(tmp_path / "result"))
    os.chmod(drv, 0o644)
    Path(drv).write_text("Derive(broken")
    report = verify_store(store, check_contents=True, repair=True)  # no rebuild, no cache
    assert not report.ok and store.is_valid(drv) and os.path.exists(drv)
    assert report.unfixed == [f"'{drv}' is broken and could not be rebuilt or substituted; "
                              "it is kept because a GC root keeps it alive"]
    # Without keep-derivations it is garbage, and repair removes it.
    report = verify_store(store, check_contents=True, repair=True,
                          keep=GCOptions(keep_derivations=False))
    assert report.ok and not store.is_valid(drv) and store.is_valid(out)


def test_first_users_racing_for_a_new_store_bind_it_to_one_state_dir(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from runner.errors import RunnerError
        from runner.store.local_store import LocalStore
        sys.stdin.readline()  # the start gate: every process opens at once
        try:
            LocalStore(sys.argv[1], sys.argv[2]).close()
            print("bound")
        except RunnerError as e:
            print(e.reason)
    """)
    store_dir = str(tmp_path / "fresh")
    procs = [subprocess.Popen([sys.executable, "-c", script, store_dir, str(tmp_path / f"s{i}")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    answers = sorted(proc.communicate()[0].strip() for proc in procs)
    assert answers == ["bound", "store-mismatch", "store-mismatch"]
    assert sorted(os.listdir(store_dir)) == [STATE_MARKER]  # no temp file left behind
