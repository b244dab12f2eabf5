"""Git inputs against real repositories: staged vs unstaged content, ignored and untracked
files, renames, deletions, modes and symlinks, the listing cache, and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.errors import RunnerError
from runner.spec import instantiate, load_spec, source_paths
from runner.spec.git_input import listing_key
from runner.spec.git_tree import list_entries
from runner.store.local_store import LocalStore
from tests.git_helpers import git, make_repo, tree_of, write

SPEC = """version: 1
inputs:
  staged: {path: ., git: true, name: staged}
  disk: {path: ., git: worktree, name: disk}
derivations:
  use:
    builder: /bin/sh
    args: ["-c", "echo ${{ staged }} ${{ disk }} > $out"]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {
        ".gitignore": "*.log\nbuild/\n",
        "a.txt": "a1\n",
        "src/b.py": "print('b')\n",
        "runner.yaml": SPEC,
    })


def snapshot(repo: Path, store: LocalStore) -> dict[str, dict[str, str]]:
    """What each input holds, as copied into the store."""
    spec = load_spec(repo / "runner.yaml")
    instantiate(spec, store)
    paths = source_paths(spec, store.store_dir)
    return {name: tree_of(path) for name, path in paths.items()}


@pytest.fixture
def store(store_dir: str, state_dir: str) -> LocalStore:
    return LocalStore(store_dir, state_dir)


def test_committed_tree_is_the_same_in_both_modes(repo: Path, store: LocalStore) -> None:
    snap = snapshot(repo, store)
    assert snap["staged"] == snap["disk"] == {
        ".gitignore": "*.log\nbuild/\n", "a.txt": "a1\n", "src/b.py": "print('b')\n",
        "runner.yaml": SPEC}


def test_index_mode_takes_staged_content_not_the_working_tree(repo: Path,
                                                              store: LocalStore) -> None:
    write(repo, "a.txt", "a2 staged\n")
    git(repo, "add", "a.txt")
    write(repo, "a.txt", "a3 unstaged\n")
    snap = snapshot(repo, store)
    assert snap["staged"]["a.txt"] == "a2 staged\n"
    assert snap["disk"]["a.txt"] == "a3 unstaged\n"


def test_untracked_and_ignored_files_never_get_in(repo: Path, store: LocalStore) -> None:
    write(repo, "new.txt", "untracked\n")
    write(repo, "debug.log", "ignored\n")
    write(repo, "build/out.o", "ignored dir\n")
    write(repo, "forced.log", "tracked although ignored\n")
    git(repo, "add", "-f", "forced.log")
    snap = snapshot(repo, store)
    for files in snap.values():
        assert "new.txt" not in files and "debug.log" not in files
        assert not any(name.startswith("build") for name in files)
        assert files["forced.log"] == "tracked although ignored\n"


def test_staged_new_file_is_in_the_index_mode(repo: Path, store: LocalStore) -> None:
    write(repo, "added.txt", "new\n")
    git(repo, "add", "added.txt")
    os.remove(repo / "added.txt")  # staged, then deleted from disk without `git rm`
    snap = snapshot(repo, store)
    assert snap["staged"]["added.txt"] == "new\n"
    assert "added.txt" not in snap["disk"]


def test_renames(repo: Path, store: LocalStore) -> None:
    git(repo, "mv", "src/b.py", "src/c.py")
    snap = snapshot(repo, store)
    for files in snap.values():
        assert "src/b.py" not in files
        assert files["src/c.py"] == "print('b')\n"


def test_deletions_staged_and_unstaged(repo: Path, store: LocalStore) -> None:
    git(repo, "rm", "-q", "a.txt")
    os.remove(repo / "src" / "b.py")  # not staged
    snap = snapshot(repo, store)
    assert "a.txt" not in snap["staged"] and "a.txt" not in snap["disk"]
    assert snap["staged"]["src/b.py"] == "print('b')\n"
    assert "src/b.py" not in snap["disk"]


def test_executable_bit_and_symlinks(repo: Path, store: LocalStore) -> None:
    tool = write(repo, "tool.sh", "#!/bin/sh\n")
    tool.chmod(0o755)
    os.symlink("a.txt", repo / "link")
    git(repo, "add", "tool.sh", "link")
    snap = snapshot(repo, store)
    for files in snap.values():
        assert files["tool.sh*"] == "#!/bin/sh\n"
        assert files["link"] == "-> a.txt"


