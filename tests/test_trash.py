"""Trees removed later (runner/store/trash.py): the name is free at once, the tree goes
soon, `drain` waits for it, and gc removes what a killed runner left aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runner.store import trash
from runner.store.layout import TEMP_DIR_PREFIX


def _tree(root: Path) -> Path:
    top = root / ".sandbox-x"
    (top / "store" / "out").mkdir(parents=True)
    (top / "store" / "out" / "f").write_text("x")
    os.chmod(top / "store" / "out", 0o555)  # read-only, as outputs are
    return top


def test_the_name_is_free_at_once_and_the_tree_gone_after_drain(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    top = _tree(tmp_path / "d")
    trash.discard(str(top))
    assert not top.exists()  # the name can be used again right away
    trash.drain()
    assert os.listdir(tmp_path / "d") == []  # nothing left aside either


def test_a_missing_tree_is_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    trash.discard(str(tmp_path / "d" / "absent"))
    trash.drain()
    assert os.listdir(tmp_path / "d") == []


def test_what_a_killed_runner_left_aside_is_removed_by_gc(tmp_path: Path, state_dir: str,
                                                          store_dir: str) -> None:
    """A process that dies before its trash thread ran leaves `.tmp-<pid>-trash-*`;
    its pid is dead and nothing holds its flock, so gc removes it as abandoned."""
    code = ("import os, sys; from runner.store import trash; "
            "trash._start = lambda: None; trash.discard(sys.argv[1]); os._exit(0)")
    top = _tree(Path(store_dir))
    subprocess.run([sys.executable, "-c", code, str(top)], check=True)
    left = [n for n in os.listdir(store_dir) if n.startswith(TEMP_DIR_PREFIX)]
    assert len(left) == 1 and "-trash-" in left[0]  # the control: it was left behind
    gc = subprocess.run([sys.executable, "-m", "runner", "gc"], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert not [n for n in os.listdir(store_dir) if n.startswith(TEMP_DIR_PREFIX)]
