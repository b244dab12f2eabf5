"""Build logs travel between runner and Nix 2.8 through a binary cache, both ways:
`log/<drv basename>`, plain text (Nix 2.8 prints a compressed file as it is)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runner.cli.main import run
from tests.build_helpers import build, write_spec
from tests.nix_oracle import NixOracle

pytestmark = pytest.mark.nix


def _nix(oracle: NixOracle, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """A Nix command as given: oracle.run would append `--option substituters ''`."""
    return subprocess.run(argv, env=oracle.env(), capture_output=True, check=False)


def test_nix_log_prints_a_log_runner_uploaded(oracle: NixOracle, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNNER_STORE_DIR", oracle.store_dir)
    spec = write_spec(tmp_path, """derivations:
  good: {builder: /bin/sh, args: [-c, 'echo good-log-line; echo ok > $out']}
  bad: {builder: /bin/sh, args: [-c, 'echo "error: it broke"; exit 3']}
""")
    drvs = _drv_paths(spec, capsys)
    cache = tmp_path / "cache"
    assert run(["copy", "--to", f"file://{cache}", drvs["good"], drvs["bad"]]) == 0
    capsys.readouterr()
    os.rename(oracle.store_dir, tmp_path / "runner-store")
    store = (f"local?store={oracle.store_dir}&state={tmp_path / 'nix-var'}"
             f"&log={tmp_path / 'nix-log'}")
    for name, expected in (("good", b"good-log-line\n"), ("bad", b"error: it broke\n")):
        # `nix log` wants the .drv valid in its store: fetched from the same cache (a .drv
        # is content-addressed, so no signature is needed).
        copied = _nix(oracle, "nix", "copy", "--derivation", "--store", store,
                      "--from", f"file://{cache}", drvs[name])
        assert copied.returncode == 0, copied.stderr.decode()
        shown = _nix(oracle, "nix", "log", "--store", store, "--substituters",
                     f"file://{cache}", drvs[name])
        assert shown.returncode == 0, shown.stderr.decode()
        assert shown.stdout == expected
    # The control: without the cache, Nix has no log for it.
    none = _nix(oracle, "nix", "log", "--store", store, "--substituters", "", drvs["good"])
    assert none.returncode != 0 and b"not available" in none.stderr


def _drv_paths(spec: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Build (keep going) and return each derivation's drv path by name."""
    code, out, _ = build(capsys, "-k", "--json", spec)
    assert code == 100
    return {r["drvPath"].rsplit("-", 1)[1][:-4]: r["drvPath"] for r in json.loads(out)}


def test_runner_log_prints_a_log_nix_uploaded(oracle: NixOracle, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    expr = ('derivation { name = "app"; system = builtins.currentSystem; builder = "/bin/sh";'
            ' args = ["-c" "echo nix-built-log-line; echo x > $out"]; }')
    (drv,) = oracle.instantiate(expr)
    out = oracle.run("nix-build", "--no-out-link", "--option", "build-users-group", "",
                     drv).decode().strip()
    cache = tmp_path / "cache"
    oracle.run("nix", "store", "copy-log", "--to", f"file://{cache}", drv)
    oracle.run("nix", "copy", "--to", f"file://{cache}", out)  # its narinfo names the .drv
    assert (cache / "log" / os.path.basename(drv)).read_bytes() == b"nix-built-log-line\n"
    os.rename(oracle.store_dir, tmp_path / "nix-store")  # runner's own store at that dir
    monkeypatch.setenv("RUNNER_STORE_DIR", oracle.store_dir)
    assert run(["log", drv]) == 1  # the control: no local log, no substituter
    assert "no build log available" in capsys.readouterr().err
    for target in (drv, out):
        assert run(["log", "--option", "substituters", f"file://{cache}", target]) == 0
        shown, err = capsys.readouterr()
        assert shown == "nix-built-log-line\n"
        assert f"got build log for '{drv}' from 'file://{cache}'" in err
