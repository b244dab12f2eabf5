"""Two machines sharing a store dir: A builds a spec and fills a cache, B builds it again.

Builders append their name to a counter file outside the store, so a test
can prove that B built nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store.hashes import Hash
from runner.store.local_store import LocalStore
from runner.substituters.signing import SecretKey
from tests.build_helpers import counts

BODY = """\
inputs:
  src: ./src
derivations:
  lib:
    builder: /bin/sh
    args: ["-c", "test -e $COUNTER.fail && exit 1; echo lib >> $COUNTER; mkdir $out;
                  cat ${{{{ src }}}}/msg > $out/msg"]
    env: {{COUNTER: "{counter}"}}
  app:
    builder: /bin/sh
    args: ["-c", "echo app >> $COUNTER; mkdir $out; cp ${{{{ lib }}}}/msg $out/;
                  echo ${{{{ lib }}}} > $out/lib"]
    env: {{COUNTER: "{counter}"}}
"""


class Site:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.capsys = capsys
        self.store_dir = str(root / "store")
        self.counter = root / "counter"
        self.key = SecretKey.generate("team-cache-1")
        self.pub = self.key.public_key().to_string()
        self.sec = root / "team.sec"
        self.sec.write_text(self.key.to_string())
        (root / "src").mkdir()
        (root / "src" / "msg").write_text("hello from the source\n")
        self.spec = self.write_spec()
        self.state = str(root / "state-a")
        self.outputs: dict[str, str] = {}
        self.hashes: dict[str, Hash] = {}

    def write_spec(self, extra: str = "", name: str = "spec.yaml") -> str:
        path = self.root / name
        path.write_text("version: 1\n" + BODY.format(counter=self.counter) + extra)
        return str(path)

    def args(self) -> list[str]:
        return ["--store-dir", self.store_dir, "--state-dir", self.state]

    def build(self, *argv: str, spec: str | None = None) -> tuple[int, list[dict[str, object]],
                                                                    str]:
        code = run(["build", "--sandbox=off", "--no-out-link", "--json", *self.args(),
                    spec or self.spec, *argv])
        out, err = self.capsys.readouterr()
        return code, (json.loads(out) if out.strip() else []), err

    def build_on_a(self) -> None:
        code, results, err = self.build()
        assert code == 0, err
        for r in results:
            for path in r["outputs"].values():  # type: ignore[attr-defined]
                self.outputs[os.path.basename(path).split("-", 1)[1]] = path
        with LocalStore(self.store_dir, self.state) as store:
            for path in self.outputs.values():
                info = store.query_path_info(path)
                assert info is not None
                self.hashes[path] = info.nar_hash
        assert counts(self.counter) == {"lib": 1, "app": 1}

    def copy_to(self, url: str, *, sign: bool = True) -> None:
        sign_args = ["--sign-key", str(self.sec)] if sign else []
        code = run(["copy", "--to", url, *sign_args, *self.args(), *self.outputs.values()])
        assert code == 0, self.capsys.readouterr().err

    def move_to_b(self) -> None:
        """B: an empty store at the same store dir (paths only match in one store dir)."""
        os.rename(self.store_dir, self.root / "old-store")
        self.state = str(self.root / "state-b")
        self.counter.unlink()

    def b_hashes(self) -> dict[str, Hash]:
        with LocalStore(self.store_dir, self.state) as store:
            found = {}
            for path in self.outputs.values():
                info = store.query_path_info(path)
                assert info is not None, path
                found[path] = info.nar_hash
            return found

    def built(self) -> dict[str, int]:
        return counts(self.counter)


@contextmanager
def cache_server(directory: Path, *extra: str) -> Iterator[str]:
    """`runner cache serve DIR` in its own process; yields its URL."""
    directory.mkdir(exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "runner", "cache", "serve", str(directory), "--port", "0",
         *extra], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"on (http://\S+)", line)
        assert match, line
        yield match.group(1)
    finally:
        server.terminate()
        server.wait(timeout=10)
