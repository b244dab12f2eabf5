"""Per-build cost of the sandbox, measured twice in the same run.

    python bench/sandbox_overhead.py [-n RUNS] [--derivations N] [--jobs J]
        [--closure 1,1000] [--chain 200] [--copy-mb M]

0. closure: one `/bin/sh -c 'echo i > $out'` spawned plainly and through
   `runner.sandbox.spawn` with 1 and 1,000 input paths, the store view made
   both ways (overlay over tmpfs stubs, and stubs on disk: the fallback),
   interleaved; prints the overhead and how it grows with the closure.

1. spawn: `/bin/true` started plainly and through `runner.sandbox.spawn`,
   with the fork server and without it (runner forks itself), interleaved.
   Each sandboxed run includes everything a build pays in the sandbox:
   preparing the staging dir, the two forks, five or six namespaces, the
   mounts, pivot_root, and collecting outputs. `--ballast MB` grows this
   process first, as big as a runner worker (~60 MB), since forking it costs
   more the bigger it is.
2. runner build: N independent trivial derivations (`echo i > $out`), built
   by `runner build --sandbox=off` and `--sandbox=on`, each in a fresh store,
   rounds interleaved (median of three). The difference divided by N is what a user pays per
   derivation, with registration, logs and scheduling around it.
3. `--chain N` (0: skip): a chain of N trivial derivations (each refers to
   the one before, so node i has i inputs), `runner build --sandbox=on -j1`
   against Nix 2.8 with its sandbox on (`nix-build --option sandbox true
   --option sandbox-paths '/bin /usr /lib /lib64'`, build users when root),
   fresh stores, rounds interleaved, median of three; prints the ratio.
4. `--copy-mb M` (0: skip): collecting one M MB output by copying it into
   fresh inodes (what the supervisor does since docs/security.md class 1)
   against the rename it replaced, in `--copy-dir` (default: the temp dir;
   point it at the store's filesystem).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sandbox import make_plan, native, probe, spawn
from runner.sandbox.plan import default_ids
from runner.sandbox.served import ServedProcess
from runner.settings import Settings
from runner.store import trash


def per_run(runs: int, start: Callable[[], subprocess.Popen[bytes] | ServedProcess]) -> float:
    start().wait()  # warm up
    began = time.perf_counter()
    for _ in range(runs):
        proc = start()
        if proc.wait() != 0:
            raise SystemExit(f"/bin/true exited with {proc.returncode}")
    return (time.perf_counter() - began) / runs * 1000


def build_seconds(spec: str, sandbox: str, jobs: int, spawn_way: str = "") -> float:
    """Wall time of one `runner build` of every derivation in `spec`, in a fresh store.
    `spawn_way` "python": sandboxed builds start through the Python fork server."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, native.SPAWN_ENV: spawn_way,
               "RUNNER_STORE_DIR": f"{tmp}/store",
               "RUNNER_STATE_DIR": f"{tmp}/state", "XDG_CONFIG_HOME": f"{tmp}/config"}
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner", "build", "--no-out-link",
                        f"--sandbox={sandbox}", f"--max-jobs={jobs}", spec], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=Path(__file__).parents[1])
        return time.perf_counter() - began


