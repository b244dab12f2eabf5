"""`build-users-group`: a root daemon's sandboxed builds run as the group's members,
one build per member at a time (the members are the uid pool, flock-locked)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.errors import RunnerError
from runner.sandbox import uidpool
from tests.build_helpers import write_spec
from tests.daemon_harness import Daemon

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("groupadd") is None,
    reason="needs root, useradd and groupadd to create throwaway build users")

SPEC = """\
derivations:
  a:
    builder: /bin/sh
    args: ["-c", "mkdir $out; grep -E '^(Uid|Gid):' /proc/self/status > $out/ids"]
  b:
    builder: /bin/sh
    args: ["-c", "mkdir $out; grep -E '^(Uid|Gid):' /proc/self/status > $out/ids; echo b"]
"""


@pytest.fixture
def group() -> Iterator[tuple[str, list[int], int]]:
    name = "rb" + uuid.uuid4().hex[:8]
    subprocess.run(["groupadd", name], check=True)
    users = [f"{name}u{i}" for i in range(2)]
    try:
        for user in users:
            subprocess.run(["useradd", "-M", "-N", "-G", name, "-s", "/usr/sbin/nologin",
                            user], check=True)
        gid = int(subprocess.run(["getent", "group", name], capture_output=True, text=True,
                                 check=True).stdout.split(":")[2])
        yield name, sorted(pwd.getpwnam(u).pw_uid for u in users), gid
    finally:
        for user in users:
            subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", name], check=False)


def test_the_members_are_the_pool_one_build_each(group: tuple[str, list[int], int]) -> None:
    name, uids, gid = group
    first, second = uidpool.acquire(name), uidpool.acquire(name)
    try:
        assert sorted([first.uid, second.uid]) == uids and first.gid == second.gid == gid
        with pytest.raises(RunnerError) as e:  # both members busy: no third build
            uidpool.acquire(name)
        assert e.value.reason == "sandbox-setup" and "all 2 build users" in e.value.message
    finally:
        first.release()
        second.release()
    again = uidpool.acquire(name)  # released: free again
    assert again.uid in uids
    again.release()


def test_a_missing_group_is_an_error() -> None:
    with pytest.raises(RunnerError) as e:
        uidpool.acquire("no-such-group-" + uuid.uuid4().hex[:6])
    assert e.value.reason == "sandbox-setup" and "does not exist" in e.value.message


def test_daemon_builds_run_as_the_groups_members(group: tuple[str, list[int], int],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    name, uids, gid = group
    spec = write_spec(tmp_path, SPEC)
    with Daemon(str(tmp_path / "socket"), "build-users-group", name, "sandbox", "on",
                "max-jobs", "2") as d:
        code = run(["build", "--store", f"unix://{d.socket}", spec, "--no-out-link"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert d.stop() == 0
    for path in out.split():
        ids = dict(line.split(":", 1) for line in Path(path, "ids").read_text().splitlines())
        assert int(ids["Uid"].split()[0]) in uids  # a member, not the 30001… pool
        assert int(ids["Gid"].split()[0]) == gid
        assert os.stat(path).st_uid == 0  # the outputs are the store's (root's)
    # Control: without the setting, the same build runs as a uid of runner's own pool.
    spec2 = write_spec(tmp_path, SPEC.replace("echo b", "echo c"), "spec2.yaml")
    with Daemon(str(tmp_path / "socket2"), "sandbox", "on") as d:
        code = run(["build", "--store", f"unix://{d.socket}", spec2, "b", "--no-out-link"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert d.stop() == 0
    uid = int(Path(out.strip(), "ids").read_text().split()[1])
    assert uidpool.FIRST_UID <= uid < uidpool.FIRST_UID + uidpool.COUNT
