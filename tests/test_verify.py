"""Store verification: corrupted files, missing paths, dangling rows, and what --repair does."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from runner.cli.main import run
from runner.store import nar
from runner.store.canonicalise import remove_tree
from runner.store.db import db_path
from runner.store.local_store import LocalStore
from runner.store.roots import add_perm_root
from runner.store.verify import verify_store
from tests.build_helpers import runner_process


@pytest.fixture
def store(store_dir: str, state_dir: str) -> Iterator[LocalStore]:
    with LocalStore(store_dir, state_dir) as s:
        yield s


def _pair(store: LocalStore) -> tuple[str, str]:
    """A text path and another one referring to it."""
    dep = store.add_text("dep", "dependency")
    user = store.add_text("user", f"uses {dep}", [dep])
    return dep, user


def _corrupt(path: str) -> None:
    os.chmod(path, 0o644)
    Path(path).write_text("tampered")
    os.chmod(path, 0o444)


def _raw_sql(state_dir: str, sql: str) -> None:
    """Write behind the store's back, foreign keys off, as a buggy tool would."""
    conn = sqlite3.connect(db_path(state_dir), isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def test_healthy_store_verifies(store: LocalStore, tmp_path: Path) -> None:
    _pair(store)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("f")
    store.add_path(str(tmp_path / "tree"))
    report = verify_store(store, check_contents=True)
    assert report.ok and report.problems == []


def test_corrupted_file_is_found_only_when_checking_contents(store: LocalStore) -> None:
    dep, _ = _pair(store)
    _corrupt(dep)
    assert verify_store(store).ok
    report = verify_store(store, check_contents=True)
    assert not report.ok
    assert report.broken == {dep}
    assert "was modified" in report.problems[0]


def test_repair_removes_a_broken_path_nothing_refers_to(store: LocalStore) -> None:
    _, user = _pair(store)
    _corrupt(user)
    report = verify_store(store, check_contents=True, repair=True)
    assert report.ok and report.fixed == [f"removed broken path '{user}'"]
    assert not store.is_valid(user) and not os.path.lexists(user)
    assert verify_store(store, check_contents=True).problems == []


def test_repair_reports_a_broken_path_that_is_still_referenced(store: LocalStore) -> None:
    dep, user = _pair(store)
    _corrupt(dep)
    report = verify_store(store, check_contents=True, repair=True)
    assert not report.ok
    assert f"still referenced by '{user}'" in report.unfixed[0]
    assert store.is_valid(dep) and store.is_valid(user)  # the closure stays complete


def test_missing_path_is_found_and_repaired_referrers_first(store: LocalStore) -> None:
    dep, user = _pair(store)
    remove_tree(dep)
    remove_tree(user)
    report = verify_store(store)
    assert report.broken == {dep, user} and not report.ok
    assert store.is_valid(dep)  # without --repair nothing changes
    report = verify_store(store, repair=True)
    assert report.ok
    assert report.fixed == [f"removed broken path '{user}'", f"removed broken path '{dep}'"]
    assert not store.is_valid(dep) and not store.is_valid(user)


def test_dangling_rows_are_found_and_dropped(store: LocalStore) -> None:
    dep, user = _pair(store)
    _raw_sql(store.state_dir, "insert into Refs (referrer, reference) values (9999, 1)")
    _raw_sql(store.state_dir,
             "insert into Refs (referrer, reference) select id, 8888 from ValidPaths"
             f" where path = '{user}'")
    report = verify_store(store)
    assert any("reference row" in p and "missing path (id 9999)" in p for p in report.problems)
    assert any(f"'{user}' refers to a missing path (id 8888)" in p for p in report.problems)
    report = verify_store(store, repair=True)
    assert report.ok
    assert "deleted 1 dangling rows" in report.fixed
    assert f"removed broken path '{user}'" in report.fixed
    assert store.is_valid(dep) and not store.is_valid(user)
    assert verify_store(store).problems == []


def test_cli_verify_exit_codes(store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    _, user = _pair(store)
    assert run(["store", "verify", "--check-contents"]) == 0
    assert "store is consistent" in capsys.readouterr().out
    _corrupt(user)
    assert run(["store", "verify", "--check-contents"]) == 1
    captured = capsys.readouterr()
    assert "was modified" in captured.out
    assert captured.err.startswith("error: store verification found 1 problem(s)")
    assert run(["store", "verify", "--check-contents", "--repair"]) == 0
    assert f"fixed: removed broken path '{user}'" in capsys.readouterr().out


def test_cli_verify_repair_rebuilds_a_corrupted_output_in_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nderivations:\n"
                    "  dep: {builder: /bin/sh, args: [-c, 'echo dep > $out']}\n"
                    "  app: {builder: /bin/sh,"
                    " args: [-c, 'cat ${{ dep }} > $out; echo app >> $out']}\n")
    assert run(["build", "--sandbox=off", "--no-out-link", str(spec)]) == 0
    dep, app = capsys.readouterr().out.split()
    _corrupt(dep)  # referenced by app: removing it is not an option, rebuilding is
    assert run(["store", "verify", "--check-contents", "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"fixed: repaired '{dep}'" in out
    assert Path(dep).read_text() == "dep\n" and Path(app).read_text() == "dep\napp\n"
    assert run(["store", "verify", "--check-contents"]) == 0


_LINKED = ("version: 1\nderivations:\n"
           "  app: {builder: /bin/sh, args: [-c, 'echo app > $out']}\n")


def _build_rooted(tmp_path: Path) -> tuple[str, Path]:
    """Build in another process (its temporary roots end with it); (output, result link)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(_LINKED)
    link = tmp_path / "result"
    proc = runner_process("build", "--sandbox=off", "-o", str(link), str(spec))
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return out.strip(), link


def test_repair_rebuilds_a_rooted_output_after_gc(
        store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, link = _build_rooted(tmp_path)
    assert run(["gc"]) == 0  # keeps the .drv of the rooted output
    _corrupt(out)
    assert run(["store", "verify", "--check-contents", "--repair"]) == 0
    assert f"fixed: repaired '{out}'" in capsys.readouterr().out
    assert link.read_text() == "app\n"


def test_repair_never_deletes_a_rooted_path_it_cannot_repair(
        store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, link = _build_rooted(tmp_path)
    assert run(["gc", "--option", "keep-derivations", "false"]) == 0  # no deriver left
    _corrupt(out)
    assert run(["store", "verify", "--check-contents", "--repair"]) == 1
    captured = capsys.readouterr()
    assert f"not fixed: '{out}' is broken and could not be rebuilt or substituted" \
        in captured.out
    assert "all problems fixed" not in captured.out
    assert "error: store verification found 1 problem(s)" in captured.err
    assert store.is_valid(out) and link.read_text() == "tampered"  # kept, link not dangling


def test_repair_keeps_a_broken_path_a_root_keeps_alive(store: LocalStore,
                                                      tmp_path: Path) -> None:
    dep, user = _pair(store)

    add_perm_root(store.store_dir, store.state_dir, user, str(tmp_path / "link"))
    os.unlink(user)  # missing, and rooted
    report = verify_store(store, repair=True)
    assert not report.ok and store.is_valid(user) and store.is_valid(dep)
    assert "it is kept because it is a GC root" in report.unfixed[0]


def _corrupt_in_place(path: str, data: str) -> None:
    """Write into the inode: every hard link to it (its `.links` entry too) changes."""
    os.chmod(path, 0o644)
    with open(path, "r+") as f:
        f.write(data)
        f.truncate()
    os.chmod(path, 0o444)


def _links(store: LocalStore) -> list[str]:
    """The names in `.links` (the output's entry and the .drv's)."""
    return sorted(os.listdir(os.path.join(store.store_dir, ".links")))


def test_optimise_after_repair_does_not_corrupt_again(
        store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, link = _build_rooted(tmp_path)
    assert run(["store", "optimise"]) == 0
    entry = nar.hash_path(out)[0].base32()
    assert entry in _links(store)
    _corrupt_in_place(out, "evil, and longer than it was\n")
    assert run(["store", "verify", "--check-contents"]) == 1
    assert "the link" in capsys.readouterr().out  # the entry is checked too
    assert run(["store", "verify", "--check-contents", "--repair"]) == 0
    printed = capsys.readouterr().out
    assert f"fixed: repaired '{out}'" in printed and "fixed: removed corrupted link" in printed
    assert entry not in _links(store)
    assert run(["store", "optimise"]) == 0
    assert link.read_text() == "app\n"
    assert run(["store", "verify", "--check-contents"]) == 0


@pytest.mark.parametrize("evil", ["APP\n", "a different length\n"], ids=["same-size", "other-size"])
def test_repair_with_auto_optimise(store: LocalStore, tmp_path: Path, evil: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, link = _build_rooted(tmp_path)
    auto = ["--option", "auto-optimise", "true"]
    assert run(["store", "optimise"]) == 0  # as auto-optimise would have left it
    _corrupt_in_place(out, evil)
    assert run(["store", "verify", "--check-contents", "--repair", *auto]) == 0
    assert f"fixed: repaired '{out}'" in capsys.readouterr().out
    assert link.read_text() == "app\n"
    assert run(["store", "verify", "--check-contents", *auto]) == 0
    entry = os.path.join(store.store_dir, ".links", nar.hash_path(out)[0].base32())
    assert os.path.samefile(entry, out)  # optimised again, to a good entry


def test_cli_verify_json(store: LocalStore, capsys: pytest.CaptureFixture[str]) -> None:
    dep, user = _pair(store)
    assert run(["store", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
    _corrupt(user)
    _corrupt(dep)
    assert run(["store", "verify", "--check-contents", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and report["brokenPaths"] == sorted([dep, user])
    assert len(report["problems"]) == 2 and report["notFixed"] == report["problems"]
    assert captured.err.startswith("error: store verification found 2 problem(s)")
    assert run(["store", "verify", "--check-contents", "--repair", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["notFixed"] == []
    schema = json.loads(
        resources.files("runner").joinpath("schemas/verify.schema.json").read_text())
    jsonschema.validate(report, schema)
    with pytest.raises(jsonschema.ValidationError):  # control: the schema does check
        jsonschema.validate({**report, "extra": 1}, schema)
    assert report["fixed"] == [f"removed broken path '{user}'", f"removed broken path '{dep}'"]
