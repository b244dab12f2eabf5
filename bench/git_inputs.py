"""How fast git inputs are hashed, against hashing the same tree as a plain input.

    python bench/git_inputs.py               # 10,000 files, 5 runs each
    python bench/git_inputs.py --files 2000 --runs 3

A repository of N tracked files (plus untracked noise) is made in a temp dir.
Figures are medians measured here and now, printed with their ratio to the
baseline: NAR-hashing the working tree as a plain `path:` input, which reads
every byte on every run. A git input reads bytes only when its listing
(`git ls-files -s`, plus `git diff-files` in worktree mode) is new; a warm
run costs the listing and one cache lookup. The last rows time a whole
`runner check --quiet` (a process, as a hook runs it) on an unchanged index.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SPEC = """version: 1
inputs:
  plain: {path: ., exclude: [".git/", "untracked/"]}
  staged: {path: ., git: true}
  disk: {path: ., git: worktree}
derivations:
  check:
    builder: /bin/sh
    args: ["-c", "test -d ${{ staged }} && touch $out"]
"""

# What a hook runs: several checks over the staged tree (the 20-check case).
HOOK_SPEC = "version: 1\ninputs:\n  src: {path: ., git: true}\nderivations:\n" + "".join(
    f"  check{i}:\n    builder: /bin/sh\n"
    f"    args: [\"-c\", \"test -d ${{{{ src }}}} && echo {i} > $out\"]\n" for i in range(20))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_repo(root: Path, files: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "bench@example.org")
    git(repo, "config", "user.name", "bench")
    for i in range(files):
        path = repo / f"pkg{i % 100:02d}" / f"module_{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# module {i}\n" + "x = 1\n" * (i % 300))
    (repo / "runner.yaml").write_text(SPEC)
    (repo / "hook.yaml").write_text(HOOK_SPEC)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")
    noise = repo / "untracked"
    noise.mkdir()
    for i in range(200):
        (noise / f"junk_{i}.bin").write_bytes(os.urandom(1024))
    return repo


def median_time(func: Callable[[], object], runs: int, before: Callable[[], None] | None = None
                ) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="runner-bench-git-") as tmp:
        root = Path(tmp)
        for sub in ("store", "state", "cache", "config"):
            (root / sub).mkdir()
        os.environ.update(RUNNER_STORE_DIR=str(root / "store"),
                          RUNNER_STATE_DIR=str(root / "state"),
                          XDG_CACHE_HOME=str(root / "cache"),
                          XDG_CONFIG_HOME=str(root / "config"))
        repo = make_repo(root, opts.files)
        from runner.spec import load_spec
        from runner.spec.inputs import source_path

        spec = load_spec(repo / "runner.yaml")
        store_dir = str(root / "store")
        cache = root / "cache" / "runner" / "git-inputs"

        def clear_cache() -> None:
            for entry in cache.glob("*"):
                entry.unlink()

        def hash_input(name: str) -> Callable[[], str]:
            return lambda: source_path(spec.inputs[name], store_dir)

        assert hash_input("plain")() == hash_input("staged")() == hash_input("disk")(), \
            "a git input must hash like the plain tree of the same files"
        from runner.spec.inputs import exclude_filter
        from runner.store.local_store import LocalStore

        def add_plain() -> None:
            with LocalStore(store_dir, str(root / "state")) as store:
                entry = spec.inputs["plain"]
                store.add_path(str(entry.path), entry.name, exclude_filter(entry))

        rows = [
            ("plain input, NAR-hash of the tree (baseline)",
             median_time(hash_input("plain"), opts.runs)),
            ("plain input, copied into the store", median_time(add_plain, 1)),
            ("git: index, cold (export from git + hash)",
             median_time(hash_input("staged"), opts.runs, clear_cache)),
            ("git: worktree, cold (copy + hash)",
             median_time(hash_input("disk"), opts.runs, clear_cache)),
            ("git: index, warm (listing + cache lookup)",
             median_time(hash_input("staged"), opts.runs)),
            ("git: worktree, warm (listing + git stat cache)",
             median_time(hash_input("disk"), opts.runs)),
        ]
        check = [sys.executable, "-m", "runner", "check", "--quiet", "--sandbox=off"]

        def run_check() -> None:
            subprocess.run(check, cwd=repo, check=True)

        clear_cache()
        first = median_time(run_check, 1)
        rows.append(("runner check, first run (hash, add, build)", first))
        rows.append(("runner check, same index again (no work)",
                     median_time(run_check, opts.runs)))
        hook = [*check, "hook.yaml"]
        rows.append(("20-check hook spec, first run",
                     median_time(lambda: subprocess.run(hook, cwd=repo, check=True), 1)))
        rows.append(("20-check hook spec, same index again (no work)",
                     median_time(lambda: subprocess.run(hook, cwd=repo, check=True),
                                 opts.runs)))
        rows.append(("python -c pass (process start floor)",
                     median_time(lambda: subprocess.run([sys.executable, "-c", "pass"],
                                                        check=True), opts.runs)))

    base = rows[0][1]
    print(f"{opts.files} tracked files, median of {opts.runs} runs")
    print(f"{'what':<50} {'seconds':>9} {'vs baseline':>12}")
    for name, seconds in rows:
        print(f"{name:<50} {seconds:>9.3f} {seconds / base:>11.2f}x")


if __name__ == "__main__":
    main()
