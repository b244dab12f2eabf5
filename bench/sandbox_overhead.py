"""Per-build cost of the sandbox: spawn `/bin/true` plainly and sandboxed, same run.

    python bench/sandbox_overhead.py [-n RUNS]

Prints milliseconds per build for each and their ratio. Each sandboxed run
includes everything a build pays: preparing the staging dir, the two forks,
five or six namespaces, the mounts, pivot_root, and collecting outputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sandbox import make_plan, probe, spawn
from runner.settings import Settings


def per_run(runs: int, start: Callable[[], subprocess.Popen[bytes]]) -> float:
    start().wait()  # warm up
    began = time.perf_counter()
    for _ in range(runs):
        proc = start()
        if proc.wait() != 0:
            raise SystemExit(f"/bin/true exited with {proc.returncode}")
    return (time.perf_counter() - began) / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=200)
    args = parser.parse_args()
    why = probe()
    if why is not None:
        raise SystemExit(f"sandbox unavailable: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        store, build = os.path.join(tmp, "store"), os.path.join(tmp, "build")
        os.mkdir(store)
        os.mkdir(build)
        out = f"{store}/0123456789abcdfghijklmnpqrsvwxyz-out"
        plan = make_plan(argv=["/bin/true"], env={"PATH": "/usr/bin:/bin", "out": out},
                         build_dir=build, store_dir=store, closure=[], outputs=[out],
                         fixed_output=False, settings=Settings.load(environ={}))
        dev = subprocess.DEVNULL
        plain = per_run(args.runs, lambda: subprocess.Popen(
            list(plan.argv), env=dict(plan.env), stdin=dev, stdout=dev, stderr=dev,
            start_new_session=True))
        boxed = per_run(args.runs, lambda: spawn(plan, stdout=dev, stderr=dev))
    who = "root" if os.geteuid() == 0 else "unprivileged (user namespace)"
    print(f"runs: {args.runs} each, as {who}")
    print(f"plain spawn:     {plain:7.2f} ms per build")
    print(f"sandboxed spawn: {boxed:7.2f} ms per build")
    print(f"overhead:        {boxed - plain:7.2f} ms per build, ratio {boxed / plain:.1f}x")


if __name__ == "__main__":
    main()
