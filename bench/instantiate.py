"""What schema validation costs `runner instantiate` and `runner validate` of valid specs.

    python bench/instantiate.py                # medians of 15 runs
    python bench/instantiate.py --runs 31 --workloads wide-1000,specs
    python bench/instantiate.py --tree /tmp/old --tree .   # compare with another checkout
                                                           # (git archive REV | tar -x -C /tmp/old)

Rows: the whole command (a fresh store each run), and in a fresh process the schema
check alone: first call (imports and set-up included, what one command pays) and a
later call (the per-document cost). `specs` is every spec under specs/. Figures are CPU
time (user + system) of the process, not wall time: on a shared machine the wall time
of a 50 ms step mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads  # bench/workloads.py: this script's directory is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# In a fresh interpreter: import the spec loader, then time the schema check of each
# document: the first call (imports and set-up: what one command pays), then the best of
# 20 later calls of `schema_problems` (plain data + check) and of the valid/invalid
# check alone (a tree from before the compiled check has the hand-written quick one).
_PROBE = """
import json, sys, time
from pathlib import Path
from runner.spec.yaml_loader import load_yaml
roots = [load_yaml(Path(p)) for p in sys.argv[1:]]
clock = time.process_time
t0 = clock()
from runner.spec.validate import schema_problems
for root in roots:
    assert schema_problems(root) == []
first = clock() - t0
try:
    from runner.spec.compiled_schema import is_valid
except ImportError:
    from runner.spec.validate import _quick
    is_valid = _quick().valid
plain = [root.plain() for root in roots]
def best(fn):
    times = []
    for _ in range(20):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)
later = best(lambda: [schema_problems(root) for root in roots])
alone = best(lambda: [is_valid(doc) for doc in plain])
print(json.dumps([first, later, alone]))
"""


def _timed(argv: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of the command."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: benchmark command failed: {' '.join(argv[:6])} …")
    return usage.ru_utime + usage.ru_stime


def measure_once(specs: list[Path], work: Path, env: dict[str, str]) -> dict[str, float]:
    dirs = ["--store-dir", str(work / "store"), "--state-dir", str(work / "state")]
    inst = sum(_timed([*workloads.RUNNER, "instantiate", str(s), *dirs], env) for s in specs)
    val = _timed([*workloads.RUNNER, "validate", *map(str, specs)], env)
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, specs)], env=env,
                         check=True, capture_output=True, text=True).stdout
    first, later, alone = json.loads(out)
    return {"instantiate": inst, "validate": val, "schema check, first call": first,
            "schema check, later call (best of 20)": later,
            "valid/invalid check alone (best of 20)": alone}


def _env(work: Path, tree: Path) -> dict[str, str]:
    env = workloads.runner_env(work)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree.resolve()),
                                                      env.get("PYTHONPATH")]))
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--workloads", default="specs,wide-1000,sparse-10x100")
    p.add_argument("--tree", type=Path, action="append",
                   help="a runner source tree to measure; repeat to compare trees, whose "
                        "runs are interleaved (default: this one)")
    args = p.parse_args()
    trees: list[Path] = args.tree or [ROOT]
    with tempfile.TemporaryDirectory(prefix="runner-bench-inst-") as tmp:
        work = Path(tmp)
        envs = [_env(work, tree) for tree in trees]
        for env in envs:
            workloads.run([*workloads.RUNNER, "--help"], env)  # byte-compile once
        print(f"schema validation cost, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"{args.runs} runs interleaved, median (min) CPU seconds\n")
        for i, tree in enumerate(trees):
            print(f"- tree {i + 1}: {tree}")
        print("\n| workload | measure | " + " | ".join(f"tree {i + 1}" for i in range(len(trees)))
              + " |")
        print("| --- | --- |" + " --- |" * len(trees))
        for name in args.workloads.split(","):
            if name == "specs":
                specs = sorted((ROOT / "specs").glob("*.yaml"))
            else:
                root = work / name
                root.mkdir()
                specs = [workloads.write_spec(workloads.parse_workload(name), root)]
            samples: list[dict[str, list[float]]] = [{} for _ in trees]
            for run in range(args.runs):
                for t, env in enumerate(envs):
                    figures = measure_once(specs, work / f"{name}-{t}-{run}", env)
                    for label, value in figures.items():
                        samples[t].setdefault(label, []).append(value)
            for label in samples[0]:
                cells = [f"{statistics.median(s[label]):.4f} ({min(s[label]):.4f})"
                         for s in samples]
                print(f"| {name} | {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
