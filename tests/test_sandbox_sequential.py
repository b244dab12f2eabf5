"""Two builds one after the other in the same store and staging dir see nothing of each other.

A build's writable places are its own tmpfs mounts (/tmp, /dev/shm), its
build dir (runner makes a fresh one per build), the staging store behind
$NIX_STORE (`.sandbox-<output>`: the same dir for a rebuild of the same
output) and, as far as it can, $HOME. Build A writes junk into every one of
them and fails; build B, same output and so the same staging dir, must find
none of it, nor A's output. The control: B's probe does report marks the host
put where B may see them (its build dir, an input), so it can see a leak.
Also: the staging dir's modes, which keep other users out, whatever the umask.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.test_sandbox_build import Sandbox, sandbox  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only")

WRITE_JUNK = """
    for d in /tmp /dev/shm /build "$HOME" "$NIX_STORE"; do
        (echo junk > "$d/junk-a") 2>/dev/null && echo "WROTE $d"
        (mkdir "$d/junkdir-a" && echo junk > "$d/junkdir-a/f") 2>/dev/null
    done
    echo from-a > "$out"
    exit 1
"""
PROBE = """
    for d in /tmp /dev/shm /build "$HOME" "$NIX_STORE"; do
        for f in "$d"/* "$d"/.[!.]*; do
            test -e "$f" && echo "SEEN $f"
        done
    done
    test -e "$out" && echo "SEEN-OUT $(cat "$out")"
    echo from-b > "$out"
"""


def _fresh_build_dir(store: str) -> None:
    """What runner does between builds: a new build dir for each (the harness keeps one)."""
    build = Path(store).parent / "build"
    owner = build.stat()
    shutil.rmtree(build)
    build.mkdir()
    os.chown(build, owner.st_uid, owner.st_gid)


def test_a_build_sees_nothing_of_the_one_before_it(sandbox: Sandbox) -> None:  # noqa: F811
    a = sandbox.run(script=WRITE_JUNK, closure={"in0": "data"})
    assert a["returncode"] == 1, a
    # A really wrote in the places B could be told of (not $HOME: it does not exist).
    wrote = {line.split()[1] for line in a["stdout"].splitlines() if line.startswith("WROTE ")}
    assert {"/tmp", "/dev/shm", "/build"} <= wrote and any(w.endswith("/store") for w in wrote)
    assert a["outputs"]["out"]["content"] == "from-a\n"  # collected, so on the host now
    _fresh_build_dir(a["store"])
    b = sandbox.run(script=PROBE, closure={"in0": "data"})
    assert b["returncode"] == 0, b["stderr"]
    seen = [line for line in b["stdout"].splitlines() if line.startswith("SEEN")]
    # Nothing of A's (the store dir's parents under /tmp are part of B's own view).
    assert not any("junk" in s or "SEEN-OUT" in s for s in seen), seen
    assert b["outputs"]["out"]["content"] == "from-b\n"
    assert not any(n.startswith(".sandbox-") for n in b["store_listing"])


def test_the_probe_reports_what_it_may_see(sandbox: Sandbox) -> None:  # noqa: F811
    """Control: marks put where the build may look are reported by the same probe."""
    first = sandbox.run(script="echo ok > $out", closure={"in0": "data"})
    build = Path(first["store"]).parent / "build"
    (build / "mark-host").write_text("host\n")
    b = sandbox.run(script=PROBE, closure={"in0": "data"})
    seen = b["stdout"].splitlines()
    assert "SEEN /build/mark-host" in seen, b
    assert any(s.startswith("SEEN ") and s.endswith("-in0") for s in seen), b
    assert "SEEN-OUT ok" not in seen  # an output already on the host is not shown either


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o000])
def test_staging_dirs_have_their_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The staging dir is 0700 (no other user reaches the outputs), its store 0755
    (the builder's store dir), however restrictive or open runner's umask is."""
    import stat

    from runner.sandbox import staging
    from runner.sandbox.plan import default_ids, make_plan
    from runner.settings import Settings

    store, build = tmp_path / "store", tmp_path / "build"
    store.mkdir()
    build.mkdir()
    out = f"{store}/0123456789abcdfghijklmnpqrsvwxyz-out"
    plan = make_plan(argv=["/bin/true"], env={}, build_dir=str(build), store_dir=str(store),
                     closure=[], outputs=[out], fixed_output=False,
                     settings=Settings.load(environ={}), ids=default_ids())
    old = os.umask(umask)
    try:
        staging.prepare(plan)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(plan.staging_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(plan.staging_store).st_mode) == 0o755
    staging.discard(plan)
