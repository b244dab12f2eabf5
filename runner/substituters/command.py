"""A substituter program: `prog ARGS… query PATH` and `prog ARGS… fetch PATH DEST`.

The protocol (docs/caching.md):
- `query STOREPATH`: exit 0 printing one JSON object `{"narHash": "sha256:…",
  "narSize": N, "references": [full store paths], "deriver": path or null,
  "sigs": ["key:sig", …], "ca": "…"}` (`deriver`, `sigs`, `ca` optional);
  exit 0 printing nothing, or exit 1, when it does not have the path; any
  other exit status is a failure of the program.
- `fetch STOREPATH DEST`: write the path's uncompressed NAR to the file
  DEST and exit 0.
What it hands over is verified exactly like a binary cache's.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runner.errors import RunnerError
from runner.store import paths
from runner.store.hashes import Hash
from runner.substituters.base import DownState, Read
from runner.substituters.cache_info import DEFAULT_PRIORITY
from runner.substituters.narinfo import NarInfo

DEFAULT_TIMEOUT = 600.0


class CommandSubstituter(DownState):
    def __init__(self, argv: tuple[str, ...], store_dir: str, tmp_dir: str, *,
                 trusted: bool = False, trusted_keys: frozenset[str] = frozenset(),
                 timeout: float = DEFAULT_TIMEOUT, priority: int = DEFAULT_PRIORITY) -> None:
        super().__init__()
        if not argv:
            raise RunnerError("a substituter command must not be empty", reason="usage")
        self.argv = argv
        self.name = " ".join(argv)
        self.store_dir = store_dir
        self.tmp_dir = tmp_dir
        self.trusted = trusted
        self.trusted_keys = trusted_keys
        self.timeout = timeout
        self._priority = priority

    @property
    def priority(self) -> int:
        return self._priority

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run([*self.argv, *args], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RunnerError(f"substituter '{self.name}' timed out after {self.timeout:g}s",
                              reason="substituter-down") from None
        except OSError as e:
            raise RunnerError(f"cannot run substituter '{self.name}': {e.strerror}",
                              reason="substituter-down") from None

    def query(self, path: str) -> NarInfo | None:
        proc = self._run("query", path)
        if proc.returncode == 1 or (proc.returncode == 0 and not proc.stdout.strip()):
            return None
        if proc.returncode != 0:
            raise RunnerError(f"substituter '{self.name}' failed (exit {proc.returncode}): "
                              f"{_last_line(proc.stderr)}", reason="substituter-down")
        return self._parse(path, proc.stdout)

    def _parse(self, path: str, out: bytes) -> NarInfo:
        def bad(why: str) -> RunnerError:
            return RunnerError(f"substituter '{self.name}' gave a bad answer for '{path}': {why}",
                               reason="bad-narinfo")

        try:
            doc: Any = json.loads(out)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise bad("expected a JSON object")
        nar_hash, nar_size = doc.get("narHash"), doc.get("narSize")
        refs, deriver = doc.get("references", []), doc.get("deriver")
        sigs, ca = doc.get("sigs", []), doc.get("ca")
        if not isinstance(nar_hash, str):
            raise bad("'narHash' (a string) is required")
        if not isinstance(nar_size, int) or isinstance(nar_size, bool) or nar_size <= 0:
            raise bad("'narSize' (a positive number) is required")
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise bad("'references' must be a list of store paths")
        if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs):
            raise bad("'sigs' must be a list of strings")
        if deriver is not None and not isinstance(deriver, str):
            raise bad("'deriver' must be a store path or null")
        if ca is not None and not isinstance(ca, str):
            raise bad("'ca' must be a string or null")
        try:
            for p in [*refs, *([deriver] if deriver else [])]:
                paths.parse_store_path(p, self.store_dir)
            parsed_hash = Hash.parse(nar_hash)
        except RunnerError as e:
            raise bad(e.message) from None
        return NarInfo(path=path, url="", nar_hash=parsed_hash, nar_size=nar_size,
                       references=frozenset(refs), deriver=deriver, sigs=tuple(sigs), ca=ca)

    @contextmanager
    def fetch(self, info: NarInfo) -> Iterator[Read]:
        os.makedirs(self.tmp_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.tmp_dir, prefix="fetch-") as tmp:
            dest = os.path.join(tmp, "nar")
            proc = self._run("fetch", info.path, dest)
            if proc.returncode != 0:
                raise RunnerError(f"substituter '{self.name}' could not fetch '{info.path}' "
                                  f"(exit {proc.returncode}): {_last_line(proc.stderr)}",
                                  reason="fetch-failed")
            if not os.path.isfile(dest):
                raise RunnerError(f"substituter '{self.name}' wrote no NAR for '{info.path}'",
                                  reason="fetch-failed")
            with open(dest, "rb") as f:
                yield f.read


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no message"
