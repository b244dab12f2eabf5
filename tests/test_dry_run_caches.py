"""`runner build --dry-run` says why each binary cache will not be used: one line per cache
and reason (untrusted or missing signature, wrong store dir, not found, down), with real
file caches filled by `runner copy --to` and an HTTP cache whose port is closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli.main import run
from tests.subst_util import closed_port

SPEC = """version: 1
defaults:
  builder: /bin/sh
derivations:
  a:
    args: ["-c", "echo a > $out"]
  b:
    args: ["-c", "echo b > $out"]
"""


def built(capsys: pytest.CaptureFixture[str], spec: Path, *store: str) -> list[str]:
    assert run(["build", str(spec), "--no-out-link", "--sandbox=off", *store]) == 0
    return capsys.readouterr().out.split()


def key(tmp_path: Path, name: str) -> tuple[Path, str]:
    sec, pub = tmp_path / f"{name}.sec", tmp_path / f"{name}.pub"
    assert run(["key", "generate", name, "--secret", str(sec), "--public", str(pub)]) == 0
    return sec, pub.read_text().strip()


@pytest.fixture
def caches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Caches that hold the spec's outputs (signed by k1, unsigned, from another store
    dir), one that holds something else, and a down HTTP cache; the local outputs are
    then collected, so a build would need a cache."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    sec, pub = key(tmp_path, "k1")
    _, other_pub = key(tmp_path, "k2")
    outs = built(capsys, spec)
    urls = {name: f"file://{tmp_path / name}" for name in ("signed", "unsigned", "other",
                                                           "empty")}
    assert run(["copy", "--to", urls["signed"], "--sign-key", str(sec), *outs]) == 0
    assert run(["copy", "--to", urls["unsigned"], *outs]) == 0
    elsewhere = ["--store-dir", str(tmp_path / "store2"), "--state-dir", str(tmp_path / "st2")]
    assert run(["copy", "--to", urls["other"], "--sign-key", str(sec),
                *built(capsys, spec, *elsewhere), *elsewhere]) == 0
    capsys.readouterr()
    assert run(["store", "add", str(spec)]) == 0
    assert run(["copy", "--to", urls["empty"], capsys.readouterr().out.strip()]) == 0
    assert run(["gc"]) == 0
    urls["down"] = f"http://127.0.0.1:{closed_port()}?retries=0"
    capsys.readouterr()
    return {**urls, "spec": str(spec), "trusted": other_pub, "k1": pub}


def dry_run(capsys: pytest.CaptureFixture[str], caches: dict[str, str], trusted: str,
            *names: str) -> list[str]:
    subs = " ".join(caches[n] for n in names)
    assert run(["build", caches["spec"], "--dry-run", "--option", "substituters", subs,
                "--option", "trusted-public-keys", trusted]) == 0
    return capsys.readouterr().err.splitlines()


def test_each_cache_says_why(caches: dict[str, str], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    err = dry_run(capsys, caches, caches["trusted"],
                  "signed", "unsigned", "other", "empty", "down")
    assert err[0] == "these 2 derivations will be built:"
    start = err.index("binary caches that will not be used:")
    down = caches["down"].split("?")[0]
    assert err[start + 1:] == [
        f"  {caches['signed']}: 2 paths signed only by keys you do not trust ('k1'; see "
        "trusted-public-keys)",
        f"  {caches['unsigned']}: 2 paths not signed (require-sigs is on; see "
        "trusted-public-keys)",
        f"  {caches['other']}: for store dir '{tmp_path / 'store2'}', not "
        f"'{tmp_path / '_runner' / 'store'}' (every machine sharing a cache needs the same "
        "store-dir)",
        f"  {caches['empty']}: 2 paths not found",
        f"  {down}: down (GET {down}/nix-cache-info: connection refused)",
    ]
    assert not [line for line in err if line.startswith("warning:")]  # said once, above


def test_a_cache_that_delivers_is_not_listed(caches: dict[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Control: trusting k1, the signed cache delivers both paths; the empty cache is
    # asked first and has neither, but nothing is built, so it is not blamed.
    err = dry_run(capsys, caches, caches["k1"], "empty", "signed")
    assert err[0] == "these 2 paths will be fetched:"
    assert "binary caches that will not be used:" not in err
