"""Real `runner` processes: two on one store, interrupts, and SIGKILL at any moment."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from runner.store import nar
from runner.store.hashes import Hash
from tests.build_helpers import counts, runner_process, valid_paths, write_spec
from tests.markers import Markers, wait_gone

pytestmark = pytest.mark.slow


def _graph(tmp_path: Path, counter: Path, pids: Path, sleep: str) -> str:
    """a -> b, c -> d. Each builder says `$name` on the FIFO `markers` once it runs (if
    that exists), sleeps `sleep` seconds (600 if its name is a line of `hold`), and
    appends `$name` to `done` when it has finished."""
    markers, hold, done = tmp_path / "markers", tmp_path / "hold", tmp_path / "done"
    step = (f"echo $name >> {counter}; echo $$ >> {pids}; s={sleep}; "
            f"grep -qx $name {hold} 2>/dev/null && s=600; sleep $s & echo $! >> {pids}; "
            f"[ -p {markers} ] && echo $name > {markers}; wait; echo $name >> {done}; ")
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
    return wait_gone(_alive(pids), timeout=5)


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
    with Markers(tmp_path / "markers") as markers:
        proc = runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
        markers.wait_for("a")  # a's builder and its sleep run
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "interrupted" in err
    assert _no_survivors(pids)
    assert not (tmp_path / "done").exists()  # interrupted mid-build, not after
    assert not [p for p in valid_paths(state_dir) if not p.endswith(".drv")]
    assert not list(Path(store_dir).glob("*.lock"))  # output locks released


def test_sigkill_at_any_point_then_rerun(tmp_path: Path, state_dir: str) -> None:
    """runner killed (with its builders, as by a crash) while each stage of the graph
    builds; each rerun takes up where the last one stopped, and the last completes."""
    counter, pids = tmp_path / "counter", tmp_path / "pids"
    spec = _graph(tmp_path, counter, pids, "0")
    hold = tmp_path / "hold"
    with Markers(tmp_path / "markers") as markers:
        for held, valid_before in ((["a"], set()), (["b", "c"], {"a"}), (["d"], {"a", "b", "c"})):
            hold.write_text("".join(f"{name}\n" for name in held))
            proc = runner_process("build", "--sandbox=off", "--no-out-link", "-j", "2", spec,
                                  "d")
            markers.wait_all(*held)  # the held builders run: kill the run right there
            proc.kill()
            proc.communicate()
            survivors = _alive(pids)
            # Stop them all before killing any: a shell whose `sleep` died first would
            # wake from `wait` and say it finished.
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            assert wait_gone(survivors)
            _store_is_consistent(state_dir)
            assert _built(state_dir) == valid_before
    hold.unlink()
    proc = runner_process("build", "--sandbox=off", "--no-out-link", spec, "d")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert Path(out.strip(), "both").read_text() == "a\na\n"
    _store_is_consistent(state_dir)
    # Each stage started once more than it was killed in; nothing finished twice.
    assert counts(counter) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert counts(tmp_path / "done") == {"a": 1, "b": 1, "c": 1, "d": 1}


def _built(state_dir: str) -> set[str]:
    """The names of the valid outputs (not .drv files) in the store."""
    return {Path(p).name.split("-", 1)[1] for p in valid_paths(state_dir)
            if not p.endswith(".drv")}


def test_an_orphaned_builder_keeps_its_outputs_locked(tmp_path: Path, state_dir: str) -> None:
    """After `kill -9` of runner the unsandboxed builder lives on; it must still hold the
    output lock, so the next runner waits for it instead of building alongside it."""
    markers = tmp_path / "markers"
    loop = "for i in 1 2 3 4 5 6; do echo $$ >> $out/log; sleep 0.2; done"
    spec = write_spec(tmp_path, f"""derivations:
  slow:
    builder: /bin/sh
    args: ["-c", "mkdir $out; [ -p {markers} ] && echo started > {markers}; {loop}"]
""")
    with Markers(markers) as said:
        first = runner_process("build", "--sandbox=off", "--no-out-link", spec)
        said.wait_for("started")
        first.kill()
        first.communicate()
    second = runner_process("build", "--sandbox=off", "--no-out-link", spec)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    writers = set(Path(out.strip(), "log").read_text().split())
    assert len(writers) == 1, f"two builders wrote one output: {writers}"
    _store_is_consistent(state_dir)
