"""Where a sandboxed spawn's milliseconds go: median time between its steps.

    python bench/sandbox_trace.py [-n RUNS] [--closure N] [--stubs]

Spawns `/bin/sh -c 'echo i > $out'` RUNS times with `RUNNER_SANDBOX_TRACE`
set (runner/sandbox/trace.py), then prints, for each step in the order the
steps happen, the median time since the step before it and since the spawn
began. `--closure N` gives the build N input paths; `--stubs` makes the
store view the fallback way (mount points on disk).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sandbox import make_plan, spawn
from runner.sandbox.plan import default_ids
from runner.sandbox.storeview import STORE_VIEW_ENV
from runner.sandbox.trace import ENV
from runner.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--closure", type=int, default=1)
    parser.add_argument("--stubs", action="store_true")
    args = parser.parse_args()
    if args.stubs:
        os.environ[STORE_VIEW_ENV] = "stubs"
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STORE_PARENT")) as tmp:
        store, build = f"{tmp}/store", f"{tmp}/build"
        os.mkdir(store)
        os.mkdir(build)
        closure = [f"{store}/{i:032d}-in{i}" for i in range(args.closure)]
        for path in closure:
            os.mkdir(path)
        out = f"{store}/0123456789abcdfghijklmnpqrsvwxyz-out"
        plan = make_plan(argv=["/bin/sh", "-c", "echo i > $out"],
                         env={"PATH": "/usr/bin:/bin", "out": out}, build_dir=build,
                         store_dir=store, closure=closure, outputs=[out], fixed_output=False,
                         settings=Settings.load(environ={}), ids=default_ids())
        log = f"{tmp}/trace"
        runs: list[list[tuple[str, int]]] = []
        for i in range(args.runs + 1):
            os.environ[ENV] = log
            began = time.monotonic_ns()
            proc = spawn(plan, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proc.wait()
            ended = time.monotonic_ns()
            os.environ.pop(ENV)
            with open(log) as f:
                marks = sorted(((int(t), label) for _, label, t in
                                (line.split() for line in f)))
            os.unlink(log)
            os.unlink(out)
            if i:  # the first starts the fork server
                runs.append([("start", began)] + [(label, t) for t, label in marks]
                            + [("reaped", ended)])
    _report(runs)
    with open("/proc/loadavg") as f:
        print("load average:", " ".join(f.read().split()[:3]))


def _report(runs: list[list[tuple[str, int]]]) -> None:
    # Steps in their causal order. Runner's "cloned" (the pid came back) races
    # with the supervisor's first steps and is on no one's path: left out.
    order = [label for label, _ in runs[0] if label != "cloned"]
    steps: dict[str, list[float]] = {label: [] for label in order}
    totals: dict[str, list[float]] = {label: [] for label in order}
    for run in runs:
        at = dict(run)
        if not set(order) <= set(at):
            continue
        for before, label in itertools.pairwise(order):
            steps[label].append((at[label] - at[before]) / 1e6)
        for label in order:
            totals[label].append((at[label] - at["start"]) / 1e6)
    print(f"{'step':24} {'step ms':>8} {'total ms':>9}  (median of {len(steps['reaped'])})")
    for label in order[1:]:
        print(f"{label:24} {statistics.median(steps[label]):8.2f} "
              f"{statistics.median(totals[label]):9.2f}")


if __name__ == "__main__":
    main()
