"""Substituter health across runs: a cache that hangs costs one timeout the first time and
nothing while it is known down; a probe after the back-off brings it back."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.settings import Settings
from runner.store.local_store import LocalStore
from runner.store.paths import make_output_path
from runner.substituters.configure import open_health, open_substituters, open_transport
from runner.substituters.health import Health
from runner.substituters.signing import SecretKey
from runner.substituters.substitute import NO_SUBSTITUTE, SUBSTITUTED, substitute
from runner.substituters.writer import copy_to_cache
from tests.subst_util import TwoStores, make_output, served, settings_for

KEY = SecretKey.generate("team-cache-1")
PUB = KEY.public_key().to_string()


class Hanging:
    """Accepts connections and reads requests, never answers; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join()
        for conn in self.accepted:
            conn.close()


@contextmanager
def hanging() -> Iterator[Hanging]:
    server = Hanging()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[TwoStores]:
    two = TwoStores(tmp_path / "s")
    yield two
    two.close()


def _settings(stores: TwoStores, url: str, **options: str) -> Settings:
    return settings_for(stores.store_dir, stores.state_b, substituters=url,
                        trusted_public_keys=PUB, **options)


def _one_run(stores: TwoStores, settings: Settings, paths: list[str]
             ) -> tuple[float, list[str], list[str]]:
    """Substitute `paths` from 4 threads at once, as a build does; (seconds, statuses, warnings)."""
    stores.b or stores.fresh()
    warnings: list[str] = []
    subs = open_substituters(settings, warn=warnings.append)

    def one(path: str) -> str:
        store = LocalStore(stores.store_dir, stores.state_b)  # one store per thread
        try:
            return substitute(store, path, subs, settings, warn=warnings.append).status
        finally:
            store.close()

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(one, paths))
    return time.monotonic() - start, statuses, warnings


def _paths(stores: TwoStores, n: int) -> list[str]:
    return [make_output_path("out", bytes([i]) * 32, f"p{i}", stores.store_dir)
            for i in range(n)]


def test_a_hanging_cache_costs_one_timeout_then_nothing(stores: TwoStores) -> None:
    with hanging() as server:
        settings = _settings(stores, f"{server.url}?timeout=1&retries=3")
        paths = _paths(stores, 8)
        took, statuses, warnings = _one_run(stores, settings, paths)
        assert statuses == [NO_SUBSTITUTE] * 8
        assert took < 2.5, f"{took:.1f}s: more than one timeout (retries or per lookup)"
        assert len(warnings) == 1 and warnings[0].endswith("timed out")  # not retried
        health = open_health(settings)
        record = health.get(server.url)
        health.close()
        assert record is not None and record.is_down and record.failures == 1
        assert record.next_probe is not None and 55 < record.next_probe - time.time() <= 60
        contacts = len(server.accepted)

        baseline, _, _ = _one_run(stores, _settings(stores, ""), paths)  # no cache at all
        took, statuses, warnings = _one_run(stores, settings, paths)  # the next run
        assert statuses == [NO_SUBSTITUTE] * 8
        assert took < baseline + 0.5
        assert len(warnings) == 1
        assert f"cache {server.url} is down since" in warnings[0]
        assert "timed out" in warnings[0] and "next probe in" in warnings[0]
        assert len(server.accepted) == contacts  # not contacted at all

        # The back-off is over (time moved on): one quick probe, which fails: down again,
        # back-off doubled.
        with sqlite3.connect(Path(stores.state_b, "substituter-health.sqlite")) as db:
            db.execute("UPDATE health SET next_probe = ?", (time.time() - 1,))
        took, _, warnings = _one_run(stores, settings, paths)
        assert took < 2.5 and len(server.accepted) == contacts + 1
        health = open_health(settings)
        record = health.get(server.url)
        health.close()
        assert record is not None and record.failures == 2
        assert record.next_probe is not None and 115 < record.next_probe - time.time() <= 120


def test_a_probe_that_succeeds_marks_the_cache_up(stores: TwoStores, tmp_path: Path) -> None:
    lib = make_output(stores.a, "lib", "library")
    cache = tmp_path / "cache"
    copy_to_cache(stores.a, [lib], open_transport(f"file://{cache}"), sign_key=KEY)
    with served(str(cache)) as url:
        settings = _settings(stores, url)
        health = Health(stores.state_b, 0, 0)  # a failure long ago: due for a probe now
        health.mark_down(url, "connection refused")
        health.close()
        _, statuses, warnings = _one_run(stores, settings, [lib])
        assert statuses == [SUBSTITUTED], warnings
        health = open_health(settings)
        record = health.get(url)
        health.close()
        assert record is not None and not record.is_down and record.failures == 0
        assert (record.lookups, record.hits) == (1, 1)


def test_concurrent_runs_update_health_consistently(tmp_path: Path) -> None:
    def fail_many(_: int) -> None:
        health = Health(str(tmp_path), 60, 3600)  # its own connection, as another run
        for _ in range(25):
            health.mark_down("http://cache", "timed out")
        health.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fail_many, range(4)))
    health = Health(str(tmp_path), 60, 3600)
    record = health.get("http://cache")
    assert record is not None and record.failures == 100
    assert record.next_probe is not None and record.next_probe - time.time() <= 3600
    health.close()


def test_cache_status_and_reset(stores: TwoStores, isolated_env: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://cache.invalid:5000"
    args = ["--store-dir", stores.store_dir, "--state-dir", stores.state_b,
            "--option", "substituters", f"{url}?timeout=2"]
    health = Health(stores.state_b, 60, 3600)
    health.mark_down(url, "connection refused")
    health.close()
    assert run(["cache", "status", "--json", *args]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["url"], row["state"], row["last_error"], row["configured"]) == (
        url, "down", "connection refused", True)
    assert run(["cache", "status", *args]) == 0
    assert "down since" in capsys.readouterr().out
    assert run(["cache", "reset", url, *args]) == 0
    assert "forgot 1" in capsys.readouterr().err
    assert run(["cache", "status", "--json", *args]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "up" and row["down_since"] is None


def test_cache_status_without_substituters_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cache", "status", "--option", "substituters", ""]) == 0
    assert capsys.readouterr().out.startswith("no substituters: none configured")
    assert run(["cache", "status", "--json", "--option", "substituters", ""]) == 0
    assert json.loads(capsys.readouterr().out) == []
