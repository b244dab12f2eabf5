"""Hostile failure records: each probe first shows the untouched record is accepted (so
the probe would see an acceptance), then that the altered one is ignored with exactly
one warning line, from a real file cache and a real `runner cache serve` directory."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.store.hashes import Hash
from runner.substituters.base import Substituter
from runner.substituters.configure import open_substituters
from runner.substituters.failure_lookup import FoundFailure, find_failure
from runner.substituters.failure_record import (
    MAX_LOG,
    CacheFailure,
    log_name,
    parse,
    record_name,
)
from runner.substituters.log_fetch import Caches
from runner.substituters.signing import PublicKey, SecretKey
from tests.subst_util import served, settings_for

KEY = SecretKey.generate("team-1")
OTHER = SecretKey.generate("other-1")
LOG = b"compiling\nerror: it broke\n"


class Cache:
    def __init__(self, root: Path, url: str, store_dir: str, state_dir: str) -> None:
        self.root = root
        self.url = url
        self.store_dir = store_dir
        self.state_dir = state_dir
        self.x = f"{store_dir}/{'1' * 32}-bad.drv"
        self.y = f"{store_dir}/{'2' * 32}-other.drv"
        self._opened: dict[str, list[Substituter]] = {}
        (root / "nix-cache-info").write_text(f"StoreDir: {store_dir}\n")
        self.publish(self.record(self.x, LOG), LOG)

    def record(self, drv: str, log: bytes, key: SecretKey | None = KEY) -> CacheFailure:
        record = CacheFailure(drv, "failed", 3, 1765137000, "x86_64-linux", log_name(drv),
                              Hash("sha256", hashlib.sha256(log).digest()), len(log))
        return record.signed(key) if key is not None else record

    def publish(self, record: CacheFailure, log: bytes) -> None:
        self.write(record.log, log)
        self.write(record_name(record.drv_path), record.to_text().encode())

    def write(self, rel: str, data: bytes) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)

    def text(self, drv: str) -> str:
        return (self.root / record_name(drv)).read_text()

    def sparse(self, rel: str, size: int) -> None:
        """A file of `size` bytes that takes no disk: reading it all would take memory."""
        with open(self.root / rel, "wb") as f:
            f.truncate(size)

    def lookup(self, drv: str, trust: str | None = None) -> tuple[FoundFailure | None, list[str]]:
        warnings: list[str] = []
        key = trust or KEY.public_key().to_string()
        if key not in self._opened:  # opened once per test, as once per run
            settings = settings_for(self.store_dir, self.state_dir, substituters=self.url,
                                    trusted_public_keys=key)
            self._opened[key] = open_substituters(settings, warn=warnings.append)
        caches = Caches(self._opened[key], warnings.append)
        return find_failure(caches, drv, self.store_dir), warnings


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One `runner cache serve DIR` for the module (stopping one takes its poll interval)."""
    root = tmp_path_factory.mktemp("served")
    with served(str(root)) as url:
        yield root, url


@pytest.fixture(params=["file", "http"])
def cache(request: pytest.FixtureRequest, tmp_path: Path,
          http_root: tuple[Path, str]) -> Cache:
    store_dir, state_dir = os.environ["RUNNER_STORE_DIR"], os.environ["RUNNER_STATE_DIR"]
    if request.param == "file":
        root = tmp_path / "cache"
        root.mkdir()
        return Cache(root, f"file://{root}", store_dir, state_dir)
    root, url = http_root
    for entry in root.iterdir():  # each test starts from an empty served directory
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return Cache(root, url, store_dir, state_dir)


def _resign(c: Cache, record: CacheFailure) -> None:
    c.write(record_name(c.x), dataclasses.replace(record, sigs=()).signed(OTHER).to_text()
            .encode())


def _flip_signature(c: Cache) -> None:
    text = c.text(c.x)
    sig = text.split("Sig: team-1:")[1].strip()
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 1
    c.write(record_name(c.x), text.replace(sig, base64.b64encode(bytes(raw)).decode()).encode())


def _field(c: Cache, old: str, new: str) -> None:
    text = c.text(c.x)
    assert old in text
    c.write(record_name(c.x), text.replace(old, new).encode())


