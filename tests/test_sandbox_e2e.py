"""`runner build --sandbox=…` end to end: real specs, real `runner` processes, real namespaces.

docs/sandbox.md is the contract. The store must hold no `.sandbox-*` staging
dir and no build process may survive, however a build ends.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.sandbox import probe
from tests.daemon_harness import interpreter_runnable_by, readable_site_packages

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
pytestmark = pytest.mark.skipif(sys.platform != "linux" or probe() is not None,
                                reason=f"no sandbox here: {probe()}")


def runner(*argv: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "runner", "build", "--no-out-link",
                           *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def spec(where: Path, body: str) -> str:
    path = where / "spec.yaml"
    path.write_text("version: 1\n" + body)
    return str(path)


def leftovers(store: Path) -> list[str]:
    return [n for n in os.listdir(store) if n.startswith(".sandbox-")]


def outputs(store: Path, name: str) -> list[Path]:
    return [p for p in store.iterdir() if p.name.endswith(f"-{name}")]


TOOLS = """inputs:
  src: ./input.txt
derivations:
  dep:
    builder: /bin/sh
    args: ["-c", "mkdir $out; echo from-dep > $out/file"]
  main:
    builder: /bin/sh
    args:
      - -c
      - >-
        mkdir $out;
        cat ${{ src }} ${{ dep }}/file > $out/both;
        python3 -c 'import sys; print(sys.version_info[0])' > $out/python;
        sort ${{ src }} | head -n 1 | tr a-z A-Z > $out/coreutils;
        echo $PWD $HOME > $out/where
"""


def _check_tools(store: Path, owner: int) -> None:
    [out] = outputs(store, "main")
    assert (out / "both").read_text() == "b\na\nfrom-dep\n"
    assert (out / "python").read_text() == "3\n"
    assert (out / "coreutils").read_text() == "A\n"
    assert (out / "where").read_text() == "/build /homeless-shelter\n"
    for path in (out, *out.iterdir()):
        assert path.lstat().st_uid == owner
    assert leftovers(store) == []


def test_builder_runs_tools_reads_inputs_and_dependencies(tmp_path: Path, store_dir: str
                                                          ) -> None:
    (tmp_path / "input.txt").write_text("b\na\n")
    done = runner("--sandbox=on", spec(tmp_path, TOOLS), "main")
    assert done.returncode == 0, done.stderr
    _check_tools(Path(store_dir), os.getuid())


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running as uid 65534 needs root and setpriv")
    why = interpreter_runnable_by(pwd.getpwuid(NOBODY).pw_name)
    if why is not None:
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="runner-sandbox-e2e-"))  # tmp_path is root-only
    os.chmod(work, 0o755)
    readable_site_packages(work / "site")  # the packages runner needs (ours: under /root)
    os.chown(work, NOBODY, NOBODY)
    yield work
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_as_an_unprivileged_user(nobody_dir: Path) -> None:
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{nobody_dir / 'site'}",
           "HOME": str(nobody_dir),
           "RUNNER_STORE_DIR": str(nobody_dir / "store"),
           "RUNNER_STATE_DIR": str(nobody_dir / "state"),
           "XDG_CONFIG_HOME": str(nobody_dir / "config")}
    src = nobody_dir / "input.txt"
    src.write_text("b\na\n")
    secret = nobody_dir / "secret.txt"
    secret.write_text("private")
    body = TOOLS + f"""  peek:
    builder: /bin/sh
    args: ["-c", "cat {secret} > $out"]
"""
    path = spec(nobody_dir, body)
    for p in (src, secret, nobody_dir / "spec.yaml"):
        os.chown(p, NOBODY, NOBODY)
    done = runner("--sandbox=on", path, "main", prefix=as_nobody, env=env)
    assert done.returncode == 0, done.stderr
    _check_tools(nobody_dir / "store", NOBODY)
    peek = runner("--sandbox=on", path, "peek", prefix=as_nobody, env=env)
    assert peek.returncode != 0
    assert f"cat: {secret}: No such file or directory" in peek.stderr
    assert leftovers(nobody_dir / "store") == []


def test_undeclared_files_fail_only_in_the_sandbox(tmp_path: Path, store_dir: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    home = Path(os.environ["HOME"], ".netrc")
    home.write_text("machine example.org")
    path = spec(tmp_path, f"""derivations:
  peek:
    builder: /bin/sh
    args: ["-c", "cat {secret} > $out"]
  home:
    builder: /bin/sh
    args: ["-c", "cat {home} > $out"]
""")
    for name, target in (("peek", secret), ("home", home)):
        sandboxed = runner("--sandbox=on", path, name)
        assert sandboxed.returncode == 100
        assert f"> cat: {target}: No such file or directory" in sandboxed.stderr
        assert leftovers(Path(store_dir)) == [] and outputs(Path(store_dir), name) == []
        plain = runner("--sandbox=off", "--rebuild-failed", path, name)
        assert plain.returncode == 0, plain.stderr
        [out] = outputs(Path(store_dir), name)
        assert out.read_text() == target.read_text()


@pytest.fixture
def http_url(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_text("fetched\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file.txt"
        httpd.shutdown()


def test_only_fixed_output_builds_reach_the_network(tmp_path: Path, store_dir: str,
                                                    http_url: str) -> None:
    good = hashlib.sha256(b"fetched\n").hexdigest()
    fetch = ('["-c", "import os, urllib.request as u; '
             f"open(os.environ['out'], 'wb').write(u.urlopen('{http_url}').read())\"]")
    path = spec(tmp_path, f"""defaults:
  builder: /usr/bin/python3
  args: {fetch}
