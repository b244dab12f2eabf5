"""All build users busy: a build waits for one, as Nix's does, instead of failing; it
gives back its build slot meanwhile (as a lock waiter does, test_build_lock_slots.py),
and says so once if the wait is long. The pool is a `build-users-group` of 1 member."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox import uidpool
from tests.build_helpers import runner_process, write_spec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("groupadd") is None,
    reason="needs root, useradd and groupadd to create throwaway build users")

HANG = 120  # seconds: bounded waits; nothing below measures time to decide


@pytest.fixture
def one_user_group() -> Iterator[tuple[str, int]]:
    name = "rw" + uuid.uuid4().hex[:8]
    user = f"{name}u0"
    subprocess.run(["groupadd", name], check=True)
    try:
        subprocess.run(["useradd", "-M", "-N", "-G", name, "-s", "/usr/sbin/nologin", user],
                       check=True)
        yield name, pwd.getpwnam(user).pw_uid
    finally:
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", name], check=False)


# Each build notes its uid and when it ran (ns); it runs long enough that two builds
# on one uid at once would overlap visibly.
_TIMED = ("mkdir $out; s=$(date +%s%N); grep ^Uid: /proc/self/status > $out/uid; "
          "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; "
          "echo $s $(date +%s%N) > $out/span")


def test_more_builds_than_build_users_all_succeed(one_user_group: tuple[str, int],
                                                  tmp_path: Path) -> None:
    group, uid = one_user_group
    lines = ["derivations:"]
    lines += [f"  d{i}: {{builder: /bin/sh, args: [-c, '{_TIMED}; echo {i} > $out/i']}}"
              for i in range(3)]
    spec = write_spec(tmp_path, "\n".join(lines) + "\n")
    proc = runner_process("build", "--json", "--no-out-link", "-j3",
                          "--option", "build-users-group", group, spec)
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    outs = [path for item in json.loads(out) for path in item["outputs"].values()]
    assert len(outs) == 3
    spans = []
    for path in outs:
        assert Path(path, "uid").read_text().split()[1:] == [str(uid)] * 4
        start, end = map(int, Path(path, "span").read_text().split())
        spans.append((start, end))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two builds ran under one build user at once"


def test_a_waiter_gives_back_its_slot_and_says_so(one_user_group: tuple[str, int],
                                                  tmp_path: Path) -> None:
    group, _ = one_user_group
    marker = tmp_path / "unsandboxed-built"
    spec = write_spec(tmp_path, (
        "derivations:\n"
        f"  s: {{builder: /bin/sh, args: [-c, 'echo > $out']}}\n"
        f"  n: {{builder: /bin/sh, no-chroot: true, args: [-c, 'touch {marker}; echo > $out']}}\n"))
    held = uidpool.acquire(group)  # the only build user is busy
    try:
        proc = runner_process("build", "--no-out-link", "-j1", "--option", "sandbox", "relaxed",
                              "--option", "build-users-group", group, spec, "s", "n")
        lines: queue.Queue[str] = queue.Queue()
        stderr = proc.stderr
        assert stderr is not None

        def drain() -> None:
            for line in stderr:
                lines.put(line)

        threading.Thread(target=drain, daemon=True).start()
        seen: list[str] = []
        while not any("waiting for a free build user" in line for line in seen):
            seen.append(lines.get(timeout=HANG))
        # `s` waits for a build user; with -j1, `n` was built meanwhile (its slot free).
        assert marker.exists()
        assert proc.poll() is None
    finally:
        held.release()
    assert proc.wait(timeout=HANG) == 0, "".join(seen)
    rest: list[str] = []
    while not lines.empty():
        rest.append(lines.get())
    assert sum("waiting for a free build user" in line for line in seen + rest) == 1


def test_a_retried_build_keeps_its_build_user(one_user_group: tuple[str, int],
                                              tmp_path: Path) -> None:
    # `f` fails and is retried; `g` waits for the only build user meanwhile. The
    # user must stay `f`'s across its attempts (not freed between them for `g`).
    group, _ = one_user_group
    span = ("s=$(date +%s%N); i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; "
            "echo SPAN $s $(date +%s%N)")
    spec = write_spec(tmp_path, (
        "derivations:\n"
        f"  f: {{builder: /bin/sh, args: [-c, '{span}; exit 1']}}\n"
        f"  g: {{builder: /bin/sh, args: [-c, 'mkdir $out; ({span}) > $out/span']}}\n"))
    proc = runner_process("build", "--no-out-link", "-j2", "--keep-going", "--retries", "2",
                          "--option", "build-users-group", group, "--json", spec, "f", "g")
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 100, err
    results = json.loads(out)
    assert sorted(r["status"] for r in results) == ["built", "failed"]
    spans = []
    for result in results:
        if result["status"] == "built":
            text = Path(next(iter(result["outputs"].values())), "span").read_text()
            spans.append(tuple(map(int, text.split()[1:3])))
        else:
            for attempt in (1, 2, 3):
                log = subprocess.run(
                    [sys.executable, "-m", "runner", "log", "--attempt", str(attempt),
                     result["drvPath"]], capture_output=True, text=True, check=True).stdout
                line = next(x for x in log.splitlines() if x.startswith("SPAN"))
                spans.append(tuple(map(int, line.split()[1:3])))
    assert len(spans) == 4
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two builds ran under one build user at once"