def test_same_path_as_a_plain_input_of_the_same_files(repo: Path, store: LocalStore,
                                                      tmp_path: Path) -> None:
    # The git input is an ordinary `source` path: equal content, equal store path.
    plain = tmp_path / "plain"
    for name, text in {".gitignore": "*.log\nbuild/\n", "a.txt": "a1\n",
                       "src/b.py": "print('b')\n", "runner.yaml": SPEC}.items():
        write(plain, name, text)
    write(repo, "untracked.txt", "x\n")
    spec = load_spec(repo / "runner.yaml")
    paths = source_paths(spec, store.store_dir)
    assert paths["staged"] == store.add_path(str(plain), "staged")


def test_subdirectory_input_and_exclude(repo: Path, store: LocalStore) -> None:
    write(repo, "src/data.tmp", "tracked but excluded\n")
    git(repo, "add", "src/data.tmp")
    write(repo, "sub.yaml", """version: 1
inputs:
  src: {path: src, git: true, exclude: ["*.tmp"]}
derivations:
  d: {builder: /bin/sh, args: ["-c", "cat ${{ src }}/b.py > $out"]}
""")
    spec = load_spec(repo / "sub.yaml")
    instantiate(spec, store)
    path = source_paths(spec, store.store_dir)["src"]
    assert path.endswith("-src")
    assert tree_of(path) == {"b.py": "print('b')\n"}


def test_listing_key_tracks_content_and_mode(repo: Path) -> None:
    spec = load_spec(repo / "runner.yaml")
    entry = spec.inputs["disk"]
    before = listing_key(entry, list_entries(entry.path, "worktree"))
    assert listing_key(entry, list_entries(entry.path, "worktree")) == before
    write(repo, "untracked.txt", "does not count\n")
    assert listing_key(entry, list_entries(entry.path, "worktree")) == before
    write(repo, "a.txt", "a2\n")
    changed = listing_key(entry, list_entries(entry.path, "worktree"))
    assert changed != before
    (repo / "a.txt").chmod(0o755)
    assert listing_key(entry, list_entries(entry.path, "worktree")) != changed
    staged = spec.inputs["staged"]
    assert listing_key(staged, list_entries(entry.path, "index")) != before  # mode is keyed


def test_damaged_cache_entry_is_ignored(repo: Path, store: LocalStore,
                                        isolated_env: Path) -> None:
    first = snapshot(repo, store)
    cache = isolated_env / "cache" / "runner" / "git-inputs"
    entries = list(cache.iterdir())
    assert len(entries) == 2
    for entry in entries:
        entry.write_text("not a hash\n")
    assert snapshot(repo, store) == first


def test_git_index_file_from_the_environment_is_used(repo: Path, store: LocalStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # `git commit -a` runs the hook with GIT_INDEX_FILE naming a temporary index.
    alt = repo / ".git" / "alt-index"
    env = {"GIT_INDEX_FILE": str(alt)}
    git(repo, "read-tree", "HEAD", env=env)
    write(repo, "a.txt", "only in the alternative index\n")
    git(repo, "add", "a.txt", env=env)
    git(repo, "checkout", "a.txt")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("GIT_INDEX_FILE", ".git/alt-index")  # relative, as hooks may see it
    assert snapshot(repo, store)["staged"]["a.txt"] == "only in the alternative index\n"


def test_not_a_repository_is_a_one_line_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    write(plain, "runner.yaml", SPEC)
    assert run(["validate", str(plain / "runner.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not inside a git work tree" in err
    assert len(err.strip().splitlines()) == 1


def test_merge_conflict_is_an_error(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    write(repo, "a.txt", "other\n")
    git(repo, "commit", "-q", "-am", "other")
    git(repo, "checkout", "-q", "main")
    write(repo, "a.txt", "main\n")
    git(repo, "commit", "-q", "-am", "main")
    assert os.system(f"cd {repo} && git merge -q other >/dev/null 2>&1") != 0
    entry = load_spec(repo / "runner.yaml").inputs["staged"]
    with pytest.raises(RunnerError) as e:
        list_entries(entry.path, "index")
    assert e.value.reason == "git" and "merge conflicts" in str(e.value)