derivations:
  fetched:
    output-hash: sha256:{good}
  wrong:
    output-hash: sha256:{hashlib.sha256(b"other").hexdigest()}
  impure: {{}}
""")
    done = runner("--sandbox=on", path, "fetched")
    assert done.returncode == 0, done.stderr
    [out] = outputs(Path(store_dir), "fetched")
    assert out.read_text() == "fetched\n"
    wrong = runner("--sandbox=on", path, "wrong")
    assert wrong.returncode == 102 and "hash mismatch" in wrong.stderr
    impure = runner("--sandbox=on", path, "impure")
    assert impure.returncode == 100
    assert "Connection refused" in impure.stderr or "URLError" in impure.stderr
    assert leftovers(Path(store_dir)) == []


def test_relaxed_runs_no_chroot_derivations_outside(tmp_path: Path, store_dir: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    path = spec(tmp_path, f"""derivations:
  outside:
    builder: /bin/sh
    no-chroot: true
    args: ["-c", "cat {secret} > $out; echo $PWD >> $out"]
  inside:
    builder: /bin/sh
    args: ["-c", "echo $PWD > $out"]
""")
    refused = runner("--sandbox=on", path, "outside")
    assert refused.returncode == 1, refused.stderr  # set-up failure: misc, as in Nix
    assert "'sandbox = relaxed'" in refused.stderr
    # Not cached as a failure: relaxed builds it without --rebuild-failed.
    done = runner("--sandbox=relaxed", path, "outside", "inside")
    assert done.returncode == 0, done.stderr
    [outside] = outputs(Path(store_dir), "outside")
    assert outside.read_text().startswith("private")
    assert "/build" not in outside.read_text()
    [inside] = outputs(Path(store_dir), "inside")
    assert inside.read_text() == "/build\n"


def test_spec_sandbox_paths_need_the_setting(tmp_path: Path, store_dir: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tool.txt").write_text("tool")
    path = spec(tmp_path, f"""derivations:
  uses:
    builder: /bin/sh
    sandbox-paths: ["/opt/shared={shared}"]
    args: ["-c", "cat /opt/shared/tool.txt > $out"]
""")
    refused = runner("--sandbox=on", path)
    assert refused.returncode == 1, refused.stderr  # set-up failure: misc, as in Nix
    assert "allowed-spec-sandbox-paths" in refused.stderr and str(shared) in refused.stderr
    done = runner("--sandbox=on", "--option", "allowed-spec-sandbox-paths", str(tmp_path), path)
    assert done.returncode == 0, done.stderr
    assert outputs(Path(store_dir), "uses")[0].read_text() == "tool"


def test_fallback_when_namespaces_are_unavailable(tmp_path: Path, store_dir: str) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("dropping every capability of root needs root and setpriv")
    no_caps = ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--")
    path = spec(tmp_path, """derivations:
  a:
    builder: /bin/sh
    args: ["-c", "echo a > $out"]
  b:
    builder: /bin/sh
    args: ["-c", "cat ${{ a }} > $out"]
""")
    refused = runner("--sandbox=on", "--option", "sandbox-fallback", "false", path, "b",
                     prefix=no_caps)
    assert refused.returncode == 1, refused.stderr  # set-up failure: misc, as in Nix
    assert "the build sandbox is unavailable: " in refused.stderr
    assert "sandbox-fallback" in refused.stderr
    # Not cached: the fallback builds both, warning once.
    done = runner("--sandbox=on", path, "b", prefix=no_caps)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: building without a sandbox: ") == 1
    assert outputs(Path(store_dir), "b")[0].read_text() == "a\n"


def processes_with(marker: str) -> list[int]:
    """Host processes that have `marker` in their environment (children inherit it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path("/proc", entry, "environ").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_nothing_is_left_after_timeout_or_interrupt(tmp_path: Path, store_dir: str) -> None:
    marker = f"sandbox-e2e-{os.getpid()}-{time.monotonic_ns()}"
    path = spec(tmp_path, f"""derivations:
  slow:
    builder: /bin/sh
    env: {{MARKER: {marker}}}
    args: ["-c", "mkdir $out; echo x > $out/partial; sleep 30 & sleep 31"]
""")
    store = Path(store_dir)
    timed = runner("--sandbox=on", "--timeout", "1", path)
    assert timed.returncode == 101 and "timed out after 1 seconds" in timed.stderr
    assert leftovers(store) == [] and outputs(store, "slow") == []
    _wait_for(lambda: not processes_with(marker))

    proc = subprocess.Popen([sys.executable, "-m", "runner", "build", "--no-out-link",
                             "--sandbox=on", path], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: bool(leftovers(store)) and bool(processes_with(marker)))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err
    assert leftovers(store) == [] and outputs(store, "slow") == []
    _wait_for(lambda: not processes_with(marker))
