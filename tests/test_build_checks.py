"""What a build must satisfy: limits, fixed-output hashes, reference constraints."""

from __future__ import annotations

import hashlib
import json
import os
from base64 import b64encode
from pathlib import Path

import pytest

from runner.build.build_dirs import PRIVATE_PREFIX
from tests.build_helpers import build, counts, write_spec
from tests.markers import wait_gone


def _gone(pid: int) -> bool:
    """SIGKILL is delivered asynchronously: wait (on its pidfd) for the kernel to end it."""
    return wait_gone([pid], timeout=5)


def _sri(data: bytes) -> str:
    return "sha256-" + b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("flag", ["--timeout", "--max-silent-time"])
def test_time_limits_kill_a_builder_that_forks(tmp_path: Path, flag: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    pids = tmp_path / "pids"
    spec = write_spec(tmp_path, f"""derivations:
  slow:
    builder: /bin/sh
    args: ["-c", "echo slow >> $COUNTER; sleep 60 & echo $! > {pids}; wait"]
    env: {{COUNTER: {counter}}}
""")
    code, _, err = build(capsys, flag, "1", spec)
    assert code == 101
    assert "timed out after 1 seconds" in err
    assert _gone(int(pids.read_text()))
    # Timeouts are not cached: asking again runs the builder again.
    code, _, err = build(capsys, flag, "1", spec)
    assert code == 101 and counts(counter) == {"slow": 2}


def test_log_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  chatty:
    builder: /bin/sh
    args: ["-c", "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"]
""")
    code, _, err = build(capsys, "--max-log-size", "5000", spec)
    assert code == 100
    assert "more than 5000 bytes of log" in err


@pytest.mark.parametrize("mode", ["flat", "recursive"])
def test_fixed_output_hash_is_checked(tmp_path: Path, mode: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    content = b"fetched\n"
    if mode == "flat":
        right = _sri(content)
    else:
        # NAR of a regular non-executable file.
        def s(b: bytes) -> bytes:
            return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)
        nar = b"".join(s(x) for x in (b"nix-archive-1", b"(", b"type", b"regular",
                                      b"contents", content, b")"))
        right = _sri(nar)
    wrong = _sri(b"something else")

    counter = tmp_path / "counter"

    def spec(h: str, name: str) -> str:
        return write_spec(tmp_path, f"""derivations:
  fetch:
    builder: /bin/sh
    args: ["-c", "echo f >> $COUNTER; printf 'fetched\\\\n' > $out"]
    env: {{COUNTER: {counter}}}
    output-hash: {h}
    output-hash-mode: {mode}
""", name)

    code, _, err = build(capsys, spec(wrong, "bad.yaml"))
    assert code == 102
    assert "hash mismatch in fixed-output derivation" in err
    assert f"specified: {wrong}" in err and f"got: {right}" in err
    # As Nix 2.8: the content was registered under the path its real hash gives, so the
    # corrected spec is satisfied without running the builder again.
    code, out, _ = build(capsys, spec(right, "good.yaml"))
    assert code == 0
    assert Path(out.strip()).read_bytes() == content
    assert counts(counter) == {"f": 1}


def test_fixed_output_failures_are_not_cached(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    counter = tmp_path / "counter"
    spec = write_spec(tmp_path, f"""derivations:
  fetch:
    builder: /bin/sh
    args: ["-c", "echo f >> $COUNTER; echo nope > $out"]
    env: {{COUNTER: {counter}}}
    output-hash: {_sri(b"")}
""")
    assert build(capsys, spec)[0] == 102
    assert build(capsys, spec)[0] == 102
    assert counts(counter) == {"f": 2}


REFS = """derivations:
  dep:
    builder: /bin/sh
    args: ["-c", "echo dep > $out"]
  user:
    builder: /bin/sh
    args: ["-c", "echo ${{ dep }} > $out; echo $out > $lib; echo hi > $doc"]
    outputs: [out, lib, doc]
"""


@pytest.mark.parametrize(("attr", "value", "ok"), [
    ("disallowed-references", "['${{ dep }}']", False),
    ("allowed-references", "[lib]", False),
    ("allowed-references", "['${{ dep }}', out]", True),
    ("disallowed-requisites", "['${{ dep }}']", False),
    ("allowed-requisites", "['${{ dep }}', out, lib, doc]", True),
])
def test_reference_constraints(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               attr: str, value: str, ok: bool) -> None:
    spec = write_spec(tmp_path, REFS + f"    {attr}: {value}\n")
    code, _, err = build(capsys, spec, "user")
    if ok:
        assert code == 0, err
    else:
        assert code == 100
        assert "is not allowed to have these" in err


def test_leftovers_at_an_output_path_are_replaced(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  x:
    builder: /bin/sh
    args: ["-c", "mkdir $out; echo fresh > $out/file"]
""")
    from runner.cli.main import run

    assert run(["build", "--dry-run", "--json", spec]) == 0
    out = __import__("json").loads(capsys.readouterr().out)[0]["outputs"]["out"]
    os.makedirs(out + "/stale")
    Path(out, "file").write_text("half-written")
    code, printed, _ = build(capsys, spec)
    assert code == 0 and printed.strip() == out
    assert sorted(os.listdir(out)) == ["file"] and Path(out, "file").read_text() == "fresh\n"