def _swap_log(c: Cache) -> None:
    """The log replaced, and the record's LogHash/LogSize changed to match it."""
    swapped = b"all good, nothing to see\n"
    _field(c, f"LogSize: {len(LOG)}", f"LogSize: {len(swapped)}")
    new_hash = Hash("sha256", hashlib.sha256(swapped).digest()).to_string("base32")
    text = c.text(c.x)
    old_hash = next(line for line in text.splitlines() if line.startswith("LogHash: "))
    c.write(record_name(c.x), text.replace(old_hash, f"LogHash: {new_hash}").encode())
    c.write(log_name(c.x), swapped)


def _replay_for_another_drv(c: Cache) -> None:
    """X's signed record, relabelled as Y's and put where Y's would be."""
    bx, by = os.path.basename(c.x), os.path.basename(c.y)
    c.write(record_name(c.y), c.text(c.x).replace(bx, by).encode())
    c.write(log_name(c.y), LOG)


def _wrong_deriver(c: Cache) -> None:
    """X's record, untouched, where Y's would be."""
    c.write(record_name(c.y), c.text(c.x).encode())


# name -> (what to do to the cache, the derivation then asked for, part of the warning)
PROBES: dict[str, tuple[Callable[[Cache], None], str, str]] = {
    "bad signature": (_flip_signature, "x", "its signature does not match its contents"),
    "untrusted key": (lambda c: _resign(c, parse(c.text(c.x), c.store_dir, "t")), "x",
                      "signed only by keys you do not trust ('other-1')"),
    "unsigned": (lambda c: _field(c, c.text(c.x)[c.text(c.x).index("Sig: "):], ""), "x",
                 "it is not signed"),
    "field Deriver (replayed)": (_replay_for_another_drv, "y", "signature does not match"),
    "field Class": (lambda c: _field(c, "Class: failed", "Class: flaky"), "x",
                    "unknown Class 'flaky'"),
    "field ExitStatus": (lambda c: _field(c, "ExitStatus: 3", "ExitStatus: 4"), "x",
                         "signature does not match"),
    "field Time": (lambda c: _field(c, "Time: 1765137000", "Time: 1765137001"), "x",
                   "signature does not match"),
    "field System": (lambda c: _field(c, "System: x86_64-linux", "System: aarch64-linux"), "x",
                     "signature does not match"),
    "field Log": (lambda c: _field(c, "Log: log/", "Log: log/x"), "x", "Log 'log/x"),
    "field LogHash (log swapped)": (_swap_log, "x", "signature does not match"),
    "field LogSize": (lambda c: _field(c, f"LogSize: {len(LOG)}", "LogSize: 5"), "x",
                      "signature does not match"),
    "wrong Deriver": (_wrong_deriver, "y", "it describes '"),
    "log swapped, record untouched": (lambda c: c.write(log_name(c.x), LOG.upper()), "x",
                                      "its log has hash"),
    "log truncated": (lambda c: c.write(log_name(c.x), LOG[:-4]), "x",
                      f"its log has {len(LOG) - 4} bytes, not the {len(LOG)}"),
    "log missing": (lambda c: (c.root / log_name(c.x)).unlink(), "x", "is missing"),
    "record truncated in a field": (
        lambda c: c.write(record_name(c.x), c.text(c.x).encode()[:60]), "x", "is missing"),
    "record truncated in its signature": (
        lambda c: c.write(record_name(c.x), c.text(c.x).encode()[:-20]), "x",
        "do not trust (malformed signatures only)"),
    "garbage bytes": (lambda c: c.write(record_name(c.x), bytes(range(256)) * 4), "x",
                      "not UTF-8"),
    "garbage text": (lambda c: c.write(record_name(c.x), b"<html>oops</html>\n"), "x",
                     "is not 'Key: value'"),
    "empty": (lambda c: c.write(record_name(c.x), b""), "x", "'Deriver' is missing"),
    "unknown field": (lambda c: _field(c, "Class: failed", "Class: failed\nNote: hi"), "x",
                      "unknown field 'Note'"),
    "duplicate field": (lambda c: _field(c, "Class: failed", "Class: failed\nClass: failed"),
                        "x", "'Class' appears twice"),
}


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_a_hostile_record_is_ignored_with_one_warning(cache: Cache, probe: str) -> None:
    alter, which, expected = PROBES[probe]
    drv = cache.x if which == "x" else cache.y
    if which == "y":  # the control for Y: a record of its own would be accepted
        cache.publish(cache.record(cache.y, LOG), LOG)
    found, warnings = cache.lookup(drv)
    assert found is not None and found.key == "team-1" and found.log == LOG, warnings
    assert warnings == []
    (cache.root / record_name(cache.y)).unlink(missing_ok=True)
    alter(cache)
    found, warnings = cache.lookup(drv)
    assert found is None
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"ignoring failure record '{cache.url}/failure/")
    assert expected in warnings[0], warnings