def through_runner(count: int, jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "spec.yaml")
        with open(spec, "w") as f:
            f.write("version: 1\ndefaults: {builder: /bin/sh}\nderivations:\n")
            for i in range(count):
                f.write(f'  d{i}: {{args: ["-c", "echo {i} > $out"]}}\n')
        times: dict[str, list[float]] = {"off": [], "on": [], "on, python spawn": []}
        for _ in range(3):
            times["off"].append(build_seconds(spec, "off", jobs))
            times["on"].append(build_seconds(spec, "on", jobs))
            times["on, python spawn"].append(build_seconds(spec, "on", jobs, "python"))
    off = statistics.median(times["off"])
    print(f"runner build, {count} derivations, --max-jobs={jobs} (median of 3):")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"  --sandbox={name + ':':20} {median:6.2f} s ({median / count * 1000:6.2f} ms "
              f"per derivation, overhead {(median - off) / count * 1000:6.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=200)
    parser.add_argument("--derivations", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--ballast", type=int, default=60, help="MB to grow this process by")
    parser.add_argument("--closure", default="1,1000",
                        help="closure sizes to compare ('' to skip)")
    parser.add_argument("--chain", type=int, default=200, help="chain length (0: skip)")
    parser.add_argument("--copy-mb", type=int, default=256)
    parser.add_argument("--copy-dir", default=None)
    args = parser.parse_args()
    print(f"load average: {_load()}")
    if args.copy_mb:
        copy_cost(args.copy_mb, args.copy_dir)
    ballast = [str(i) * 8 for i in range(args.ballast * 7_000)]  # ~1 MB per 7,000
    why = probe()
    if why is not None:
        raise SystemExit(f"sandbox unavailable: {why}")
    if args.closure:
        closure_cost([int(n) for n in args.closure.split(",")], max(args.runs // 5, 5))
    if args.runs:
        spawn_only(args.runs)
    del ballast
    if args.derivations:
        through_runner(args.derivations, args.jobs)
    if args.chain:
        chain_against_nix(args.chain)
    print(f"load average: {_load()}")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def closure_cost(sizes: list[int], runs: int) -> None:
    """Sandboxed minus plain spawn of a trivial builder, per closure size and store view."""
    from runner.sandbox.storeview import STORE_VIEW_ENV

    # "kept dir": stubs on disk in a staging dir kept between builds (runner/sandbox/slots.py;
    # the C spawn); each way and size has a store of its own, so kept dirs never flip
    # between closures (round 0, untimed, makes them).
    ways = {"overlay": "overlay", "kept dir": "stubs"}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STORE_PARENT")) as tmp:
        build = os.path.join(tmp, "build")
        os.mkdir(build)
        out_name = "0123456789abcdfghijklmnpqrsvwxyz-out"
        env = {"PATH": "/usr/bin:/bin", "out": ""}
        argv = ["/bin/sh", "-c", "echo i > $out"]
        plans = {}
        for way in ways:
            for n in sizes:
                store = os.path.join(tmp, f"store-{ways[way]}-{n}")
                os.mkdir(store)
                closure = []
                for i in range(n):
                    path = f"{store}/{i:032d}-in{i}"
                    if i % 2:
                        with open(path, "w") as f:
                            f.write("x")
                    else:
                        os.mkdir(path)
                    closure.append(path)
                out = f"{store}/{out_name}"
                plans[way, n] = make_plan(
                    argv=argv, env={**env, "out": out}, build_dir=build, store_dir=store,
                    closure=closure, outputs=[out], fixed_output=False,
                    settings=Settings.load(environ={}), ids=default_ids())
        dev = subprocess.DEVNULL
        plain_out = os.path.join(tmp, out_name)
        env["out"] = plain_out

        def once(start: Callable[[], subprocess.Popen[bytes] | ServedProcess],
                 out: str) -> float:
            began = time.perf_counter()
            if start().wait() != 0:
                raise SystemExit("the trivial builder failed")
            elapsed = time.perf_counter() - began
            os.unlink(out)
            trash.drain()  # untimed: the staging dir's removal would slow the next round
            return elapsed * 1000

        def plain() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, env=env, stdin=dev, stdout=dev, stderr=dev,
                                    start_new_session=True)

        times: dict[str, list[float]] = {}
        for rnd in range(runs + 1):  # round 0 warms up (fork server, caches)
            for n in sizes:
                for way, flag in ways.items():
                    os.environ[STORE_VIEW_ENV] = flag
                    plan = plans[way, n]
                    t = once(functools.partial(spawn, plan, stdout=dev, stderr=dev),
                             plan.outputs[0])
                    if rnd:
                        times.setdefault(f"{way}, closure {n}", []).append(t)
                t = once(plain, plain_out)
                if rnd:
                    times.setdefault("plain", []).append(t)
        os.environ.pop(STORE_VIEW_ENV, None)
    base = statistics.median(times["plain"])
    print(f"spawn of `echo i > $out`, median of {runs} interleaved rounds "
          f"(plain: {base:.2f} ms):")
    for way in ways:
        small = statistics.median(times[f"{way}, closure {sizes[0]}"]) - base
        for n in sizes:
            over = statistics.median(times[f"{way}, closure {n}"]) - base
            print(f"  {way + ',':14} closure {n:5}: overhead {over:7.2f} ms"
                  + (f" (+{over - small:.2f} ms over closure {sizes[0]})" if n != sizes[0]
                     else ""))


def _chain_spec(n: int, root: str) -> tuple[str, str]:
    spec = os.path.join(root, "spec.yaml")
    with open(spec, "w") as f:
        f.write("version: 1\nderivations:\n")
        for i in range(n):
            ref = f" ${{{{ d{i - 1} }}}}" if i else ""
            f.write(f'  d{i}:\n    builder: /bin/sh\n    args: ["-c", "echo {i}{ref} > $out"]\n')
    nix = os.path.join(root, "default.nix")
    with open(nix, "w") as f:
        f.write("rec {\n")
        for i in range(n):
            ref = f" ${{d{i - 1}}}" if i else ""
            f.write(f'  d{i} = derivation {{ name = "d{i}"; builder = "/bin/sh"; '
                    f'args = ["-c" "echo {i}{ref} > $out"]; system = builtins.currentSystem; }};\n')
        f.write("}\n")
    return spec, nix


def _nix_seconds(expr: str, attr: str) -> float:
    """One sandboxed `nix-build` in a fresh store (build users when root)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STORE_PARENT")) as tmp:
        os.mkdir(f"{tmp}/etc")
        users = "nixbld" if os.geteuid() == 0 else ""
        with open(f"{tmp}/etc/nix.conf", "w") as f:
            f.write(f"build-users-group = {users}\nsubstituters =\n")
        env = {**os.environ, "NIX_STORE_DIR": f"{tmp}/store", "NIX_STATE_DIR": f"{tmp}/var",
               "NIX_LOG_DIR": f"{tmp}/log", "NIX_CONF_DIR": f"{tmp}/etc", "HOME": tmp}
        began = time.perf_counter()
        subprocess.run(["nix-build", expr, "-A", attr, "--no-out-link", "-j1", "--quiet",
                        "--option", "sandbox", "true", "--option", "sandbox-paths",
                        "/bin /usr /lib /lib64", "--option", "substituters", ""],
                       env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - began
        subprocess.run(["chmod", "-R", "u+w", tmp], check=False)
        return elapsed


def chain_against_nix(n: int) -> None:
    if shutil.which("nix-build") is None:
        print("chain: no nix-build on PATH, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        spec, nix = _chain_spec(n, tmp)
        ours: list[float] = []
        theirs: list[float] = []
        off: list[float] = []
        for _ in range(3):
            ours.append(build_seconds(spec, "on", 1))
            theirs.append(_nix_seconds(nix, f"d{n - 1}"))
            off.append(build_seconds(spec, "off", 1))
    r, x, o = (statistics.median(v) for v in (ours, theirs, off))
    print(f"chain-{n}, -j1, fresh stores, median of 3 interleaved: runner --sandbox=on "
          f"{r:.2f} s ({r / n * 1000:.1f} ms/node), --sandbox=off {o:.2f} s, "
          f"Nix 2.8 sandbox on {x:.2f} s ({x / n * 1000:.1f} ms/node): "
          f"runner / Nix-sandbox = {r / x:.2f}x")


def spawn_only(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, build = os.path.join(tmp, "store"), os.path.join(tmp, "build")
        os.mkdir(store)
        os.mkdir(build)
        out = f"{store}/0123456789abcdfghijklmnpqrsvwxyz-out"
        plan = make_plan(argv=["/bin/true"], env={"PATH": "/usr/bin:/bin", "out": out},
                         build_dir=build, store_dir=store, closure=[], outputs=[out],
                         fixed_output=False, settings=Settings.load(environ={}), ids=default_ids())
        dev = subprocess.DEVNULL
        plain = per_run(runs, lambda: subprocess.Popen(
            list(plan.argv), env=dict(plan.env), stdin=dev, stdout=dev, stderr=dev,
            start_new_session=True))
        served: list[float] = []
        forked: list[float] = []
        cloned: list[float] = []
        for _ in range(5):  # interleaved: the machine's load moves
            if native.module() is not None:
                cloned.append(per_run(runs // 5 or 1, lambda: spawn(
                    plan, stdout=dev, stderr=dev)))
            served.append(per_run(runs // 5 or 1, lambda: spawn(
                plan, stdout=dev, stderr=dev, fork_server=True)))
            forked.append(per_run(runs // 5 or 1, lambda: spawn(
                plan, stdout=dev, stderr=dev, fork_server=False)))
    rss = _rss_mb()
    who = "root" if os.geteuid() == 0 else "unprivileged (user namespace)"
    print(f"spawn /bin/true, {runs} runs each, as {who}, this process {rss:.0f} MB:")
    print(f"  plain:                 {plain:7.2f} ms per build")
    ways = (("sandboxed, C clone", cloned), ("sandboxed, fork server", served),
            ("sandboxed, forked", forked))
    for name, times in ways:
        if not times:
            print(f"  {name + ':':23} not built (no C compiler at install)")
            continue
        boxed = statistics.median(times)
        print(f"  {name + ':':23}{boxed:7.2f} ms per build, overhead {boxed - plain:6.2f} ms, "
              f"ratio {boxed / plain:.1f}x")


def copy_cost(mb: int, where: str | None) -> None:
    from runner.sandbox.staging import copy_tree

    with tempfile.TemporaryDirectory(dir=where) as tmp:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with open(os.path.join(tmp, "big"), "wb") as f:
                chunk = os.urandom(1 << 20)
                for _ in range(mb):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            copies, renames = [], []
            for i in range(3):
                began = time.perf_counter()
                copy_tree(fd, "big", fd, f"copy{i}", None)
                copies.append(time.perf_counter() - began)
                began = time.perf_counter()
                os.rename(f"{tmp}/copy{i}", f"{tmp}/moved{i}")
                renames.append(time.perf_counter() - began)
                os.unlink(f"{tmp}/moved{i}")
        finally:
            os.close(fd)
    print(f"collecting a {mb} MB output in {where or tempfile.gettempdir()} (median of 3): "
          f"copy {statistics.median(copies) * 1000:.0f} ms, "
          f"rename {statistics.median(renames) * 1000:.2f} ms")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    main()
