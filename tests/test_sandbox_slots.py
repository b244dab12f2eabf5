"""Staging dirs kept between C-spawn builds with their stubs (runner/sandbox/slots.py).

Each test runs builds in this process, one after the other in one store, as the
worker does: what one build's kept dir held must never show in the next one's
store dir (stale stubs, outputs, what a builder left or replaced), and the
dirs must really be kept (the controls), then gone when the run ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox import native, slots, spawn
from runner.sandbox.storeview import STORE_VIEW_ENV
from runner.store import trash
from tests import sandbox_harness
from tests.test_sandbox_build import _plan

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only"),
    pytest.mark.skipif(native.module() is None,
                       reason="the C spawn is not built here (no C compiler at install)"),
]


@pytest.fixture(autouse=True)
def _no_spares_left() -> Iterator[None]:
    slots.release()
    yield
    slots.release()
    trash.drain()


def _path(tmp_path: Path, name: str) -> str:
    return f"{tmp_path}/store/{sandbox_harness.FAKE_HASH}-{name}"


def _inputs(tmp_path: Path, *names: str) -> list[str]:
    (tmp_path / "store").mkdir(exist_ok=True)
    made = []
    for name in names:
        p = Path(_path(tmp_path, name))
        if name.startswith("l"):
            if not p.is_symlink():
                p.symlink_to("/no/where")
        elif name.startswith("f"):
            p.write_text(name)
        else:
            p.mkdir(exist_ok=True)
            (p / "data").write_text(name)
        made.append(str(p))
    return made


def _build(tmp_path: Path, closure: list[str], script: str, out: str = "out") -> str:
    """Run `script` in the sandbox with `closure`; its stdout (the build must succeed)."""
    out_path = _path(tmp_path, out)
    plan = _plan(tmp_path, argv=["/bin/sh", "-c", script], closure=closure,
                 outputs=[out_path], env={"PATH": "/usr/bin:/bin", "out": out_path,
                                          "NIX_STORE": f"{tmp_path}/store"})
    log = tmp_path / "log"
    with open(log, "wb") as f:
        proc = spawn(plan, stdout=f.fileno(), stderr=subprocess.STDOUT)
        code = proc.wait()
    text = log.read_text()
    assert code == 0, text
    trash.drain()  # the kept dir is emptied on the trash thread
    if os.path.lexists(out_path):
        os.chmod(out_path, 0o700) if os.path.isdir(out_path) else None
        os.system(f"rm -rf '{out_path}'")
    return text


def _kept(tmp_path: Path) -> list[dict[str, tuple[str, int]]]:
    return [dict(s.stubs) for s in slots._spares.get(f"{tmp_path}/store", [])]


LIST = 'ls "$NIX_STORE" | sed "s/^[^-]*-/LS /"; '


@pytest.mark.parametrize("view", ["default", "stubs"])
def test_a_kept_dir_shows_only_this_builds_inputs(tmp_path: Path, view: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if view == "stubs":
        monkeypatch.setenv(STORE_VIEW_ENV, "stubs")
    a, b, c = _inputs(tmp_path, "a", "fb", "c")
    first = _build(tmp_path, [a, b], LIST)
    assert sorted(line for line in first.splitlines() if line.startswith("LS")) == [
        "LS a", "LS fb"]
    kept = _kept(tmp_path)
    assert len(kept) == 1 and sorted(kept[0]) == sorted([os.path.basename(a), os.path.basename(b)])
    second = _build(tmp_path, [b, c], LIST + 'cat "$NIX_STORE"/*-c/data; echo')
    assert sorted(line for line in second.splitlines() if line.startswith("LS")) == [
        "LS c", "LS fb"]  # `a`, stale, is not there
    assert "\nc\n" in f"\n{second}"
    kept = _kept(tmp_path)
    assert len(kept) == 1 and sorted(kept[0]) == sorted([os.path.basename(b), os.path.basename(c)])


def test_what_a_builder_leaves_or_replaces_is_gone_from_the_next_build(tmp_path: Path) -> None:
    monkeypatch_env = {STORE_VIEW_ENV: "stubs"}
    os.environ.update(monkeypatch_env)
    try:
        d, link = _inputs(tmp_path, "d", "link")
        _build(tmp_path, [d, link],
               'set -e; touch "$NIX_STORE/junk"; mkdir "$NIX_STORE/junkdir"; '
               'echo x > "$NIX_STORE/junkdir/f"; rm "$NIX_STORE"/*-link; '
               'ln -s /etc/evil "$NIX_STORE/$(basename ' + link + ')"; chmod 777 "$NIX_STORE"')
        assert len(_kept(tmp_path)) == 1  # the control: the same dir is used next
        second = _build(tmp_path, [d, link],
                        LIST + 'readlink "$NIX_STORE"/*-link; stat -c "MODE %a" "$NIX_STORE"')
        lines = second.splitlines()
        assert sorted(x for x in lines if x.startswith("LS")) == ["LS d", "LS link"]
        assert "/no/where" in lines and "/etc/evil" not in second
        assert "MODE 755" in lines
    finally:
        del os.environ[STORE_VIEW_ENV]


def test_an_output_named_like_a_kept_stub_does_not_exist_yet(tmp_path: Path) -> None:
    """A rebuild (`--check`) of a path an earlier build had as input: its stub goes."""
    (x,) = _inputs(tmp_path, "x")
    _build(tmp_path, [x], "true")
    assert os.path.basename(x) in _kept(tmp_path)[0]
    os.rename(x, f"{x}.aside")
    out = _build(tmp_path, [], 'test -e "$out" && echo EXISTS; echo built > "$out"; echo ok',
                 out="x")
    assert "EXISTS" not in out and "ok" in out


def test_a_kept_dir_gone_behind_runners_back_is_made_afresh(tmp_path: Path) -> None:
    (a,) = _inputs(tmp_path, "a")
    _build(tmp_path, [a], "true")
    (spare,) = [n for n in os.listdir(tmp_path / "store") if n.startswith(".tmp-")]
    os.system(f"rm -rf '{tmp_path}/store/{spare}'")
    assert "LS a" in _build(tmp_path, [a], LIST).splitlines()


def test_a_run_leaves_no_kept_dir(tmp_path: Path) -> None:
    (a,) = _inputs(tmp_path, "a")
    _build(tmp_path, [a], "true")
    store = tmp_path / "store"
    assert any(n.startswith(".tmp-") for n in os.listdir(store))  # the control
    slots.release()
    trash.drain()
    assert sorted(os.listdir(store)) == [os.path.basename(a)]


FS = 'awk -v s="$NIX_STORE" \'$5 == s {print "FS", $9}\' /proc/self/mountinfo'


def test_many_stale_stubs_take_a_new_dir_many_new_ones_the_overlay(tmp_path: Path) -> None:
    old = _inputs(tmp_path, *(f"o{i}" for i in range(slots.STALE_MAX)))
    assert "FS overlay" not in _build(tmp_path, old, FS)
    assert [len(k) for k in _kept(tmp_path)] == [slots.STALE_MAX]
    (few,) = _inputs(tmp_path, "few")
    assert "FS overlay" not in _build(tmp_path, [old[0], few], FS)  # the control: 1 new
    assert sorted(len(k) for k in _kept(tmp_path)) == [2]  # ... 9 stale stubs removed
    assert "FS overlay" not in _build(tmp_path, old, FS)
    assert "FS overlay" not in _build(tmp_path, [], FS)  # 10 stale: a new dir instead
    assert sorted(len(k) for k in _kept(tmp_path)) == [0, slots.STALE_MAX]
    many = _inputs(tmp_path, *(f"n{i}" for i in range(slots.NEW_MAX + 1)))
    assert "FS overlay" in _build(tmp_path, many, FS)
    assert sorted(len(k) for k in _kept(tmp_path)) == [0, slots.STALE_MAX]  # kept as they were


def test_the_probe_leaves_nothing_for_the_trash_thread_in_its_deleted_dir() -> None:
    """The availability probe builds in a temporary store it deletes at once: its kept
    dir must be gone before, or the trash thread renames into a dir being deleted
    (seen in CI: `Directory not empty: 'store'`)."""
    from runner.sandbox import availability

    assert availability.probe.__wrapped__() is None
    assert trash._queue.unfinished_tasks == 0
    assert not [s for s in slots._spares if "runner-sandbox-probe-" in s]
