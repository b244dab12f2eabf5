"""What a binary cache that hangs costs a build, the first time and while it is known down.

    python bench/hanging_cache.py                # default timeout (15 s), 10 derivations
    python bench/hanging_cache.py --timeout 3 --derivations 50 --runs 5

A local server accepts connections and never answers. Three fresh builds of
the same small spec (the store is wiped before each, so every output is
looked up): without the cache; with it the first time (bound: one
timeout); with it again, now known down (bound: +0.5 s over the first row).
Each row is the median of `--runs` rounds; the health file is deleted
before each round's first run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(work: Path, spec: Path, substituters: str) -> float:
    shutil.rmtree(work / "store", ignore_errors=True)
    shutil.rmtree(work / "state" / "db", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "build", str(spec), "--no-out-link",
         "--store-dir", str(work / "store"), "--state-dir", str(work / "state"),
         "--option", "substituters", substituters], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
        raise SystemExit("error: the build failed")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=15.0, help="the cache's ?timeout=")
    parser.add_argument("--derivations", type=int, default=10, help="derivations in the spec")
    parser.add_argument("--runs", type=int, default=3, help="rounds; rows are medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hang-") as tmp:
        work = Path(tmp)
        spec = work / "spec.yaml"
        spec.write_text("version: 1\nderivations:\n" + "".join(
            f"  d{i}:\n    builder: /bin/sh\n    args: [\"-c\", \"echo {i} > $out\"]\n"
            for i in range(args.derivations)))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # the kernel completes handshakes; nobody ever answers
        url = f"http://127.0.0.1:{sock.getsockname()[1]}?timeout={args.timeout:g}"
        times: list[list[float]] = [[], [], []]
        try:
            for _ in range(args.runs):
                (work / "state" / "substituter-health.sqlite").unlink(missing_ok=True)
                for i, subs in enumerate(("", url, url)):
                    times[i].append(build(work, spec, subs))
        finally:
            sock.close()
        labels = ("no cache", "hanging cache, first run", "hanging cache, known down")
        rows = [(label, statistics.median(t)) for label, t in zip(labels, times, strict=True)]
    base = rows[0][1]
    print(f"{args.derivations} derivations, cache timeout {args.timeout:g} s, "
          f"median of {args.runs}")
    for label, took in rows:
        print(f"  {label:28} {took:6.2f} s  ({took - base:+.2f} s)")
    first, known = rows[1][1] - base, rows[2][1] - base
    print(f"bound: first run ≤ one timeout: {'met' if first <= args.timeout + 1 else 'MISSED'}; "
          f"known down ≤ +0.5 s: {'met' if known <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
