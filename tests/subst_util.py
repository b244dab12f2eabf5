"""Helpers for the substituter tests: stores, non-CA paths, caches and servers on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.settings import Settings
from runner.store import nar
from runner.store.canonicalise import canonicalise
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.store.paths import make_output_path
from runner.substituters.serve import StoreSource, make_server, serve_in_thread


def make_output(store: LocalStore, name: str, content: str, refs: tuple[str, ...] = ()) -> str:
    """A path as a build would leave it: not content-addressed, so only a signature vouches."""
    path = make_output_path("out", hashlib.sha256(name.encode()).digest(), name, store.store_dir)
    os.makedirs(path)
    Path(path, "data").write_text(content + "".join(f"\n{r}" for r in refs))
    Path(path, "run").write_text("#!/bin/sh\n")
    os.chmod(Path(path, "run"), 0o755)
    os.symlink("data", Path(path, "link"))
    canonicalise(path)
    nar_hash, nar_size = nar.hash_path(path)
    store.register_valid_paths([PathInfo(path, nar_hash, nar_size, frozenset(refs))])
    return path


def nar_bytes(path: str | os.PathLike[str]) -> bytes:
    return b"".join(nar.dump(path))


def settings_for(store_dir: str, state_dir: str, **options: str) -> Settings:
    return Settings.load(options={k.replace("_", "-"): v for k, v in options.items()},
                         flags={"store-dir": store_dir, "state-dir": state_dir})


class TwoStores:
    """Store A holds paths; `fresh()` moves it aside and opens an empty store B at the same
    store dir (paths only match in the same store dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store_dir = str(root / "store")
        self.a = LocalStore(self.store_dir, str(root / "state-a"))
        self.b: LocalStore | None = None

    def fresh(self) -> LocalStore:
        self.a.close()
        os.rename(self.store_dir, self.root / "old-store")
        self.b = LocalStore(self.store_dir, str(self.root / "state-b"))
        return self.b

    def old(self, path: str) -> str:
        return str(self.root / "old-store" / os.path.basename(path))

    @property
    def state_b(self) -> str:
        return str(self.root / "state-b")

    def close(self) -> None:
        self.a.close()
        if self.b is not None:
            self.b.close()


@contextmanager
def served(source: StoreSource | str, *, writable: bool = False) -> Iterator[str]:
    server = make_server(source, port=0, writable=writable)
    thread = serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def hung_server() -> Iterator[str]:
    """Listens but never accepts: the kernel completes the handshake, nobody ever answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_port() -> int:
    """A loopback port nobody listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port
