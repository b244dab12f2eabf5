"""Benchmark runner against Nix 2.8 (sandbox on and off), in one run, as ratios.

    python bench/run.py --quick     # the issue's ratios without dense and N = 10,000 (~5 min)
    python bench/run.py             # everything (~10 min on an idle 2-core VM)
    python bench/run.py --workloads chain-200 --scaling wide --sizes 100,1000 --no-nix

Prints three tables (docs/performance.md shows how to read them):

1. Full builds and no-op rebuilds of the issue's workloads: runner with its
   sandbox on (the default) against Nix with its sandbox on (`sandbox = true`,
   `sandbox-paths = /bin /usr /lib /lib64`, build users of group `nixbld`) and
   off, each figure next to its target anchor and ratio.
2. Scaling: per-node cost of wide-N and chain-N with the sandbox on, as a ratio to
   the smallest N, and the peak RSS of any runner command for each.
3. Start-up: `runner --version` and `--help` against the interpreter's own start.

Figures are medians of `--runs` wall-clock runs made here and now, interleaved where
that matters, so ratios compare like with like on a shared machine; the load average
is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# bench/workloads.py (this script's directory is on sys.path)
from workloads import (
    RUNNER,
    Usage,
    Workload,
    parse_workload,
    run,
    runner_env,
    write_nix,
    write_spec,
)

NIX_SANDBOX_PATHS = "/bin /usr /lib /lib64"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(runs: int, fn: Callable[[], object], setup: Callable[[], None] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        samples.append(timed(fn))
    return statistics.median(samples)


# Where `remove` puts a finished run's dirs: inside the bench's temporary dir, deleted
# with it when the bench ends (`main`).
GRAVEYARD: list[Path] = []


def remove(path: Path) -> None:
    """Set a finished run's dirs aside, deleted only when the bench ends. On ext4
    without a journal (this project's CI VMs) each new inode skips every inode freed
    in the group in the last minutes, so deleting one run's store made the next run
    (runner's or Nix's, whichever came next) pay for it (docs/performance.md)."""
    if not path.exists():
        return
    if not GRAVEYARD:
        shutil.rmtree(path, onerror=_force_remove)
        return
    os.rename(path, GRAVEYARD[0] / f"{len(os.listdir(GRAVEYARD[0]))}")


def _force_remove(func: Callable[[str], object], path: str, _exc: object) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o755)
    func(path)


class Runner:
    def __init__(self, root: Path, jobs: int, env: dict[str, str]) -> None:
        self.root, self.jobs, self.env = root, jobs, env
        self.dirs = ["--store-dir", str(root / "store"), "--state-dir", str(root / "state")]

    def fresh(self) -> None:
        remove(self.root)

    def build(self, spec: Path, sandbox: str) -> None:
        run([*RUNNER, "build", str(spec), "--no-out-link", "-j", str(self.jobs),
             f"--sandbox={sandbox}", *self.dirs], self.env)

    def noop_without_site(self, spec: Path) -> None:
        """The no-op as an install without this machine's `.pth` start-up hooks would
        run it: `python -S`, site-packages on PYTHONPATH instead (no `.pth` is run)."""
        import site

        env = {**self.env, "PYTHONPATH": os.pathsep.join(
            filter(None, [self.env.get("PYTHONPATH"), *site.getsitepackages()]))}
        run([sys.executable, "-S", "-m", "runner", "build", str(spec), "--no-out-link",
             *self.dirs], env)

    def instantiate(self, spec: Path) -> None:
        run([*RUNNER, "instantiate", str(spec), *self.dirs], self.env)


class Nix:
    """nix-build on a store of its own under `root`, sandbox on or off."""

    def __init__(self, root: Path, jobs: int, sandbox: bool, group: str) -> None:
        self.root, self.jobs, self.sandbox, self.group = root, jobs, sandbox, group

    def env(self) -> dict[str, str]:
        conf = self.root / "etc"
        conf.mkdir(parents=True, exist_ok=True)
        lines = ["substituters =", f"sandbox = {'true' if self.sandbox else 'false'}"]
        if self.sandbox:
            lines += [f"sandbox-paths = {NIX_SANDBOX_PATHS}", f"build-users-group = {self.group}"]
        else:
            lines.append("build-users-group =")
        (conf / "nix.conf").write_text("\n".join(lines) + "\n")
        return {**os.environ, "NIX_STORE_DIR": str(self.root / "store"),
                "NIX_STATE_DIR": str(self.root / "var"), "NIX_LOG_DIR": str(self.root / "log"),
                "NIX_CONF_DIR": str(conf), "HOME": str(self.root)}

    def fresh(self) -> None:
        remove(self.root)

    def build(self, expr: Path) -> None:
        run(["nix-build", str(expr), "--no-out-link", "-j", str(self.jobs), "--quiet"],
            self.env())


class BuildUsers:
    """Nix's sandbox builds as members of a build-users group, and needs root for it.

    Each bench run makes a group and 4 users of its own (removed at the end): Nix with
    a private state dir does not see another Nix's build-user locks, and before each
    build it kills every process of the user it picked, so two runs sharing `nixbld`
    (two benches, or another user's nix-build) kill each other's builders."""

    def __init__(self, wanted: bool) -> None:
        self.group = f"rbench{os.getpid()}"
        self.users = [f"{self.group}u{i}" for i in range(1, 5)]
        self.why_not: str | None = None if wanted else "not asked for"

    def __enter__(self) -> BuildUsers:
        if self.why_not is not None:
            pass
        elif os.geteuid() != 0:
            self.why_not = "not root: Nix's sandbox needs build users"
        elif shutil.which("groupadd") is None or shutil.which("useradd") is None:
            self.why_not = "no groupadd/useradd to create build users"
        else:
            subprocess.run(["groupadd", "--system", self.group], check=True)
            for user in self.users:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                "/usr/sbin/nologin", "--gid", self.group, "--groups",
                                self.group, user], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.why_not is None:
            for user in self.users:
                subprocess.run(["userdel", user], check=False, stderr=subprocess.DEVNULL)
            subprocess.run(["groupdel", self.group], check=False, stderr=subprocess.DEVNULL)


@dataclass
class Row:
    workload: str
    measure: str
    ours: float
    anchor: str = ""  # what the ratio compares with
    theirs: float | None = None
    target: float | None = None  # the ratio to reach (at most)

    def line(self) -> str:
        ratio = f"{self.ours / self.theirs:.2f}x" if self.theirs else ""
        ok = ""
        if self.theirs and self.target is not None:
            ok = f"<= {self.target}x {'ok' if self.ours / self.theirs <= self.target else 'MISSED'}"
        theirs = f"{self.theirs:.3f}" if self.theirs else ""
        return (f"| {self.workload} | {self.measure} | {self.ours:.3f} | {self.anchor} | {theirs} "
                f"| {ratio} | {ok} |")


# The anchors: which Nix a workload's sandbox-on build is compared with, and the
# ratio to reach.
ANCHORS = {"chain": (True, 0.25), "wide": (False, 0.25), "sparse": (False, 0.25),
           "dense": (True, 0.5)}
NOOP_TARGET = 0.1


def bench_workload(w: Workload, args: argparse.Namespace, work: Path, env: dict[str, str],
                   users: BuildUsers) -> list[Row]:
    root = work / w.name
    root.mkdir()
    spec = write_spec(w, root)
    r = Runner(root / "runner", args.jobs, env)
    kind = w.name.split("-")[0]
    anchor_sandbox, target = ANCHORS.get(kind, (False, None))
    rows: list[Row] = []
    times: dict[str, float] = {}
    last_nix: tuple[Nix, Path] | None = None  # kept built for the interleaved no-ops
    if not args.no_nix:
        expr = write_nix(w, root)
        for sandbox in ((True, False) if users.why_not is None else (False,)):
            nix = Nix(root / f"nix-{'on' if sandbox else 'off'}", args.jobs, sandbox, users.group)
            times[f"nix {sandbox}"] = median(args.nix_runs, lambda n=nix: n.build(expr), nix.fresh)
            if last_nix is not None:
                last_nix[0].fresh()
            last_nix = (nix, expr)
    noop_target = NOOP_TARGET if kind in ("wide", "dense") else None
    for sandbox in args.sandbox:
        full = median(args.runs, lambda sb=sandbox: r.build(spec, sb), r.fresh)
        if sandbox == "on" and target is not None:
            key = f"nix {anchor_sandbox}"
            rows.append(Row(w.name, "full build, sandbox on", full,
                            f"Nix sandbox {'on' if anchor_sandbox else 'off'}", times.get(key),
                            target))
            other = f"nix {not anchor_sandbox}"  # the other Nix, for reference
            rows.append(Row(w.name, "full build, sandbox on", full,
                            f"Nix sandbox {'off' if anchor_sandbox else 'on'}", times.get(other)))
        else:
            rows.append(Row(w.name, f"full build, sandbox {sandbox}", full,
                            "Nix sandbox off", times.get("nix False")))
    # No-ops: cheap, so `noop_runs` rounds, each runner, runner -S, Nix in turn.
    samples: dict[str, list[float]] = {"runner": [], "bare": [], "nix": []}
    for _ in range(args.noop_runs):
        samples["runner"].append(timed(lambda: r.build(spec, args.sandbox[-1])))
        samples["bare"].append(timed(lambda: r.noop_without_site(spec)))
        if last_nix is not None:
            samples["nix"].append(timed(lambda: last_nix[0].build(last_nix[1])))
    noop_nix = statistics.median(samples["nix"]) if samples["nix"] else None
    rows.append(Row(w.name, "no-op rebuild", statistics.median(samples["runner"]), "Nix no-op",
                    noop_nix, noop_target))
    rows.append(Row(w.name, "no-op rebuild, python -S (no .pth hooks)",
                    statistics.median(samples["bare"]), "Nix no-op", noop_nix, noop_target))
    if last_nix is not None:
        last_nix[0].fresh()
    r.fresh()
    return rows


def scaling(args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[str]:
    """Per-node cost of full builds (sandbox on) at each size, against the smallest."""
    lines = []
    for kind in args.scaling:
        base: float | None = None
        for n in args.sizes:
            w = parse_workload(f"{kind}-{n}")
            root = work / f"scale-{w.name}"
            root.mkdir()
            spec = write_spec(w, root)
            r = Runner(root / "runner", args.jobs, env)
            Usage.reset()
            runs = 1 if n >= 10_000 else args.runs
            t = median(runs, lambda r=r, spec=spec: r.build(spec, "on"), r.fresh)
            rss = Usage.peak_kb / 1024
            Usage.reset()
            r.fresh()
            r.instantiate(spec)
            inst_rss = Usage.peak_kb / 1024
            per = t / n * 1000
            base = per if base is None else base
            lines.append(f"| {w.name} | {t:.2f} | {per:.2f} | {per / base:.2f}x "
                         f"| {rss:.0f} | {inst_rss:.0f} |")
            print(lines[-1], flush=True)
            remove(root)
    return lines


def startup(env: dict[str, str], runs: int) -> list[str]:
    """Interleaved: the interpreter alone, `runner --version`, `runner --help`. Judged
    on CPU time (user + system), which a loaded machine disturbs far less than wall
    time; both are shown."""
    cmds = {"python -c pass": [sys.executable, "-c", "pass"],
            "python -S -c pass": [sys.executable, "-S", "-c", "pass"],
            "runner --version": [*RUNNER, "--version"], "runner --help": [*RUNNER, "--help"]}
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for label, argv in cmds.items():
            start = time.perf_counter()
            cpu[label].append(run(argv, env))
            wall[label].append(time.perf_counter() - start)
    base = statistics.median(cpu["python -c pass"])  # runner starts with site
    lines = []
    for label in cmds:
        m = statistics.median(cpu[label])
        extra = (m - base) * 1000
        verdict = "" if label.startswith("python") else (
            f"+{extra:.1f} ms {'ok' if extra <= 20 else 'MISSED'} (<= +20 ms)")
        lines.append(f"| {label} | {statistics.median(wall[label]) * 1000:.1f} "
                     f"| {m * 1000:.1f} | {verdict} |")
    return lines


QUICK = "wide-1000,sparse-10x100,chain-200"
FULL = "wide-1000,sparse-10x100,dense-10x100,chain-200"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"workloads {QUICK}, sizes 100,1000 (no dense, no 10,000)")
    p.add_argument("--workloads", help=f"comma-separated (default {FULL}; wide-N, chain-N, "
                                       "dense-LxW, sparse-LxW, files-N)")
    p.add_argument("--runs", type=int, default=1, help="runs per runner figure (median)")
    p.add_argument("--nix-runs", type=int, default=1, help="runs per Nix full build (median)")
    p.add_argument("--noop-runs", type=int, default=7,
                   help="interleaved rounds of no-op rebuilds (runner, runner -S, Nix; median)")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("--sandbox", default="on", type=lambda s: s.split(","),
                   help="runner's sandbox settings to measure (default on; e.g. on,off)")
    p.add_argument("--scaling", default="wide,chain", type=lambda s: [k for k in s.split(",") if k],
                   help="workload kinds for the scaling table ('' for none)")
    p.add_argument("--sizes", type=lambda s: [int(n) for n in s.split(",")],
                   help="sizes for the scaling table (default 100,1000,10000; quick: 100,1000)")
    p.add_argument("--no-nix", action="store_true", help="skip Nix even when installed")
    args = p.parse_args()
    # Interrupted or terminated: still remove the build users and the work dir.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.workloads or (QUICK if args.quick else FULL)
    args.sizes = args.sizes or ([100, 1000] if args.quick else [100, 1000, 10_000])
    args.no_nix = args.no_nix or shutil.which("nix-build") is None
    started = time.monotonic()
    with (tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp,
          BuildUsers(not args.no_nix) as users):
        work = Path(tmp)
        GRAVEYARD.append(work / "removed")
        GRAVEYARD[0].mkdir()
        env = runner_env(work)
        run([*RUNNER, "--help"], env)  # compile the byte code once
        print(f"runner benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
              f"-j{args.jobs}, medians of {args.runs} (Nix full builds: {args.nix_runs}), "
              f"load average {os.getloadavg()[0]:.1f}")
        if users.why_not and not args.no_nix:
            print(f"(Nix with its sandbox is not measured: {users.why_not})")
        print("\n| workload | measure | runner s | compared with | s | ratio | target |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in names.split(","):
            for row in bench_workload(parse_workload(name), args, work, env, users):
                print(row.line(), flush=True)
        if args.scaling:
            print(f"\nScaling, sandbox on (load average {os.getloadavg()[0]:.1f}); target: "
                  "ms/node within 1.25x of the smallest N, peak RSS < 200 MB")
            print("\n| workload | full build s | ms/node | vs smallest | peak RSS build MB "
                  "| peak RSS instantiate MB |")
            print("| --- | --- | --- | --- | --- | --- |")
            scaling(args, work, env)
        print(f"\nStart-up, medians of 15 interleaved (load average {os.getloadavg()[0]:.1f})")
        print("\n| command | wall ms | CPU ms | CPU over the interpreter |\n"
              "| --- | --- | --- | --- |")
        for line in startup(env, 15):
            print(line)
    print(f"\n(bench took {time.monotonic() - started:.0f} s; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
