"""runner's own commands through a daemon (`--store unix://…`, `--store daemon`):
against `runner daemon` and against Nix 2.8's `nix-daemon` over a throwaway Nix
store, whose answers (`nix path-info`) are the oracle."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from runner.cli.main import run
from runner.daemon.client_build import failure_exit_code
from runner.daemon.remote_store import RemoteStore
from runner.daemon.store_choice import daemon_socket
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store.hashes import Hash
from tests.build_helpers import write_spec
from tests.daemon_harness import Daemon, NixDaemon, nix_env, run_nix
from tests.nix_oracle import needs_nix

SPEC = """\
derivations:
  lib:
    builder: /bin/sh
    args: ["-c", "echo building lib; mkdir $out; echo library > $out/data"]
    env: {PATH: /bin:/usr/bin}  # Nix's builds get no PATH
  app:
    builder: /bin/sh
    args: ["-c", "mkdir $out; echo ${{ lib }}/data > $out/uses"]
    env: {PATH: /bin:/usr/bin}
"""

FAILING = """\
derivations:
  broken:
    builder: /bin/sh
    args: ["-c", "echo about to fail; exit 3"]
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["nix-daemon", "runner-daemon"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path, store_dir: str) -> Iterator[str]:
    if request.param == "nix-daemon":
        with NixDaemon(tmp_path / "nixd", store_dir, builds=True) as path:
            yield path
    else:
        with Daemon(str(tmp_path / "ours" / "socket")) as d:
            yield d.socket
            assert d.stop() == 0


@needs_nix
def test_build_and_path_info_through_a_daemon(daemon: str, tmp_path: Path, store_dir: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SPEC)
    link = str(tmp_path / "result")
    uri = f"unix://{daemon}"
    code, out, err = _run(capsys, "build", "--store", uri, spec, "app", "--dry-run")
    assert code == 0 and out == "", err
    assert "these 2 derivations will be built:" in err and err.count(".drv") == 2
    code, out, err = _run(capsys, "build", "--store", uri, spec, "app", "-o", link)
    assert code == 0, err
    app = out.strip()
    assert os.readlink(link) == app and app.endswith("-app")
    code, out, _ = _run(capsys, "store", "path-info", "--store", uri, "--json", link)
    assert code == 0
    ours = json.loads(out)[0]
    env = nix_env(tmp_path / "nixclient", store_dir)
    theirs = json.loads(run_nix(env, "nix", "path-info", "--store", uri, "--json",
                                app).stdout)[0]
    for field in ("path", "narSize", "references", "deriver"):
        assert ours[field] == theirs[field], field
    assert Hash.parse(ours["narHash"], "sha256").sri() == theirs["narHash"]  # Nix prints SRI
    assert [os.path.basename(r)[33:] for r in theirs["references"]] == ["lib"]
    # The no-op build asks the daemon once (query-valid-paths) and builds nothing.
    code, out, err = _run(capsys, "build", "--store", uri, spec, "app", "--no-out-link")
    assert (code, out.strip()) == (0, app)
    assert "cached through the daemon" in err
    # The result link is a GC root on the daemon's side (add-indirect-root).
    nix_auto = Path(daemon).parent / "nix-state" / "gcroots" / "auto"
    if nix_auto.is_dir():  # Nix's find-roots fails here scanning /proc: read its roots
        assert [os.readlink(p) for p in nix_auto.iterdir()] == [link]
    else:
        with RemoteStore(daemon, store_dir) as store:
            assert store.find_roots().get(link) == app


@needs_nix
def test_a_failed_build_exits_100_with_the_log(daemon: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, FAILING)
    code, _, err = _run(capsys, "build", "--store", f"unix://{daemon}", spec, "--no-out-link")
    assert code == 100, err
    assert "about to fail" in err  # the build's log, streamed by the daemon


@needs_nix
def test_timeout_through_runner_daemon_exits_101(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, "derivations:\n  slow:\n    builder: /bin/sh\n"
                                "    args: [\"-c\", \"exec sleep 60\"]\n")
    with Daemon(str(tmp_path / "s"), "timeout", "1", "sandbox", "off") as d:
        code, _, err = _run(capsys, "build", "--store", f"unix://{d.socket}", spec,
                            "--no-out-link")
        assert d.stop() == 0
    assert code == 101, err


