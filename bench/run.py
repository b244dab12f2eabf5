"""Benchmark runner against the fork floor and Nix, in one run, as ratios.

    python bench/run.py                 # default mode (one run per figure)
    python bench/run.py --runs 5 --workloads wide-1000,chain-200

Workloads: wide-N independent derivations; layered LxW dense (each node needs
every node of the layer before) and sparse (2 deps per node); chain-N; and a
10,000-file input tree for hashing. Every figure is a median of `--runs` runs
measured here and now, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER = [sys.executable, "-m", "runner"]
Graph = list[list[int]]  # node -> its dependencies


@dataclass(frozen=True)
class Workload:
    name: str
    graph: Graph
    files: int = 0  # > 0: a derivation over an input tree of this many files


def wide(n: int) -> Graph:
    return [[] for _ in range(n)]


def chain(n: int) -> Graph:
    return [[i - 1] if i else [] for i in range(n)]


def layered(layers: int, width: int, dense: bool) -> Graph:
    graph: Graph = []
    for layer in range(layers):
        for col in range(width):
            if layer == 0:
                graph.append([])
                continue
            prev = (layer - 1) * width
            deps = (
                list(range(prev, prev + width))
                if dense
                else sorted({prev + col, prev + (col + 1) % width})
            )
            graph.append(deps)
    return graph


def parse_workload(name: str) -> Workload:
    kind, _, size = name.partition("-")
    if kind == "wide":
        return Workload(name, wide(int(size)))
    if kind == "chain":
        return Workload(name, chain(int(size)))
    if kind in ("dense", "sparse"):
        layers, width = (int(x) for x in size.split("x"))
        return Workload(name, layered(layers, width, kind == "dense"))
    if kind == "files":
        return Workload(name, wide(1), files=int(size))
    raise SystemExit(f"error: unknown workload '{name}'")


def _script(i: int, deps: list[int], files: bool) -> str:
    refs = " ".join(f"${{{{ d{d} }}}}" for d in deps)
    if files:
        return "ls ${{ src }} | wc -l > $out"
    return f"echo {i} {refs} > $out" if refs else f"echo {i} > $out"


def write_spec(w: Workload, root: Path) -> Path:
    lines = ["version: 1"]
    if w.files:
        tree = root / "tree"
        tree.mkdir()
        for i in range(w.files):
            sub = tree / f"d{i % 100}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.txt").write_text(f"file {i}\n")
        lines += ["inputs:", "  src: ./tree"]
    lines.append("derivations:")
    for i, deps in enumerate(w.graph):
        lines += [
            f"  d{i}:",
            "    builder: /bin/sh",
            f"    args: [\"-c\", \"{_script(i, deps, bool(w.files))}\"]",
        ]
    spec = root / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def write_nix(w: Workload, root: Path) -> Path:
    out = ["rec {"]
    for i, deps in enumerate(w.graph):
        refs = " ".join(f"${{d{d}}}" for d in deps)
        cmd = f"echo {i} {refs} > $out" if refs else f"echo {i} > $out"
        if w.files:
            cmd = f"ls ${{{root / 'tree'}}} | wc -l > $out"
        path = ' PATH = "/usr/bin:/bin";' if w.files else ""  # runner's default; Nix has none
        out.append(
            f'  d{i} = derivation {{ name = "d{i}"; builder = "/bin/sh"; '
            f'args = ["-c" "{cmd}"]; system = builtins.currentSystem;{path} }};'
        )
    out.append("}")
    path = root / "default.nix"
    path.write_text("\n".join(out) + "\n")
    return path


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


PEAK_RSS_KB = [0]  # the largest peak RSS of any command run since it was reset


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        PEAK_RSS_KB[0] = max(PEAK_RSS_KB[0], usage.ru_maxrss)
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
            raise SystemExit(f"error: benchmark command failed: {' '.join(argv[:6])} …")


def runner_env(work: Path) -> dict[str, str]:
    """As installed: byte-code cached (pip compiles it), here in the work dir so the
    tree stays clean; PYTHONDONTWRITEBYTECODE would recompile every module every run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


class Runner:
    def __init__(self, root: Path, jobs: int, env: dict[str, str]) -> None:
        self.root, self.jobs, self.env = root, jobs, env

    def fresh(self) -> list[str]:
        if self.root.exists():
            shutil.rmtree(self.root, onerror=_force_remove)
        return ["--store-dir", str(self.root / "store"), "--state-dir", str(self.root / "state")]

    def same(self) -> list[str]:
        return ["--store-dir", str(self.root / "store"), "--state-dir", str(self.root / "state")]

    def build(self, spec: Path, dirs: list[str], sandbox: str) -> None:
        run([*RUNNER, "build", str(spec), "--no-out-link", "-j", str(self.jobs),
             f"--sandbox={sandbox}", *dirs], self.env)

    def instantiate(self, spec: Path, dirs: list[str]) -> None:
        run([*RUNNER, "instantiate", str(spec), *dirs], self.env)

    def validate(self, spec: Path) -> None:
        run([*RUNNER, "validate", str(spec)], self.env)


class Nix:
    def __init__(self, root: Path, jobs: int) -> None:
        self.root, self.jobs = root, jobs

    def env(self) -> dict[str, str]:
        conf = self.root / "etc"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "nix.conf").write_text("sandbox = false\nbuild-users-group =\nsubstituters =\n")
        return {**os.environ, "NIX_STORE_DIR": str(self.root / "store"),
                "NIX_STATE_DIR": str(self.root / "var"), "NIX_LOG_DIR": str(self.root / "log"),
                "NIX_CONF_DIR": str(conf), "HOME": str(self.root)}

    def fresh(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root, onerror=_force_remove)

    def build(self, expr: Path) -> None:
        run(["nix-build", str(expr), "--no-out-link", "-j", str(self.jobs), "--quiet"], self.env())

    def instantiate(self, expr: Path) -> None:
        run(["nix-instantiate", str(expr)], self.env())


