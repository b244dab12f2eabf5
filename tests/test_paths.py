from __future__ import annotations

import hashlib

import pytest

from runner.errors import RunnerError
from runner.store.hashes import Hash
from runner.store.paths import (
    hash_part,
    is_in_store,
    is_store_path,
    make_fixed_output_path,
    make_output_path,
    make_source_path,
    make_store_path,
    make_text_path,
    name_part,
    parse_store_path,
    to_store_path,
    validate_name,
)
from tests.golden import assert_golden

# Expected paths were printed by Nix 2.8 (`nix-instantiate --readonly-mode --eval`) for
# NIX_STORE_DIR=/nix/store; test_formats_oracle.py checks the same against a live Nix.
STORE = "/nix/store"
EMPTY_SHA256 = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_text_path_like_to_file() -> None:
    foo = make_text_path("foo", hashlib.sha256(b"bar").digest(), [], STORE)
    assert foo == "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    text = f"x {foo}".encode()
    baz = make_text_path("baz", hashlib.sha256(text).digest(), [foo], STORE)
    assert baz == "/nix/store/8ilvbls5hb42hy5x3khksbrwq87cgwva-baz"


def test_references_are_sorted_and_deduplicated() -> None:
    digest = hashlib.sha256(b"t").digest()
    a, b = f"{STORE}/{'a' * 32}-a", f"{STORE}/{'b' * 32}-b"
    assert make_text_path("n", digest, [b, a, b], STORE) == make_text_path(
        "n", digest, [a, b], STORE
    )
    assert make_text_path("n", digest, [a], STORE) != make_text_path("n", digest, [], STORE)


def test_fixed_output_paths() -> None:
    empty = Hash.parse(EMPTY_SHA256)
    flat = make_fixed_output_path("fixed", empty, False, STORE)
    assert flat == "/nix/store/6d1hby0aacgwa2jg1dw7xhnqc9ywf9bj-fixed"
    rec = make_fixed_output_path("fixed", empty, True, STORE)
    assert rec == "/nix/store/kp31qdxv2x30cky0bvvf88vv91b0sfjy-fixed"
    assert rec == make_source_path("fixed", empty.digest, STORE)
    sha1 = Hash.parse("sha1-qZk+NkcGgWq6PiVxeFDCbJzQ2J0=")
    assert make_fixed_output_path("fixed", sha1, True, STORE) == (
        "/nix/store/xfb8mwyr44kf8ryii7d9xh5jbfnr8g8a-fixed"
    )


def test_output_path_names() -> None:
    digest = hashlib.sha256(b"drv").digest()
    assert make_output_path("out", digest, "hello", STORE).endswith("-hello")
    dev = make_output_path("dev", digest, "hello", STORE)
    assert dev.endswith("-hello-dev")
    assert dev == make_store_path("output:dev", digest, "hello-dev", STORE)


def test_store_dir_changes_path() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert make_source_path("x", digest, "/a")[3:] != make_source_path("x", digest, "/b")[3:]


@pytest.mark.parametrize(
    "name", ["a", "A-z_0.9+?=", "x" * 211, "hello-1.0", ".gitignore", "...", ".a-1"]
)
def test_valid_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".-1", "..-a", "x" * 212, "a b", "a/b", "ä", "a:b", "a\n"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RunnerError) as info:
        validate_name(name)
    assert info.value.reason == "bad-name"
    with pytest.raises(RunnerError) as info:
        make_source_path(name, b"\0" * 32, STORE)
    assert info.value.reason == "bad-name"


def test_parse_store_path() -> None:
    path = "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
    assert parse_store_path(path, STORE) == ("vxjiwkjkn7x4079qvh1jkl5pn05j2aw0", "foo")
    assert hash_part(path) == "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0"
    assert name_part(path) == "foo"
    assert is_store_path(path, STORE)
    assert is_in_store(path + "/bin/sh", STORE)
    assert to_store_path(path + "/bin/sh", STORE) == path
    assert not is_in_store("/nix/storex/a", STORE)
    assert not is_in_store(STORE, STORE)


@pytest.mark.parametrize(
    "path",
    [
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0",
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-",
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo/bin",
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2awe-foo",
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0_foo",
        "/other/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo",
        "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-.",
        "/nix/store/short-foo",
    ],
)
def test_parse_rejects(path: str) -> None:
    with pytest.raises(RunnerError) as info:
        parse_store_path(path, STORE)
    assert info.value.reason == "bad-path"
    assert not is_store_path(path, STORE)


def test_paths_golden() -> None:
    """A spread of paths of every kind, for two store dirs, pinned byte for byte."""
    lines = []
    for store in ("/nix/store", "/tmp/runner store/x"):
        for i, name in enumerate(["a", "hello-1.0", "x" * 211, "with?odd=chars+"]):
            digest = hashlib.sha256(f"{i}".encode()).digest()
            refs = [f"{store}/{'0' * 32}-r{j}" for j in range(i)]
            lines += [
                make_text_path(name, digest, refs, store),
                make_source_path(name, digest, store, refs),
                make_store_path("output:out", digest, name, store),
            ]
            if len(name) < 200:
                lines.append(make_output_path("dev", digest, name, store))
            for algo in ("md5", "sha1", "sha256", "sha512"):
                h = Hash(algo, hashlib.new(algo, name.encode()).digest())
                lines += [
                    make_fixed_output_path(name, h, False, store),
                    make_fixed_output_path(name, h, True, store),
                ]
    assert_golden("paths.txt", "\n".join(lines).encode() + b"\n")
