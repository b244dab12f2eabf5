"""The local store: atomic adds, registration invariants, queries, failures, deletion."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.errors import RunnerError
from runner.store import nar
from runner.store.canonicalise import canonicalise, remove_tree
from runner.store.derivation import (
    Derivation,
    DerivationOutput,
    derivation_path,
    fill_output_paths,
)
from runner.store.hashes import hash_bytes
from runner.store.layout import STATE_MARKER
from runner.store.local_store import LocalStore, open_store
from runner.store.locks import PathLocks
from runner.store.path_info import PathInfo
from runner.store.paths import make_source_path
from runner.store.staging import TempDir


@pytest.fixture
def store(store_dir: str, state_dir: str) -> Iterator[LocalStore]:
    with LocalStore(store_dir, state_dir) as s:
        yield s


def _fake_path(store: LocalStore, name: str) -> str:
    return make_source_path(name, hash_bytes("sha256", name.encode()).digest, store.store_dir)


def _info(store: LocalStore, name: str, *refs: str) -> PathInfo:
    return PathInfo(_fake_path(store, name), hash_bytes("sha256", b"x"), 1, frozenset(refs))


def _tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "sub" / "deep" / "b").write_bytes(b"\0" * 1000)
    (root / "empty").mkdir()
    (root / "link").symlink_to("a.txt")
    return root


def _store_entries(store: LocalStore) -> set[str]:
    return set(os.listdir(store.store_dir)) - {STATE_MARKER}


# ------------------------------------------------------------------ adding


def test_add_tree_is_valid_read_only_and_canonical(store: LocalStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    path = store.add_path(str(src))
    assert path.startswith(store.store_dir + "/") and path.endswith("-src")
    assert store.is_valid(path)
    info = store.query_path_info(path)
    assert info is not None
    assert (info.nar_hash, info.nar_size) == nar.hash_path(path)
    assert info.nar_hash == nar.hash_path(str(src))[0]
    assert info.ca == f"fixed:r:{info.nar_hash}"
    assert info.references == frozenset() and info.deriver is None
    assert info.registration_time > 0
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(entry)
            assert st.st_mtime == 1
            if not stat.S_ISLNK(st.st_mode):
                assert stat.S_IMODE(st.st_mode) in (0o444, 0o555)
    assert stat.S_IMODE(os.stat(os.path.join(path, "run.sh")).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(os.path.join(path, "a.txt")).st_mode) == 0o444
    assert os.readlink(os.path.join(path, "link")) == "a.txt"
    assert _store_entries(store) == {os.path.basename(path)}  # no temp dir, no lock file


def test_add_is_idempotent_and_content_addressed(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for d in ("one", "two"):
        (tmp_path / d / "f").write_text("same")
    first = store.add_path(str(tmp_path / "one"), name="x")
    assert store.add_path(str(tmp_path / "two"), name="x") == first
    assert store.add_path(str(tmp_path / "one")) != first  # the name is part of the path
    (tmp_path / "two" / "f").write_text("different")
    assert store.add_path(str(tmp_path / "two"), name="x") != first


def test_add_single_file_and_symlink(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("content")
    (tmp_path / "ln").symlink_to("/nowhere")
    file_path = store.add_path(str(tmp_path / "f.txt"))
    assert Path(file_path).read_text() == "content"
    link_path = store.add_path(str(tmp_path / "ln"))
    assert os.readlink(link_path) == "/nowhere"


def test_add_bad_input(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as info:
        store.add_path(str(tmp_path / "missing"))
    assert info.value.reason == "not-found"
    (tmp_path / ".-hidden").write_text("x")  # `.hidden` is fine, as in Nix
    with pytest.raises(RunnerError) as info:
        store.add_path(str(tmp_path / ".-hidden"))
    assert info.value.reason == "bad-name"
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "fifo")
    with pytest.raises(RunnerError) as info:
        store.add_path(str(tmp_path / "d"))
    assert info.value.reason == "bad-file-type"
    assert _store_entries(store) == set()


def test_exclude_filter(store: LocalStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "m.pyc").write_text("junk")
    (src / "sub" / "x.pyc").write_text("junk")
    seen: list[str] = []

    def exclude(rel: str) -> bool:
        seen.append(rel)
        return rel == "__pycache__/" or rel.endswith(".pyc")

    filtered = store.add_path(str(src), exclude=exclude)
    assert "__pycache__/" in seen and "sub/deep/" in seen and "sub/x.pyc" in seen
    assert "__pycache__/m.pyc" not in seen  # excluded dirs are not entered
    clean = _tree(tmp_path / "clean" / "src")
    assert filtered == store.add_path(str(clean))


def test_leftover_at_final_path_is_replaced(store: LocalStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    expected = make_source_path("src", nar.hash_path(str(src))[0].digest, store.store_dir)
    os.makedirs(os.path.join(expected, "garbage"))  # an interrupted add's remains
    assert store.add_path(str(src)) == expected
    assert not os.path.exists(os.path.join(expected, "garbage"))
    assert nar.hash_path(expected)[0] == nar.hash_path(str(src))[0]


def test_concurrent_adds_of_the_same_tree(store: LocalStore, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    script = (
        "import sys; from runner.store.local_store import LocalStore; "
        "print(LocalStore(sys.argv[1], sys.argv[2]).add_path(sys.argv[3]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, store.store_dir, store.state_dir, str(src)],
            stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outputs) == 1
    (path,) = outputs
    assert store.is_valid(path)
    assert _store_entries(store) == {os.path.basename(path)}


# A subprocess that adds a big tree; the test kills it at some moment.
ADDER = """
import sys
from runner.store import local_store
from runner.store.local_store import LocalStore