def test_huge_record_and_log_are_read_bounded(cache: Cache) -> None:
    size = 1 << 30
    tracemalloc.start()
    try:
        cache.sparse(log_name(cache.x), size)
        found, warnings = cache.lookup(cache.x)
        assert found is None and len(warnings) == 1
        assert f"its log is larger than the {len(LOG)} bytes it states" in warnings[0]
        cache.sparse(record_name(cache.x), size)
        found, warnings = cache.lookup(cache.x)
        assert found is None and len(warnings) == 1
        assert "is larger than 16384 bytes" in warnings[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes held: not a bounded read"
    # The control: a record that states a large log is accepted with that log.
    big = b"x" * (2 << 20)
    cache.publish(cache.record(cache.x, big), big)
    found, _ = cache.lookup(cache.x)
    assert found is not None and found.log == big


def test_a_log_larger_than_records_allow_is_refused(cache: Cache) -> None:
    text = cache.text(cache.x).replace(f"LogSize: {len(LOG)}", f"LogSize: {MAX_LOG + 1}")
    cache.write(record_name(cache.x), text.encode())
    found, warnings = cache.lookup(cache.x)
    assert found is None and f"larger than {MAX_LOG}" in warnings[0]


def test_a_key_trusted_only_for_narinfos_elsewhere_is_not_enough(cache: Cache) -> None:
    """Trust is the user's trusted-public-keys; another trusted key does not vouch."""
    found, warnings = cache.lookup(cache.x, trust=OTHER.public_key().to_string())
    assert found is None and "keys you do not trust ('team-1')" in warnings[0]


def test_the_signature_covers_every_field() -> None:
    drv = "/s/" + "1" * 32 + "-bad.drv"
    record = CacheFailure(drv, "failed", 3, 1765137000, "x86_64-linux", log_name(drv),
                          Hash("sha256", hashlib.sha256(LOG).digest()), len(LOG)).signed(KEY)
    keys = {"team-1": KEY.public_key()}
    assert record.signer(keys) == "team-1"  # the control
    changed: dict[str, Any] = {
        "drv_path": "/s/" + "2" * 32 + "-bad.drv", "failure_class": "other",
        "exit_status": None, "time": 1765137001, "system": "aarch64-linux",
        "log": "log/other.drv", "log_hash": Hash("sha256", hashlib.sha256(b"x").digest()),
        "log_size": len(LOG) + 1,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(CacheFailure)} - {"sigs"}
    for name, value in changed.items():
        altered = dataclasses.replace(record, **{name: value})
        assert altered.signer(keys) is None, f"{name} is not covered by the signature"


def test_a_narinfo_signature_does_not_fit_a_record() -> None:
    """Distinct fingerprints: no signature of one kind is valid for the other."""
    drv = "/s/" + "1" * 32 + "-bad.drv"
    record = CacheFailure(drv, "failed", 3, 1, "x86_64-linux", log_name(drv),
                          Hash("sha256", hashlib.sha256(LOG).digest()), len(LOG))
    assert record.fingerprint().startswith("runner-failure-1;")
    assert not record.fingerprint().startswith("1;")
    assert PublicKey.parse(KEY.public_key().to_string()).verify(
        record.fingerprint(), base64.b64decode(KEY.sign(record.fingerprint()).split(":")[1]))
