"""The sandbox's C spawn (runner/sandbox/_spawn.c, native.py): built, strict about its
input, and nothing of runner's process state reaches the builder.

The isolation probes of tests/test_sandbox_build.py run against it (and against
the Python fork server); these are what only a spawn that shares runner's memory
until the exec could get wrong: descriptors, signal dispositions and mask.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.sandbox import libc as sandbox_libc
from runner.sandbox import native
from tests import sandbox_harness

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux-only")

PROBE = ('grep -E "^(SigBlk|SigIgn):" /proc/self/status; ls /proc/self/fd | sort -n | tr "\\n" " ";'
         ' echo; echo ok > "$out"')


def test_the_c_spawn_is_built_where_a_compiler_is() -> None:
    """setup.py's extension is optional; where a C compiler exists (CI installs one),
    an install without it would quietly test only the slower Python way."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the package installs without its C spawn")
    assert native.built()


@pytest.mark.skipif(not native.built(), reason="the C spawn is not built here")
@pytest.mark.parametrize("program", [
    b"\x01",  # a cut header
    b"\x01\0\0\0\x01\0\0\0q",  # an unknown argument type
    b"\x01\0\0\0\x01\0\0\0s\xff\xff\xff\xff",  # a string longer than the program
])
def test_a_malformed_program_is_refused_before_any_clone(program: bytes) -> None:
    from runner.sandbox import _spawn

    with pytest.raises(ValueError, match="malformed"):
        _spawn.spawn(program, [b"/bin/true"], [], 0, -1, -1)


@pytest.mark.parametrize("way", ["", "python"])
def test_the_builder_inherits_no_descriptor_signal_mask_or_ignored_signal(
        tmp_path: Path, way: str) -> None:
    """runner ignores SIGPIPE (CPython does) and holds many descriptors; the builder
    starts with none of them, whichever way it was spawned."""
    if not way and not native.built():
        pytest.skip("the C spawn is not built here")
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # the control: runner's state
    leaked = os.open(os.devnull, os.O_RDONLY)  # inheritable, unlike runner's own
    os.set_inheritable(leaked, True)
    _ignore_glibc_signal(True)  # as a library in runner did once (seen under CPython 3.13)
    try:
        r = sandbox_harness.run({"work": str(tmp_path / "w"), "script": PROBE, "spawn": way})
    finally:
        _ignore_glibc_signal(False)
        os.close(leaked)
    assert r["returncode"] == 0, r
    lines = r["stdout"].splitlines()
    assert lines[0] == "SigBlk:\t0000000000000000", r
    assert lines[1] == "SigIgn:\t0000000000000000", r
    assert lines[2].split() == ["0", "1", "2", "3"], r  # 3: the directory `ls` reads


def _ignore_glibc_signal(ignore: bool) -> None:
    """Signal 32 (glibc's own, which Python's `signal` cannot set) to SIG_IGN or back."""
    libc = ctypes.CDLL(None, use_errno=True)
    action = (ctypes.c_ulong * 4)(1 if ignore else 0, 0, 0, 0)  # SIG_IGN is 1, SIG_DFL 0
    number = sandbox_libc._SYS_RT_SIGACTION[platform.machine()]  # the one table of it
    assert libc.syscall(number, 32, action, None, 8) == 0
    status = Path("/proc/thread-self/status").read_text()
    ignored = int(status.split("SigIgn:")[1].split()[0], 16)
    assert bool(ignored & (1 << 31)) == ignore  # the control: it took



@pytest.mark.parametrize("way", ["", "python"])
def test_a_runner_with_its_stdio_closed_still_gives_the_builder_its_log(
        tmp_path: Path, way: str) -> None:
    """With runner's 0, 1 and 2 closed, the descriptors made for the builder get those
    numbers; the builder's stdout and stderr must still be the log pipe, stdin /dev/null."""
    if not way and not native.built():
        pytest.skip("the C spawn is not built here")
    result = tmp_path / "result"
    code = f"""
import os, subprocess, sys
for fd in (0, 1, 2):
    os.close(fd)
from tests import sandbox_harness
r = sandbox_harness.run({{"work": {str(tmp_path / "w")!r}, "spawn": {way!r},
    "script": 'echo out; echo err >&2; read x || echo stdin-eof; echo ok > "$out"'}})
open({str(result)!r}, "w").write(repr((r["returncode"], r["stdout"], r["stderr"])))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert result.read_text() == repr((0, "out\nstdin-eof\n", "err\n"))
