"""The eval cache behind the no-op `runner build` (runner/spec/eval_cache.py): every way
a cached translation could go stale must make the next build translate again.

Each test builds once (which records the entry), changes one thing, builds again and
checks the second build's outputs against what the changed spec means. A cache that
ignored the change would print the first build's paths: the tests fail then.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.spec import eval_cache
from tests.build_helpers import build

SPEC = """version: 1
derivations:
  a:
    builder: /bin/sh
    args: ["-c", "echo one > $out"]
"""


def _outputs(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    code, out, err = build(capsys, *argv)
    assert code == 0, err
    return out.split()


def _contents(paths: list[str]) -> list[str]:
    return [Path(p).read_text().strip() for p in paths]


def _entries(state_dir: str) -> list[Path]:
    return sorted((Path(state_dir) / eval_cache.CACHE_DIR).glob("*.json"))


def _edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    """Replace `old` by `new` (same length) in place, then set the mtime back: only
    ctime and the bytes show the edit."""
    assert len(old) == len(new)
    st = path.stat()
    path.write_text(path.read_text().replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _wait_for_ctime_after(path: Path, probe: Path) -> None:
    """Until a file written now gets a later ctime than `path` has (the kernel's
    timestamps advance in ticks): a marker-file wait, not a sleep."""
    before = path.stat().st_ctime_ns
    while True:
        probe.write_text("x")
        if probe.stat().st_ctime_ns > before:
            return


def test_unchanged_spec_is_answered_from_the_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    assert len(_entries(state_dir)) == 1

    import runner.spec.load

    def no_parsing(*args: object) -> None:
        raise AssertionError("the spec was parsed again")

    monkeypatch.setattr(runner.spec.load, "load_spec", no_parsing)
    assert _outputs(capsys, str(spec)) == first  # the control: the cache is used


def test_editing_the_spec_translates_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    spec.write_text(SPEC.replace("echo one", "echo three"))
    second = _outputs(capsys, str(spec))
    assert second != first and _contents(second) == ["three"]


def test_same_size_edit_with_mtime_set_back_is_seen_through_ctime(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry is recorded as if long after the spec was written, so its stat is
    # trusted alone: the edit must show in the stat (ctime), since nothing is hashed.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    real_ns = time.time_ns  # eval_cache's clock: the time module's
    with monkeypatch.context() as m:
        m.setattr(time, "time_ns", lambda: real_ns() + 10 * 10**9)
        first = _outputs(capsys, str(spec))
        hashed: list[str] = []

        def sha256_file(path: str) -> str:
            hashed.append(path)
            return ""

        m.setattr(eval_cache, "sha256_file", sha256_file)
        assert _outputs(capsys, str(spec)) == first and hashed == []  # settled: stat alone
    _wait_for_ctime_after(spec, tmp_path / "probe")
    _edit_keeping_size_and_mtime(spec, "echo one", "echo two")
    second = _outputs(capsys, str(spec))
    assert second != first and _contents(second) == ["two"]


def test_unsettled_stat_is_not_trusted_the_bytes_are_compared(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Written just now, the spec's stat is not settled: an edit within the same
    # timestamp tick would leave it unchanged. Simulate exactly that (the stat reads
    # as recorded after the edit): the bytes must still be compared.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    recorded = eval_cache.stat_of(str(spec))
    _edit_keeping_size_and_mtime(spec, "echo one", "echo two")
    real_stat = eval_cache.stat_of
    monkeypatch.setattr(eval_cache, "stat_of",
                        lambda p: recorded if p == str(spec) else real_stat(p))
    second = _outputs(capsys, str(spec))
    assert second != first and _contents(second) == ["two"]


def test_editing_an_imported_file_translates_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "common.yaml").write_text(SPEC)
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nimports: [./common.yaml]\n")
    first = _outputs(capsys, str(spec))
    (tmp_path / "common.yaml").write_text(SPEC.replace("echo one", "echo four"))
    second = _outputs(capsys, str(spec))
    assert second != first and _contents(second) == ["four"]


def test_a_spec_edited_while_it_is_built_is_not_recorded_as_the_old_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry must describe the bytes that were parsed, not the file as it is when
    # the entry is written.
    translate = importlib.import_module("runner.spec.translate")  # the module, not the name
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    real = translate.instantiate

    def edit_then_instantiate(*args: object, **kwargs: object) -> object:
        _edit_keeping_size_and_mtime(spec, "echo one", "echo two")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(translate, "instantiate", edit_then_instantiate)
        assert _contents(_outputs(capsys, str(spec))) == ["one"]  # the bytes read
    assert _contents(_outputs(capsys, str(spec))) == ["two"]  # the file now


def test_editing_a_local_input_builds_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("five\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\ninputs:\n  src: ./src\nderivations:\n  a:\n"
                    "    builder: /bin/sh\n    args: [\"-c\", \"cat ${{ src }}/f > $out\"]\n")
    first = _outputs(capsys, str(spec))
    (tmp_path / "src" / "f").write_text("six\n")
    second = _outputs(capsys, str(spec))
    assert second != first and _contents(second) == ["six"]


def test_other_names_have_their_own_entry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + "  b:\n    builder: /bin/sh\n    args: [\"-c\", \"echo bee > $out\"]\n")
    a = _outputs(capsys, str(spec), "a")
    b = _outputs(capsys, str(spec), "b")
    assert _contents(a) == ["one"] and _contents(b) == ["bee"]
    assert _outputs(capsys, str(spec), "b") == b


def test_another_host_system_translates_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `system` defaults to the host's: on another one the same spec means other
    # derivations (here ones this machine cannot build).
    import runner.spec.entries

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    other: Callable[[], str] = lambda: "riscv64-linux"  # noqa: E731
    monkeypatch.setattr(eval_cache, "host_system", other)
    monkeypatch.setattr(runner.spec.entries, "host_system", other)
    code, out, err = build(capsys, str(spec))
    assert (code, out.split()) != (0, first)
    assert "riscv64-linux" in err


def test_another_store_dir_is_not_answered_from_the_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: str) -> None:
    # One state dir belongs to one store: another store dir with it is refused, never
    # answered with the first store's paths.
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    _outputs(capsys, str(spec))
    code, out, err = build(capsys, str(spec), "--store-dir", str(tmp_path / "other"))
    assert code != 0 and out == "" and "belongs to the store" in err


def test_another_runner_version_or_cache_format_misses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], store_dir: str, state_dir: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    _outputs(capsys, str(spec))
    assert eval_cache.lookup(state_dir, store_dir, str(spec), []) is not None  # control
    with monkeypatch.context() as m:
        m.setattr(eval_cache, "__version__", "99.0")
        assert eval_cache.lookup(state_dir, store_dir, str(spec), []) is None
    with monkeypatch.context() as m:
        m.setattr(eval_cache, "VERSION", eval_cache.VERSION + 1)
        assert eval_cache.lookup(state_dir, store_dir, str(spec), []) is None


def test_a_damaged_or_foreign_entry_is_ignored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    (entry,) = _entries(state_dir)
    entry.write_text(entry.read_text().replace('"key": "[', '"key": "[0, ', 1))  # another key
    assert _outputs(capsys, str(spec)) == first
    entry.write_text("{not json")
    assert _outputs(capsys, str(spec)) == first


def test_removing_the_cache_dir_is_safe(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: str) -> None:
    import shutil

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    first = _outputs(capsys, str(spec))
    shutil.rmtree(Path(state_dir) / eval_cache.CACHE_DIR)  # as docs/performance.md says
    assert _outputs(capsys, str(spec)) == first
    assert len(_entries(state_dir)) == 1
