"""Real `runner` processes: two on one store, interrupts, and SIGKILL at any moment."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from runner.store import nar
from runner.store.hashes import Hash
from tests.build_helpers import counts, runner_process, valid_paths, write_spec

pytestmark = pytest.mark.slow


def _graph(tmp_path: Path, counter: Path, pids: Path, sleep: str) -> str:
    step = (f"echo $name >> {counter}; echo $$ >> {pids}; sleep {sleep} & "
            f"echo $! >> {pids}; wait; ")
    return write_spec(tmp_path, f"""derivations:
  a:
    builder: /bin/sh
    args: ["-c", "{step} echo a > $out"]
  b:
    builder: /bin/sh
    args: ["-c", "{step} cat ${{{{ a }}}} > $out"]
  c:
    builder: /bin/sh
    args: ["-c", "{step} cat ${{{{ a }}}} > $out"]
  d:
    builder: /bin/sh
    args: ["-c", "{step} mkdir $out; cat ${{{{ b }}}} ${{{{ c }}}} > $out/both"]
""")


def _alive(pids: Path) -> list[int]:
    found = []
    for pid in {int(p) for p in pids.read_text().split()} if pids.exists() else ():
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                found.append(pid)
        except (FileNotFoundError, IndexError):
            pass
    return found


def _no_survivors(pids: Path) -> bool:
    deadline = time.monotonic() + 5
    while _alive(pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _store_is_consistent(state_dir: str) -> None:
    """Every valid path exists with the content it was registered with; refs are valid."""
    import sqlite3

    if not Path(state_dir, "db", "db.sqlite").exists():
        return  # killed before it opened the store
    refs = valid_paths(state_dir)
    conn = sqlite3.connect(os.path.join(state_dir, "db", "db.sqlite"))
    hashes = dict(conn.execute("select path, hash from ValidPaths").fetchall())
    conn.close()
    for path, references in refs.items():
        assert os.path.lexists(path), path
        assert references <= refs.keys()
        assert nar.hash_path(path)[0] == Hash.parse(hashes[path]), path


def test_two_processes_build_each_derivation_once(tmp_path: Path, state_dir: str) -> None:
    counter, pids = tmp_path / "counter", tmp_path / "pids"
    spec = _graph(tmp_path, counter, pids, "0.3")
    procs = [runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] != ""
    assert counts(counter) == {"a": 1, "b": 1, "c": 1, "d": 1}
    _store_is_consistent(state_dir)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_kills_builders_and_registers_nothing(
        tmp_path: Path, state_dir: str, store_dir: str, sig: int, code: int) -> None:
    counter, pids = tmp_path / "counter", tmp_path / "pids"
    spec = _graph(tmp_path, counter, pids, "60")
    proc = runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
    deadline = time.monotonic() + 30
    while len(_alive(pids)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "interrupted" in err
    assert _no_survivors(pids)
    assert not [p for p in valid_paths(state_dir) if not p.endswith(".drv")]
    assert not list(Path(store_dir).glob("*.lock"))  # output locks released


def test_sigkill_at_any_point_then_rerun(tmp_path: Path, state_dir: str) -> None:
    counter, pids = tmp_path / "counter", tmp_path / "pids"
    spec = _graph(tmp_path, counter, pids, "0.05")
    for delay in (0.05, 0.3, 0.5, 0.7, 0.9):
        proc = runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        _store_is_consistent(state_dir)
    proc = runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert Path(out.strip(), "both").read_text() == "a\na\n"
    _store_is_consistent(state_dir)


def test_an_orphaned_builder_keeps_its_outputs_locked(tmp_path: Path, state_dir: str) -> None:
    """After `kill -9` of runner the unsandboxed builder lives on; it must still hold the
    output lock, so the next runner waits for it instead of building alongside it."""
    started = tmp_path / "started"
    loop = "for i in 1 2 3 4 5 6; do echo $$ >> $out/log; sleep 0.2; done"
    spec = write_spec(tmp_path, f"""derivations:
  slow:
    builder: /bin/sh
    args: ["-c", "touch {started}; mkdir $out; {loop}"]
""")
    first = runner_process("build", "--sandbox=off", "--no-out-link", spec)
    while not started.exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.01)
    first.kill()
    first.communicate()
    second = runner_process("build", "--sandbox=off", "--no-out-link", spec)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    writers = set(Path(out.strip(), "log").read_text().split())
    assert len(writers) == 1, f"two builders wrote one output: {writers}"
    _store_is_consistent(state_dir)