def _force_remove(func: Callable[[str], object], path: str, _exc: object) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o755)
    func(path)


def floor_binary(work: Path) -> Path | None:
    cc = shutil.which("cc")
    if cc is None:
        return None
    exe = work / "floor"
    run([cc, "-O2", "-o", str(exe), str(HERE / "floor.c")])
    return exe


def median(runs: int, setup: Callable[[], None], fn: Callable[[], None]) -> float:
    samples = []
    for _ in range(runs):
        setup()
        samples.append(timed(fn))
    return statistics.median(samples)


def nothing() -> None:
    pass


def bench(w: Workload, args: argparse.Namespace, work: Path, floor: Path | None) -> list[str]:
    root = work / w.name
    root.mkdir()
    spec = write_spec(w, root)
    r = Runner(root / "runner", args.jobs, runner_env(work))
    rows: list[tuple[str, float, float | None, float | None]] = []

    def row(label: str, ours: float, floor_t: float | None, nix_t: float | None) -> None:
        rows.append((label, ours, floor_t, nix_t))

    have_nix = shutil.which("nix-build") is not None and not args.no_nix
    nix = Nix(root / "nix", args.jobs)
    expr = write_nix(w, root) if have_nix else None

    floor_t = None
    if floor is not None and not w.files:
        out = root / "floor-out"
        graph = "\n".join(f"{i} {' '.join(map(str, d))}" for i, d in enumerate(w.graph)) + "\n"

        def floor_setup() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def floor_run() -> None:
            subprocess.run([str(floor), str(args.jobs), str(out)], input=graph.encode(),
                           check=True)

        floor_t = median(args.runs, floor_setup, floor_run)

    nix_full = nix_noop = nix_inst = None
    if expr is not None:
        nix_full = median(args.nix_runs, nix.fresh, lambda: nix.build(expr))
        nix_noop = median(args.nix_runs, nothing, lambda: nix.build(expr))
        nix_inst = median(args.nix_runs, nix.fresh, lambda: nix.instantiate(expr))

    PEAK_RSS_KB[0] = 0
    for sandbox in args.sandbox:
        if sandbox == "on" and w.name not in args.sandbox_workloads:
            continue  # a 100-input sandbox per node takes minutes: only on request
        full = median(args.runs, nothing, lambda sb=sandbox: r.build(spec, r.fresh(), sb))
        noop = median(args.runs, nothing, lambda sb=sandbox: r.build(spec, r.same(), sb))
        row(f"full build (sandbox {sandbox})", full, floor_t, nix_full)
        row(f"no-op rebuild (sandbox {sandbox})", noop, None, nix_noop)
    inst = median(args.runs, nothing, lambda: r.instantiate(spec, r.fresh()))
    row("instantiate (fresh store)", inst, None, nix_inst)
    if w.files:
        again = median(args.runs, nothing, lambda: r.instantiate(spec, r.same()))
        row("instantiate again (nothing changed)", again, None, None)
    row("validate", median(args.runs, nothing, lambda: r.validate(spec)), None, None)
    rss_mb = PEAK_RSS_KB[0] / 1024

    n = len(w.graph)
    lines = []
    for label, ours, fl, nx in rows:
        ratio_f = f"{ours / fl:.2f}x" if fl else ""
        ratio_n = f"{ours / nx:.2f}x" if nx else ""
        fl_s = f"{fl:.3f}" if fl else ""
        nx_s = f"{nx:.3f}" if nx else ""
        per = f"{ours / n * 1000:.2f}" if not w.files else ""
        lines.append(f"| {w.name} | {label} | {ours:.3f} | {per} | {fl_s} | {ratio_f} "
                     f"| {nx_s} | {ratio_n} |")
    lines.append(f"| {w.name} | peak RSS of any runner command (MB) | {rss_mb:.0f} | | | | | |")
    return lines


DEFAULT = "wide-1000,sparse-10x100,dense-10x100,chain-200,files-10000"
SANDBOX_DEFAULT = "wide-1000,sparse-10x100,chain-200"  # the default mode stays under 5 minutes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=DEFAULT, help=f"comma-separated (default {DEFAULT})")
    p.add_argument("--runs", type=int, default=1,
                   help="runs per figure (median; 1 keeps the default mode near 5 minutes)")
    p.add_argument("--nix-runs", type=int, default=1, help="runs per Nix figure (median)")
    p.add_argument("-j", "--jobs", type=int, default=2)
    p.add_argument("--sandbox", default="off,on", type=lambda s: s.split(","))
    p.add_argument("--sandbox-workloads", default=SANDBOX_DEFAULT,
                   type=lambda s: set(s.split(",")),
                   help=f"workloads also measured with the sandbox on (default {SANDBOX_DEFAULT}; "
                        "'all' for every one)")
    p.add_argument("--no-nix", action="store_true", help="skip Nix even when installed")
    args = p.parse_args()
    if "all" in args.sandbox_workloads:
        args.sandbox_workloads = set(args.workloads.split(","))
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        work = Path(tmp)
        floor = floor_binary(work)
        run([*RUNNER, "--help"], runner_env(work))  # compile the byte code once
        print(f"runner benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"-j{args.jobs}, medians of {args.runs} (Nix: {args.nix_runs})")
        print("\n| workload | measure | runner s | ms/node | floor s | runner/floor "
              "| nix s | runner/nix |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.workloads.split(","):
            for line in bench(parse_workload(name), args, work, floor):
                print(line, flush=True)


if __name__ == "__main__":
    main()
