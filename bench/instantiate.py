"""What schema validation costs `runner instantiate` and `runner validate` of valid specs.

    python bench/instantiate.py                # medians of 15 runs
    python bench/instantiate.py --runs 31 --workloads wide-1000,specs
    python bench/instantiate.py --tree /tmp/old --tree .   # compare with another checkout
                                                           # (git archive REV | tar -x -C /tmp/old)

Rows: the whole command (a fresh store each run), and in a fresh process the schema
check alone: first call (imports and set-up included, what one command pays) and a
later call (the per-document cost). `specs` is every spec under specs/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
assert _spec is not None and _spec.loader is not None
bench_run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench_run
_spec.loader.exec_module(bench_run)

# In a fresh interpreter: import the spec loader, then time the schema check of each
# document twice (first call: imports and set-up; second: the check alone).
_PROBE = """
import json, sys, time
from pathlib import Path
from runner.spec.yaml_loader import load_yaml
roots = [load_yaml(Path(p)) for p in sys.argv[1:]]
t0 = time.perf_counter()
from runner.spec.validate import schema_problems
for root in roots:
    assert schema_problems(root) == []
t1 = time.perf_counter()
for root in roots:
    schema_problems(root)
t2 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1]))
"""


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure_once(specs: list[Path], work: Path, env: dict[str, str]) -> dict[str, float]:
    dirs = ["--store-dir", str(work / "store"), "--state-dir", str(work / "state")]
    inst = sum(_timed([*bench_run.RUNNER, "instantiate", str(s), *dirs], env) for s in specs)
    val = _timed([*bench_run.RUNNER, "validate", *map(str, specs)], env)
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, specs)], env=env,
                         check=True, capture_output=True, text=True).stdout
    first, again = json.loads(out)
    return {"instantiate": inst, "validate": val, "schema check, first call": first,
            "schema check, later call": again}


def _env(work: Path, tree: Path) -> dict[str, str]:
    env = bench_run.runner_env(work)
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
            bench_run.run([*bench_run.RUNNER, "--help"], env)  # byte-compile once
        print(f"schema validation cost, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"{args.runs} runs interleaved, median (min) in seconds\n")
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
                specs = [bench_run.write_spec(bench_run.parse_workload(name), root)]
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
