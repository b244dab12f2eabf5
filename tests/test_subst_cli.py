"""`runner key generate`, `runner copy --to/--from`, `runner cache serve` as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.substituters.signing import PublicKey, SecretKey
from tests.subst_util import TwoStores, make_output, nar_bytes


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[TwoStores]:
    two = TwoStores(tmp_path / "s")
    yield two
    two.close()


def _keys(tmp_path: Path) -> tuple[str, str]:
    sec, pub = tmp_path / "k.sec", tmp_path / "k.pub"
    assert run(["key", "generate", "team-1", "--secret", str(sec), "--public", str(pub)]) == 0
    return str(sec), pub.read_text()


def test_key_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sec, pub = _keys(tmp_path)
    assert os.stat(sec).st_mode & 0o777 == 0o600
    assert SecretKey.load(sec).public_key() == PublicKey.parse(pub)
    assert run(["key", "generate", "team-1", "--secret", sec]) == 1
    assert "already exists" in capsys.readouterr().err
    assert run(["key", "generate", "printed"]) == 0
    secret, public = capsys.readouterr().out.split()
    assert SecretKey.parse(secret).public_key() == PublicKey.parse(public)
    assert run(["key", "generate", "bad:name"]) == 1


def _args(stores: TwoStores, state: str) -> list[str]:
    return ["--store-dir", stores.store_dir, "--state-dir", state]


def test_copy_to_and_from_a_file_cache(stores: TwoStores, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    sec, pub = _keys(tmp_path)
    lib = make_output(stores.a, "lib", "library")
    app = make_output(stores.a, "app", "application", (lib,))
    url = f"file://{tmp_path}/cache"
    a_args = _args(stores, str(stores.root / "state-a"))
    link = tmp_path / "result"
    link.symlink_to(app)  # an out-link names its store path, as everywhere
    assert run(["copy", "--to", url, "--sign-key", sec, str(link), *a_args]) == 0
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([
        *(f"{os.path.basename(p)[:32]}.narinfo" for p in (lib, app)), "nar", "nix-cache-info"])
    stores.fresh()
    b_args = _args(stores, stores.state_b)
    capsys.readouterr()
    assert run(["copy", "--from", url, app, *b_args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot substitute") and url in err and "do not trust" in err
    assert run(["copy", "--from", url, app, *b_args,
                "--option", "trusted-public-keys", pub]) == 0
    assert nar_bytes(app) == nar_bytes(stores.old(app))


def test_serve_a_writable_directory_copy_to_and_from_http(stores: TwoStores,
                                                          tmp_path: Path) -> None:
    sec, pub = _keys(tmp_path)
    lib = make_output(stores.a, "lib", "library")
    app = make_output(stores.a, "app", "application", (lib,))
    (tmp_path / "served").mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "runner", "cache", "serve", str(tmp_path / "served"),
         "--writable", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"on (http://\S+)", line)
        assert match, line
        url = match.group(1)
        a_args = _args(stores, str(stores.root / "state-a"))
        assert run(["copy", "--to", url, "--sign-key", sec, app, *a_args]) == 0
        assert (tmp_path / "served" / f"{os.path.basename(app)[:32]}.narinfo").exists()
        stores.fresh()
        b_args = _args(stores, stores.state_b)
        assert run(["copy", "--from", url, app, *b_args,
                    "--option", "trusted-public-keys", pub]) == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert nar_bytes(app) == nar_bytes(stores.old(app))
    assert nar_bytes(lib) == nar_bytes(stores.old(lib))


def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.sec").write_text("not a key")
    assert run(["copy", "--to", f"file://{tmp_path}/c", "--sign-key", str(tmp_path / "bad.sec"),
                "/nonexistent"]) == 1
    assert run(["copy", "--to", "ftp://x", "/x"]) == 1
    assert run(["copy", "--from", "file:///x?bogus=1", "/x"]) == 1
    assert run(["copy", "--to", "http://h:99999/", "/x"]) == 1
    assert run(["copy", "--from", "http://[::1", "/x"]) == 1
    assert run(["cache", "serve", str(tmp_path), "--port", "99999"]) == 1
    assert run(["cache", "serve", str(tmp_path), "--port", "-1"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 7 and all(e.startswith("error: ") for e in errors), errors
    assert "port 99999 is out of range" in errors[5]


def test_a_failed_copy_to_writes_nothing(stores: TwoStores, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    lib = make_output(stores.a, "lib", "library")
    a_args = _args(stores, str(stores.root / "state-a"))
    cache = tmp_path / "cache"
    invalid = os.path.join(stores.store_dir, "0" * 32 + "-missing")
    assert run(["copy", "--to", f"file://{cache}", invalid, *a_args]) == 1
    assert "is not valid" in capsys.readouterr().err
    assert not cache.exists()
    os.chmod(lib, 0o755)
    Path(lib, "data").chmod(0o644)
    Path(lib, "data").write_text("changed since it was added")
    assert run(["copy", "--to", f"file://{cache}", lib, *a_args]) == 1
    assert "modified since it was added" in capsys.readouterr().err
    assert not cache.exists()
    # The control: a valid path is copied, so the probe above can see a cache appear.
    other = make_output(stores.a, "other", "fine")
    assert run(["copy", "--to", f"file://{cache}", other, *a_args]) == 0
    assert (cache / "nix-cache-info").exists()