def test_failure_class_from_either_daemons_wording() -> None:
    assert failure_exit_code("build of '/s/x.drv' failed (timed-out): …") == 101
    assert failure_exit_code("build of '/s/x.drv' failed (hash-mismatch)") == 102
    assert failure_exit_code("build of '/s/a.drv' failed (timed-out)\n"
                             "build of '/s/b.drv' failed (failed)") == 101
    assert failure_exit_code("builder for '/s/x.drv' failed with exit code 3") == 100
    assert failure_exit_code("builder for '/s/x.drv' timed out after 1 seconds") == 101
    assert failure_exit_code("hash mismatch in fixed-output derivation '/s/x.drv'") == 102


@needs_nix
def test_store_commands_through_runner_daemon(tmp_path: Path, state_dir: str, store_dir: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`--store daemon`: the default socket. instantiate, log, why-depends and gc are
    answered by the daemon (its connection log shows them)."""
    spec = write_spec(tmp_path, SPEC)
    socket_path = os.path.join(state_dir, "daemon-socket", "socket")
    with Daemon(socket_path, "sandbox", "off") as d:
        code, out, err = _run(capsys, "instantiate", "--store", "daemon", spec, "app")
        assert code == 0, err
        drv = out.strip()
        d.wait_for("closed")
        code, out, err = _run(capsys, "build", "--store", "daemon", spec, "--no-out-link")
        assert code == 0, err
        lib, app = sorted(out.split(), key=lambda p: p.endswith("-app"))
        d.wait_for("closed")
        code, out, _ = _run(capsys, "why-depends", "--store", "daemon", app, lib)
        assert code == 0 and out.splitlines()[0] == app and lib in out
        code, out, _ = _run(capsys, "log", "--store", "daemon", lib)
        assert (code, out) == (0, "building lib\n")
        cache = tmp_path / "cache"
        code, _, err = _run(capsys, "copy", "--store", "daemon", "--to", f"file://{cache}",
                            app)
        assert code == 0, err
        narinfos = {line.split(": ", 1)[1] for f in cache.glob("*.narinfo")
                    for line in f.read_text().splitlines() if line.startswith("StorePath:")}
        assert narinfos == {app, lib}  # the closure, from the daemon's references
        code, out, _ = _run(capsys, "gc", "--store", "daemon", "--dry-run")
        assert code == 0 and app in out.split() and drv in out.split()
        code, out, _ = _run(capsys, "gc", "--store", "daemon", "--dry-run", "--json")
        report = json.loads(out)  # the local gc's report, schema included
        assert code == 0 and app in report["deleted"] and report["dryRun"] is True
        schema = resources.files("runner").joinpath("schemas/gc.schema.json").read_text()
        jsonschema.validate(report, json.loads(schema))
        code, out, _ = _run(capsys, "gc", "--store", "daemon")
        assert code == 0 and "deleted" in out
        d.wait_for("closed")
        assert not os.path.exists(app)
        assert d.stop() == 0
    assert sum("connection" in line and "user" in line for line in d.log) >= 7


def test_store_setting_values(tmp_path: Path, state_dir: str) -> None:
    def pick(value: str) -> str | None:
        return daemon_socket(Settings.load(options={"store": value}))

    default = os.path.join(state_dir, "daemon-socket", "socket")
    assert pick("local") is None
    assert pick("daemon") == default
    assert pick(f"unix://{tmp_path}/s") == f"{tmp_path}/s"
    assert pick("auto") is None  # the store is writable here
    with pytest.raises(RunnerError) as e:
        pick("ssh://host")
    assert e.value.reason == "bad-setting"


def test_unreachable_daemon_is_a_one_line_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SPEC)
    code, _, err = _run(capsys, "build", "--store", f"unix://{tmp_path}/none", spec)
    assert code != 0 and err.startswith("error: cannot connect to the daemon")
    assert len(err.strip().splitlines()) == 1


def test_store_is_not_an_abbreviation_of_store_dir(tmp_path: Path, store_dir: str,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A command without `--store` refuses it (argparse would take it for --store-dir)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    code, out, err = _run(capsys, "store", "add", "--store", "daemon", str(tmp_path / "f"))
    assert code != 0 and "unrecognized arguments: --store" in err and out == ""
    assert not (tmp_path / "daemon").exists()