# The real add, paused at one point (argv[4]): it says so on stdout, then blocks on
# stdin until the test kills it, so the kill lands exactly there.
point = sys.argv[4]


def pause(where):
    if where == point:
        print(where, flush=True)
        sys.stdin.read()


real_stage, real_rename = local_store.stage_tree, local_store.rename_tree
real_register = LocalStore.register_valid_paths
entries = []


def midway(rel):
    entries.append(rel)
    if len(entries) == 150:  # of the 320 entries
        pause("copying")
    return False


local_store.stage_tree = lambda src, dest, exclude: real_stage(src, dest, midway)


def rename(src, dest):
    pause("moving")
    real_rename(src, dest)


def register(self, infos):
    pause("registering")
    real_register(self, infos)
    pause("registered")


local_store.rename_tree = rename
LocalStore.register_valid_paths = register
store = LocalStore(sys.argv[1], sys.argv[2])
store.add_path(sys.argv[3])
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("crash") / "big"
    for i in range(20):
        d = src / f"d{i}"
        d.mkdir(parents=True)
        for j in range(15):
            (d / f"f{j}").write_bytes(os.urandom(4000))
    return src


@pytest.mark.parametrize("point", ["copying", "moving", "registering", "registered"])
def test_sigkill_during_add_leaves_nothing_half_done(
    store: LocalStore, big_tree: Path, point: str
) -> None:
    src = big_tree
    expected = make_source_path("big", nar.hash_path(str(src))[0].digest, store.store_dir)
    proc = subprocess.Popen(
        [sys.executable, "-c", ADDER, store.store_dir, store.state_dir, str(src), point],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == f"{point}\n"  # the add is there, mid-operation
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert "done" not in out  # killed before the add returned
    assert store.is_valid(expected) == (point == "registered")
    if point == "registering":  # in place but not valid: a leftover the next add replaces
        assert os.path.isdir(expected)

    # Whatever got registered is complete and matches its recorded hash.
    for (path,) in store.db.execute("select path from ValidPaths").fetchall():
        info = store.query_path_info(path)
        assert info is not None
        assert nar.hash_path(path) == (info.nar_hash, info.nar_size)
    locks = PathLocks()
    assert locks.try_lock([expected])  # the kernel dropped the dead adder's lock
    locks.unlock()
    store.remove_stale_temp()
    assert not [e for e in _store_entries(store) if e.startswith(TempDir.PREFIX)]
    assert store.add_path(str(src)) == expected
    assert nar.hash_path(expected)[0] == nar.hash_path(str(src))[0]


def test_stale_temp_of_a_live_add_is_kept(store: LocalStore) -> None:
    with TempDir(store.store_dir) as tmp:
        assert store.remove_stale_temp() == 0
        assert os.path.isdir(tmp.path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(os.path.join(store.store_dir, f"{TempDir.PREFIX}{dead}-abc", "x"))
    assert store.remove_stale_temp() == 1
    assert _store_entries(store) == set()


# ------------------------------------------------------------------ text and derivations


def test_add_text_with_references(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "dep").write_text("dep")
    with pytest.raises(RunnerError) as info:
        store.add_text("t", "text", [os.path.join(store.store_dir, "0" * 32 + "-dep")])
    assert info.value.reason == "closure"
    dep = store.add_path(str(tmp_path / "dep"))
    path = store.add_text("t", f"uses {dep}", [dep])
    assert Path(path).read_text() == f"uses {dep}"
    assert store.add_text("t", f"uses {dep}", [dep]) == path
    info_ = store.query_path_info(path)
    assert info_ is not None and info_.references == {dep}
    assert info_.ca == f"text:{hash_bytes('sha256', f'uses {dep}'.encode())}"
    assert store.query_references(path) == {dep}
    assert store.query_referrers(dep) == {path}
    assert store.compute_closure([path]) == {path, dep}


def _drv(store: LocalStore, src: str) -> Derivation:
    """A derivation with the output path it computes to (registration checks it)."""
    return fill_output_paths(Derivation(
        outputs={"out": DerivationOutput("")},
        input_drvs={},
        input_srcs=[src],
        system="x86_64-linux",
        builder="/bin/sh",
        args=["-c", "echo hi > $out"],
        env={"name": "hello", "builder": "/bin/sh", "system": "x86_64-linux"},
    ), store.store_dir, store.read_derivation, {})


def test_write_and_read_derivation(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "s").write_text("s")
    src = store.add_path(str(tmp_path / "s"))
    drv = _drv(store, src)
    path = store.write_derivation(drv)
    assert path == derivation_path(drv, store.store_dir)
    assert path.endswith("-hello.drv")
    assert store.read_derivation(path) == drv
    assert store.query_references(path) == {src}
    out = drv.outputs["out"].path
    assert store.query_valid_derivers(out) == {path}
    assert store.query_derivation_outputs(path) == {"out": out}


def test_read_corrupt_derivation(store: LocalStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.drv"
    bad.write_bytes(b"Derive([(\"out\",")
    with pytest.raises(RunnerError) as info:
        store.read_derivation(str(bad))
    assert info.value.reason == "bad-drv"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(RunnerError) as info:
        store.read_derivation(str(bad))
    assert info.value.reason == "bad-drv"
    with pytest.raises(RunnerError) as info:
        store.read_derivation(str(tmp_path / "missing.drv"))
    assert info.value.reason == "bad-drv"


def test_any_path_named_like_a_drv_is_parsed_and_checked(store: LocalStore,
                                                         tmp_path: Path) -> None:
    """As in Nix (`nix-store --add x.drv` is refused): a builder builds any valid `.drv`,
    so one added as plain data is checked like one added as text."""
    (tmp_path / "x.drv").write_text("not a derivation")
    with pytest.raises(RunnerError) as info:
        store.add_path(str(tmp_path / "x.drv"))
    assert info.value.reason == "bad-drv"
    assert not store.is_valid(make_source_path("x.drv", nar.hash_path(
        str(tmp_path / "x.drv"))[0].digest, store.store_dir))
    (tmp_path / "s").write_text("s")
    drv = _drv(store, store.add_path(str(tmp_path / "s")))
    (tmp_path / "hello.drv").write_bytes(drv.data)  # the right outputs: accepted as data
    assert store.is_valid(store.add_path(str(tmp_path / "hello.drv")))


# ------------------------------------------------------------------ registration


def test_closure_invariant(store: LocalStore) -> None:
    a, b = _info(store, "a"), _info(store, "b")
    b_refs_a = _info(store, "b", a.path)
    with pytest.raises(RunnerError) as info:
        store.register_valid_paths([b_refs_a])
    assert info.value.reason == "closure"
    assert not store.is_valid(b.path)  # the transaction was rolled back
    store.register_valid_paths([b_refs_a, a])  # together, in any order
    assert store.query_references(b.path) == {a.path}


def test_failed_batch_registers_nothing(store: LocalStore) -> None:
    good = _info(store, "good")
    bad = _info(store, "bad", _fake_path(store, "missing"))
    with pytest.raises(RunnerError) as e:
        store.register_valid_paths([good, bad])
    assert e.value.reason == "closure"
    assert not store.is_valid(good.path)


def test_cycles_are_refused_self_references_allowed(store: LocalStore) -> None:
    a, b = _fake_path(store, "a"), _fake_path(store, "b")
    with pytest.raises(RunnerError) as info:
        store.register_valid_paths([_info(store, "a", b), _info(store, "b", a)])
    assert info.value.reason == "cycle"
    assert not store.is_valid(a)
    store.register_valid_paths([_info(store, "a", a)])
    assert store.query_references(a) == {a}


def test_bad_store_path_is_refused(store: LocalStore) -> None:
    info = PathInfo("/elsewhere/x", hash_bytes("sha256", b""), 0)
    with pytest.raises(RunnerError) as err:
        store.register_valid_paths([info])
    assert err.value.reason == "bad-path"


def test_reregistering_updates_info_keeps_deriver(store: LocalStore) -> None:
    drv = _fake_path(store, "x.drv")
    first = PathInfo(_fake_path(store, "p"), hash_bytes("sha256", b"1"), 1, deriver=drv)
    store.register_valid_paths([first])
    second = PathInfo(first.path, hash_bytes("sha256", b"2"), 2)
    store.register_valid_paths([second])
    info = store.query_path_info(first.path)
    assert info is not None
    assert (info.nar_hash, info.nar_size, info.deriver) == (second.nar_hash, 2, drv)
    assert store.query_deriver(first.path) == drv


def test_closure_of_a_chain(store: LocalStore) -> None:
    c = _info(store, "c")
    b = _info(store, "b", c.path)
    a = _info(store, "a", b.path, a_self := _fake_path(store, "a"))
    other = _info(store, "other")
    store.register_valid_paths([c, b, a, other])
    assert a_self == a.path
    assert store.compute_closure([a.path]) == {a.path, b.path, c.path}
    assert store.compute_closure([b.path, other.path]) == {b.path, c.path, other.path}
    assert store.compute_closure([]) == set()
    with pytest.raises(RunnerError) as info:
        store.compute_closure([_fake_path(store, "nope")])
    assert info.value.reason == "invalid-path"


def test_query_path_from_hash_part(store: LocalStore) -> None:
    infos = [_info(store, name) for name in ("a", "b", "c")]
    store.register_valid_paths(infos)
    for info in infos:
        part = os.path.basename(info.path)[:32]
        assert store.query_path_from_hash_part(part) == info.path
    assert store.query_path_from_hash_part("0" * 32) is None


def test_queries_on_invalid_paths(store: LocalStore) -> None:
    missing = _fake_path(store, "missing")
    assert not store.is_valid(missing)
    assert store.query_path_info(missing) is None
    assert store.query_deriver(missing) is None
    assert store.query_valid_derivers(missing) == set()
    with pytest.raises(RunnerError) as e:
        store.query_references(missing)
    assert e.value.reason == "invalid-path"


# ------------------------------------------------------------------ failures


def test_failure_records(store: LocalStore) -> None:
    out1, out2 = _fake_path(store, "o1"), _fake_path(store, "o2")
    drv = _fake_path(store, "d.drv")
    assert store.query_failure(out1) is None
    store.register_failure(out1, drv, 2, "line 1\nline 2\n")
    store.register_failure(out2, None, None, "")
    record = store.query_failure(out1)
    assert record is not None
    assert (record.path, record.drv_path, record.exit_status) == (out1, drv, 2)
    assert record.log_tail == "line 1\nline 2\n" and record.time > 0
    assert [r.path for r in store.list_failures()] == sorted([out1, out2])
    assert store.clear_failures([out1]) == 1
    assert store.query_failure(out1) is None
    assert store.clear_failures() == 1
    assert store.list_failures() == []


def test_registration_supersedes_failure(store: LocalStore) -> None:
    info = _info(store, "o")
    store.register_failure(info.path, None, 1, "boom")
    store.register_valid_paths([info])
    assert store.query_failure(info.path) is None


def test_failures_survive_reopen(store_dir: str, state_dir: str) -> None:
    with LocalStore(store_dir, state_dir) as first:
        path = _fake_path(first, "o")
        first.register_failure(path, None, 1, "boom")
    with open_store(SimpleNamespace(store_dir=store_dir, state_dir=state_dir)) as second:
        record = second.query_failure(path)
        assert record is not None and record.log_tail == "boom"


# ------------------------------------------------------------------ deletion


def test_delete_path_respects_referrers(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "dep").mkdir()
    (tmp_path / "dep" / "f").write_text("x")
    dep = store.add_path(str(tmp_path / "dep"))
    user = store.add_text("user", dep, [dep])
    with pytest.raises(RunnerError) as info:
        store.delete_path(dep)
    assert info.value.reason == "in-use"
    assert store.is_valid(dep) and os.path.exists(dep)
    store.delete_path(user)
    store.delete_path(dep)
    assert not store.is_valid(dep) and not os.path.lexists(dep)
    assert _store_entries(store) == set()


def test_delete_self_referencing_path(store: LocalStore) -> None:
    info = _info(store, "selfish", _fake_path(store, "selfish"))
    store.register_valid_paths([info])
    store.delete_path(info.path)
    assert not store.is_valid(info.path)


# ------------------------------------------------------------------ canonicalisation


def test_canonicalise_modes_and_times(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    (root / "suid").write_text("x")
    (root / "suid").chmod(0o4755)
    (root / "private").write_text("x")
    (root / "private").chmod(0o600)
    canonicalise(str(root))
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in root.iterdir()}
    assert modes["suid"] == 0o555 and modes["private"] == 0o444
    assert modes["sub"] == 0o555 and modes["run.sh"] == 0o555 and modes["a.txt"] == 0o444
    assert all(p.lstat().st_mtime == 1 for p in [root, *root.rglob("*")])
    remove_tree(str(root))
    assert not root.exists()


def test_canonicalise_ownership_check(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "mine").write_text("x")
    os.link(root / "mine", root / "hardlink")  # links inside the output are fine
    canonicalise(str(root), from_uid=os.geteuid())
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    (root / "sub").mkdir()
    foreign = root / "sub" / "foreign"
    foreign.write_text("x")
    os.chown(foreign, 12345, -1)  # as if hard-linked in from elsewhere
    with pytest.raises(RunnerError) as info:
        canonicalise(str(root), from_uid=os.geteuid())
    assert info.value.reason == "bad-ownership"


def test_adding_a_directory_works_without_root_privileges(tmp_path: Path) -> None:
    """A read-only directory can only be renamed into another parent by its owner if it
    is writable ('..' changes): the store must lift that for the move. Root ignores
    permissions, so as root the CLI runs with every capability dropped."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hi\n")
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    proc = subprocess.run([*drop, sys.executable, "-m", "runner", "store", "add", str(src)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert (Path(path) / "sub" / "f").read_text() == "hi\n"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o555
