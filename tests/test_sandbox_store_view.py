"""The store dir inside the sandbox, made both ways (runner/sandbox/storeview.py).

`overlay`: an overlay of the staging store over tmpfs stubs (builds with 4 or
more inputs); `stubs`: the staging store bound, with mount points on disk
(fewer inputs, or where overlayfs cannot mount). Each probe runs both ways,
as the invoking user (root: build uid 30001) and as uid 65534 (user
namespace), and checks which way was really used.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox.storeview import OVERLAY_FROM, STORE_VIEW_ENV
from tests import sandbox_harness
from tests.test_sandbox_build import Sandbox, _unprivileged_sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only")

INPUTS = {f"in{i}": f"data {i}" for i in range(OVERLAY_FROM)}
# What the store's mount looks like inside: its file system type and options (mountinfo).
STORE_FS = """awk -v s="$NIX_STORE" \
    '$5 == s { for (i = 7; $i != "-"; i++); print "FS", $(i+1), $(i+3) }' /proc/self/mountinfo"""


@pytest.fixture(params=[("invoking-user", "overlay"), ("invoking-user", "stubs"),
                        ("uid-65534", "overlay"), ("uid-65534", "stubs"),
                        ("invoking-user-python-spawn", "overlay"),
                        ("invoking-user-python-spawn", "stubs")],
                ids=lambda p: "-".join(p))
def viewed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Sandbox, str]]:
    """Both views, as root and rootless with the C spawn, and as root the Python way
    (which runs the same compiled steps in Python: runner/sandbox/interpret.py)."""
    who, view = request.param
    way = {"spawn": "python"} if who.endswith("python-spawn") else {}
    if who == "uid-65534":
        for box in _unprivileged_sandbox(tmp_path):
            yield Sandbox(functools.partial(box.run, store_view=view), box.build_ids,
                          box.owner), view
        return

    def run(**req: Any) -> dict[str, Any]:
        return sandbox_harness.run({"work": str(tmp_path / "w"), "store_view": view, **way,
                                    **req})

    ids = (30001, 30000) if os.geteuid() == 0 else (1000, 100)
    yield Sandbox(run, ids, (os.geteuid(), os.getegid())), view


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result
    assert result["returncode"] == 0, result["stderr"]
    return result


def _fs(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("FS "))


def _options(stdout: str) -> str:
    return next(line.split()[2] for line in stdout.splitlines() if line.startswith("FS "))


def test_inputs_readable_outputs_written_undeclared_path_invisible(
        viewed: tuple[Sandbox, str]) -> None:
    sandbox, view = viewed
    script = STORE_FS + """
        set -e
        ls "$NIX_STORE" | sed 's/^[^-]*-/LS /'
        cat "$in0/data"; echo; cat "$fin"; echo; cat "$lin/data"; echo
        test -e "$NIX_STORE"/*-secret && echo LEAK exists
        cat "$NIX_STORE"/*-secret/data 2>/dev/null && echo LEAK read
        ls "$NIX_STORE"/*-secret 2>/dev/null && echo LEAK listed
        mkdir "$out" && echo made > "$out/file" && ln -s file "$out/link"
        true
    """
    r = _ok(sandbox.run(script=script, closure=INPUTS, file_inputs={"fin": "file input"},
                        link_inputs={"lin": f"{sandbox_harness.FAKE_HASH}-in1"}))
    lines = r["stdout"].splitlines()
    assert "LEAK" not in r["stdout"]
    assert sorted(line[3:] for line in lines if line.startswith("LS ")) == sorted(
        [*INPUTS, "fin", "lin"])  # the store shows the closure only (no output yet)
    wanted = ["data 0", "file input", "data 1"]
    assert [line for line in lines if line in wanted] == wanted
    # The view really was made the way asked (an overlay, or the staging dir's own fs).
    assert (_fs(r["stdout"]) == "overlay") == (view == "overlay")
    if view == "overlay":  # no sync of the store's whole file system when the build ends
        options = _options(r["stdout"]).split(",")
        assert "volatile" in options or "fsync=volatile" in options  # how 6.x shows it
    assert r["outputs"]["out"]["files"] == {"file": "made\n", "link": "made\n"}  # link followed
    assert r["outputs"]["out"]["uid"] == sandbox.owner[0]
    names = sorted(n.split("-", 1)[1] for n in r["store_listing"])
    assert names == sorted([*INPUTS, "fin", "lin", "out", "secret"])  # no staging left


def test_the_undeclared_path_probe_can_see_a_leak(viewed: tuple[Sandbox, str]) -> None:
    """Control: the same probes do see the store path once it is declared."""
    sandbox, _ = viewed
    script = """cat "$NIX_STORE"/*-secret/data && echo LEAK read
                ls "$NIX_STORE" | grep -q secret && echo LEAK listed; true"""
    r = _ok(sandbox.run(script=script, closure=INPUTS, declare_secret=True))
    assert "LEAK read" in r["stdout"] and "LEAK listed" in r["stdout"]


def test_inputs_are_read_only_and_store_writes_stay_in_staging(
        viewed: tuple[Sandbox, str]) -> None:
    sandbox, _ = viewed
    script = """
        for p in "$in0/x" "$in0/data" "$fin" "$NIX_STORE/$(basename "$in1")/new"; do
            (echo pwned >> "$p") 2>/dev/null && echo "WROTE $p"
        done
        rm -rf "$in0" "$lin" "$fin" 2>/dev/null
        chmod 777 "$in1" 2>/dev/null && echo "CHMOD"
        echo junk > "$NIX_STORE/junk"
        echo ok > "$out"
    """
    r = _ok(sandbox.run(script=script, closure=INPUTS, file_inputs={"fin": "file input"},
                        link_inputs={"lin": "elsewhere"}))
    assert "WROTE" not in r["stdout"] and "CHMOD" not in r["stdout"]
    store = r["store"]
    assert Path(sandbox_harness.store_path(store, "in0"), "data").read_text() == "data 0"
    assert os.listdir(sandbox_harness.store_path(store, "in0")) == ["data"]
    assert Path(sandbox_harness.store_path(store, "fin")).read_text() == "file input"
    assert os.readlink(sandbox_harness.store_path(store, "lin")) == "elsewhere"
    assert oct(os.stat(sandbox_harness.store_path(store, "in1")).st_mode & 0o777) != "0o777"
    assert not any("junk" in n for n in r["store_listing"])
    assert r["outputs"]["out"]["content"] == "ok\n"


def test_store_view_env_is_honoured_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.sandbox.storeview import wants_overlay

    monkeypatch.delenv(STORE_VIEW_ENV, raising=False)
    assert not wants_overlay(OVERLAY_FROM - 1) and wants_overlay(OVERLAY_FROM)
    monkeypatch.setenv(STORE_VIEW_ENV, "stubs")
    assert not wants_overlay(1000)
    monkeypatch.setenv(STORE_VIEW_ENV, "overlay")
    assert wants_overlay(0)


def test_a_store_the_overlay_cannot_name_falls_back_to_stubs(tmp_path: Path) -> None:
    """overlayfs options cannot carry a ',' in a path: that build gets stubs on disk."""
    script = STORE_FS + """
        cat "$in0/data"; echo; echo ok > "$out" """
    r = _ok(sandbox_harness.run({"work": str(tmp_path / "a,b"), "store_view": "overlay",
                                 "script": script, "closure": INPUTS}))
    assert _fs(r["stdout"]) != "overlay"
    assert "data 0" in r["stdout"].splitlines()
    assert r["outputs"]["out"]["content"] == "ok\n"


def test_runner_builds_a_chain_through_the_overlay(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: node i has i inputs, so the last ones get the overlay; each reads
    the one before it, and every build ends (none is taken for one that kept running)."""
    from tests.test_sandbox_e2e import leftovers, outputs, runner, spec

    monkeypatch.setenv("RUNNER_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("RUNNER_STATE_DIR", str(tmp_path / "state"))
    body = "derivations:\n"
    for i in range(OVERLAY_FROM + 3):
        ref = f' ${{{{ d{i - 1} }}}}' if i else ""
        cat = f"; cat ${{{{ d{i - 1} }}}} >> $out" if i else ""
        body += f'  d{i}:\n    builder: /bin/sh\n    args: ["-c", "echo {i}{ref} > $out{cat}"]\n'
    done = runner("--sandbox=on", spec(tmp_path, body), env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    store = tmp_path / "store"
    [last] = outputs(store, f"d{OVERLAY_FROM + 2}")
    assert last.read_text().splitlines()[-1] == "0"  # the whole chain was read through
    assert len(last.read_text().splitlines()) == OVERLAY_FROM + 3  # a line per node
    assert leftovers(store) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting inside a store path needs root")
@pytest.mark.parametrize("view", ["overlay", "stubs"])
def test_a_mount_inside_an_input_is_read_only_too(tmp_path: Path, view: str) -> None:
    """An input bound recursively brings the host mounts beneath it, writable as they
    are on the host: the root's sealing pass must make them read-only as well."""
    import subprocess

    sub = Path(sandbox_harness.store_path(str(tmp_path / "w" / "store"), "in0"), "sub")
    sub.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    try:
        (sub / "host").write_text("host\n")  # control: writable where it comes from
        script = """(echo pwned > "$in0/sub/x") 2>/dev/null && echo WROTE
                    cat "$in0/sub/host"; echo ok > "$out" """
        r = _ok(sandbox_harness.run({"work": str(tmp_path / "w"), "store_view": view,
                                     "script": script, "closure": INPUTS}))
        assert "host" in r["stdout"].splitlines()  # the submount really is in the view
        assert "WROTE" not in r["stdout"] and not (sub / "x").exists()
    finally:
        subprocess.run(["umount", str(sub)], check=True)
