"""A no-op `runner build` of a wide spec through `runner daemon` vs the same no-op
on the local store (issue 19: target: at most twice the local time).

    python bench/daemon_noop.py                 # wide-1000, medians of 7 runs
    python bench/daemon_noop.py --nodes 200 --runs 3

Both use the same store and state dir; the daemon client asks one
query-valid-paths for every output (no round trip per path). Two rows: with the
eval cache (an unchanged spec: what a repeated build costs) and without it (its
entry removed before each run: the spec is parsed and every `.drv` path computed,
locally and on the client).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import workloads  # bench/workloads.py: this script's directory is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent



def _timed(argv: list[str], env: dict[str, str], before: list[Path]) -> float:
    for path in before:
        shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="derivations in the spec")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (median)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runner-bench-daemon-"))
    try:
        env = {**workloads.runner_env(work), "PYTHONPATH": str(ROOT),
               "RUNNER_STORE_DIR": str(work / "store"), "RUNNER_STATE_DIR": str(work / "state"),
               "XDG_CONFIG_HOME": str(work / "config")}
        spec = workloads.write_spec(
            workloads.Workload(f"wide-{args.nodes}", workloads.wide(args.nodes)), work)
        build = [*workloads.RUNNER, "build", "--sandbox=off", "--no-out-link", str(spec)]
        subprocess.run(build, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        socket_path = str(work / "socket")
        daemon = subprocess.Popen([*workloads.RUNNER, "daemon", "--socket", socket_path],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert daemon.stderr is not None
            if "listening on" not in daemon.stderr.readline():
                raise SystemExit("error: the daemon did not start")
            remote = [*build, "--store", f"unix://{socket_path}"]
            cache = [work / "state" / "eval-cache"]
            rows = []
            for label, before in (("eval cache", []), ("no eval cache", cache)):
                local = statistics.median(_timed(build, env, before) for _ in range(args.runs))
                through = statistics.median(_timed(remote, env, before)
                                            for _ in range(args.runs))
                rows.append((label, local, through))
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
        print(f"no-op build of wide-{args.nodes}, median of {args.runs} runs")
        print(f"{'':16}{'local':>10}{'daemon':>10}{'ratio':>8}")
        for label, local, through in rows:
            print(f"{label:16}{local:>9.3f}s{through:>9.3f}s{through / local:>7.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