def test_build_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           store_dir: str) -> None:
    spec = write_spec(tmp_path, """derivations:
  env:
    builder: /bin/sh
    args: ["-c", "env > $out; pwd >> $out; cat $bigPath >> $out"]
    env: {big: "from a file"}
    pass-as-file: [big]
""")
    code, out, _ = build(capsys, "--cores", "3", spec)
    assert code == 0
    lines = Path(out.strip()).read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    top = env["NIX_BUILD_TOP"]
    assert env["HOME"] == "/homeless-shelter" and env["NIX_STORE"] == store_dir
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["NIX_BUILD_CORES"] == "3"
    assert env["TMPDIR"] == env["TMP"] == env["TEMP"] == env["TEMPDIR"] == top
    assert "big" not in env and lines[-2:] == [top, "from a file"]
    assert not os.path.exists(top)  # the build dir is removed after success


def test_an_output_with_a_fifo_fails_that_build_only(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  fifo:
    builder: /bin/sh
    args: ["-c", "mkdir $out; mkfifo $out/p"]
  other:
    builder: /bin/sh
    args: ["-c", "echo ok > $out"]
""")
    code, out, err = build(capsys, "-k", "--json", spec)
    assert code == 100, err
    statuses = {r["drvPath"].rsplit("-", 1)[-1]: r["status"] for r in json.loads(out)}
    assert statuses == {"fifo.drv": "failed", "other.drv": "built"}
    assert "unsupported file type" in err and "Traceback" not in err


def test_a_builder_killed_by_a_signal_is_not_a_cached_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "killed-once"
    spec = write_spec(tmp_path, f"""derivations:
  flaky:
    builder: /bin/sh
    args: ["-c", "if [ ! -e {marker} ]; then touch {marker}; kill -KILL $$; fi; echo ok > $out"]
""")
    code, _, err = build(capsys, spec)
    assert code == 100 and "signal 9" in err
    assert "which runner did not send" in err and "not cached" in err
    code, _, err = build(capsys, spec)  # no --rebuild-failed needed: nothing was cached
    assert code == 0, err


def test_a_derivation_for_another_system_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  mac:
    system: aarch64-darwin
    builder: /bin/sh
    args: ["-c", "echo ok > $out"]
""")
    code, _, err = build(capsys, spec)
    assert code != 0
    assert "a 'aarch64-darwin' is required to build" in err and "but I am a '" in err


def test_cyclic_outputs_are_rejected_and_leave_no_build_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_dir = tmp_path / "builds"
    build_dir.mkdir()
    spec = write_spec(tmp_path, """derivations:
  cyc:
    builder: /bin/sh
    outputs: [out, dev]
    args: ["-c", "echo $dev > $out; echo $out > $dev"]
""")
    code, _, err = build(capsys, "--option", "build-dir", str(build_dir), spec)
    assert code == 100, err
    assert "refer to each other" in err and "Traceback" not in err
    (private,) = build_dir.iterdir()  # runner's own 0700 parent (docs/security.md, class 4)
    assert private.name == f"{PRIVATE_PREFIX}{os.geteuid()}"
    assert list(private.iterdir()) == []
    store = Path(os.environ["RUNNER_STORE_DIR"])
    assert [p for p in store.iterdir() if "-cyc" in p.name and p.suffix != ".drv"] == []
    code, _, err = build(capsys, "-K", "--rebuild-failed", "--option", "build-dir",
                         str(build_dir), spec)
    assert code == 100
    assert len(list(build_dir.iterdir())) == 1  # kept, as asked


@pytest.mark.parametrize(("body", "says"), [
    ("  user:\n    builder: /bin/sh\n    args: ['-c', 'echo > $out']\n"
     "    allowed-references: [nosuchoutput]\n", "illegal reference specifier"),
    ("  dep:\n    builder: /bin/sh\n    args: ['-c', 'echo dep > $out']\n"
     "  user:\n    builder: /bin/sh\n    args: ['-c', 'echo ${{ dep }} > $out']\n"
     f"    output-hash: {_sri(b'x')}\n    output-hash-mode: recursive\n",
     "must not refer to store paths"),
])
def test_rejected_outputs_exit_100_as_the_differences_table_says(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, says: str) -> None:
    """Nix 2.8 exits 1 here; runner keeps 100 (docs/building.md, "Differs from Nix")."""
    spec = write_spec(tmp_path, "derivations:\n" + body)
    code, _, err = build(capsys, spec, "user")
    if code == 102:  # the fixed output's hash depends on the store dir: take the real one
        right = err.split("got: ")[1].split()[0]
        spec = write_spec(tmp_path, "derivations:\n" + body.replace(_sri(b"x"), right))
        code, _, err = build(capsys, spec, "user")
    assert code == 100, err
    assert says in err
