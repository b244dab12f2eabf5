"""The same operations, byte for byte, against Nix 2.8's own `nix-daemon` and against
`runner daemon`, each over a fresh store with the same store dir: the replies must
agree (registration times aside), including error messages and the daemon version."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.daemon.client import Client, DaemonError
from runner.daemon.protocol import Op
from runner.store import derivation, nar
from tests.daemon_harness import Daemon, NixDaemon
from tests.nix_oracle import needs_nix

pytestmark = needs_nix
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def nix_daemon(tmp_path: Path, store_dir: str) -> Iterator[str]:
    with NixDaemon(tmp_path / "nixd", store_dir) as path:
        yield path


@pytest.fixture
def ours(tmp_path: Path, store_dir: str) -> Iterator[str]:
    with Daemon(str(tmp_path / "ours" / "socket")) as d:
        yield d.socket
        assert d.stop() == 0


Reply = object
Step = Callable[[Client], Reply]


def _call(c: Client, send: Callable[[Client], object], receive: Callable[[Client], Reply]
          ) -> Reply:
    send(c)
    try:
        c.process_stderr()
    except DaemonError as e:
        return ("error", _ANSI.sub("", e.message))
    return receive(c)


def _info(c: Client, with_path: bool) -> Reply:
    r = c.reader
    path = r.text() if with_path else None
    deriver, nar_hash, refs = r.text(), r.text(), sorted(r.texts())
    r.u64()  # registration time: "now" on each side
    return (path, deriver, nar_hash, refs, r.u64(), r.u64(), sorted(r.texts()), r.text())


def _script(store_dir: str, tmp_path: Path) -> list[tuple[str, Step]]:
    tree = tmp_path / "tree"
    if not tree.exists():  # one tree for both daemons
        (tree / "d").mkdir(parents=True)
        (tree / "d" / "x").write_text("x\n")
        (tree / "run").write_text("#!/bin/sh\n")
        (tree / "run").chmod(0o755)
        (tree / "l").symlink_to("d/x")
    tree_nar = b"".join(nar.dump(str(tree)))
    blob = b"\x00\xfflatin-1 \xe9 bytes"
    state: dict[str, str] = {}

    def add_text(c: Client) -> Reply:
        def send(c: Client) -> None:
            c.writer.u64(Op.ADD_TO_STORE).text("t.txt").text("text:sha256").texts([]).u64(0)
            c.writer.u64(len(blob)).raw(blob).u64(0)
        reply = _call(c, send, lambda c: _info(c, True))
        state["text"] = reply[0]  # type: ignore[index]
        return reply

    def add_tree(c: Client) -> Reply:
        def send(c: Client) -> None:
            c.writer.u64(Op.ADD_TO_STORE).text("tree").text("fixed:r:sha256")
            c.writer.texts([state["text"]]).u64(0)
            c.writer.u64(len(tree_nar)).raw(tree_nar).u64(0)
        reply = _call(c, send, lambda c: _info(c, True))
        state["tree"] = reply[0]  # type: ignore[index]
        return reply

    def add_flat(c: Client) -> Reply:
        def send(c: Client) -> None:
            c.writer.u64(Op.ADD_TO_STORE).text("flat").text("fixed:sha1").texts([]).u64(0)
            c.writer.u64(len(blob)).raw(blob).u64(0)
        return _call(c, send, lambda c: _info(c, True))

    def add_nar(c: Client) -> Reply:
        path = f"{store_dir}/{'7' * 32}-imported"
        state["imported"] = path

        def send(c: Client) -> None:
            c.writer.u64(Op.ADD_TO_STORE_NAR).text(path).text(state["text"])
            c.writer.text(hashlib.sha256(tree_nar).hexdigest()).texts([state["tree"]])
            c.writer.u64(1234).u64(len(tree_nar)).u64(0).texts([]).text("").u64(0).u64(1)
            c.writer.u64(len(tree_nar)).raw(tree_nar).u64(0)
        return _call(c, send, lambda c: "ok")

    def query(op: Op, key: str, receive: Callable[[Client], Reply]) -> Step:
        def step(c: Client) -> Reply:
            arg = state.get(key, key)
            return _call(c, lambda c: c.writer.u64(op).text(arg), receive)
        return step

    def sorted_texts(c: Client) -> Reply:
        return sorted(c.reader.texts())

    def path_info(c: Client) -> Reply:
        return _info(c, False) if c.reader.flag() else None

    def valid_paths(c: Client) -> Reply:
        missing = f"{store_dir}/{'1' * 32}-missing"
        return _call(c, lambda c: c.writer.u64(Op.QUERY_VALID_PATHS).texts(
            [state["tree"], missing, state["imported"]]).u64(0), sorted_texts)

    def nar_from_path(c: Client) -> Reply:
        c.writer.u64(Op.NAR_FROM_PATH).text(state["imported"])
        c.process_stderr()
        return c.reader.exact(len(tree_nar)) == tree_nar

    def query_missing(c: Client) -> Reply:
        missing = f"{store_dir}/{'1' * 32}-missing"
        return _call(c, lambda c: c.writer.u64(Op.QUERY_MISSING).texts(
            [missing, state["tree"]]), lambda c: [sorted(c.reader.texts()) for _ in range(3)]
            + [c.reader.u64(), c.reader.u64()])

    def add_drv(c: Client) -> Reply:
        drv = derivation.fill_output_paths(derivation.Derivation(
            outputs={"out": derivation.DerivationOutput(""),
                     "dev": derivation.DerivationOutput("")},
            input_drvs={}, input_srcs=(state["tree"],), system="x86_64-linux",
            builder="/bin/sh", args=("-c", "true"),
            env={"name": "d", "out": "", "dev": "", "builder": "/bin/sh",
                 "system": "x86_64-linux"}), store_dir, lambda p: None, {})  # type: ignore[arg-type, return-value]
        data = drv.text.encode()

        def send(c: Client) -> None:
            c.writer.u64(Op.ADD_TO_STORE).text("d.drv").text("text:sha256")
            c.writer.texts([state["tree"]]).u64(0).u64(len(data)).raw(data).u64(0)
        reply = _call(c, send, lambda c: _info(c, True))
        state["drv"] = reply[0]  # type: ignore[index]
        state["drv!out"] = f"{reply[0]}!out"  # type: ignore[index]
        state["out"] = drv.outputs["out"].path
        return reply

    def output_map(c: Client) -> Reply:
        return {c.reader.text(): c.reader.text() for _ in range(c.reader.u64())}

    def missing_drv(c: Client) -> Reply:
        return _call(c, lambda c: c.writer.u64(Op.QUERY_MISSING).texts(
            [state["drv!out"]]), lambda c: [sorted(c.reader.texts()) for _ in range(3)]
            + [c.reader.u64(), c.reader.u64()])

    invalid = f"{store_dir}/{'2' * 32}-invalid"
    steps: list[tuple[str, Step]] = [
        ("add text", add_text), ("add tree", add_tree), ("add flat", add_flat),
        ("add nar", add_nar),
        ("is valid", query(Op.IS_VALID_PATH, "imported", lambda c: c.reader.flag())),
        ("is valid (no)", query(Op.IS_VALID_PATH, invalid, lambda c: c.reader.flag())),
        ("valid paths", valid_paths),
        ("path info", query(Op.QUERY_PATH_INFO, "imported", path_info)),
        ("path info (invalid)", query(Op.QUERY_PATH_INFO, invalid, path_info)),
        # (not the obsolete query-references: Nix 2.8's daemon spins on it here)
        ("referrers", query(Op.QUERY_REFERRERS, "text", sorted_texts)),
        ("deriver", query(Op.QUERY_DERIVER, "imported", lambda c: c.reader.text())),
        ("hash part", lambda c: _call(c, lambda c: c.writer.u64(
            Op.QUERY_PATH_FROM_HASH_PART).text("7" * 32), lambda c: c.reader.text())),
        ("path hash (invalid)", query(Op.QUERY_PATH_HASH, invalid, lambda c: c.reader.text())),
        ("nar", nar_from_path),
        ("missing", query_missing),
        ("add drv", add_drv),
        ("output map", query(Op.QUERY_DERIVATION_OUTPUT_MAP, "drv", output_map)),
        ("output names", query(Op.QUERY_DERIVATION_OUTPUT_NAMES, "drv", sorted_texts)),
        ("valid derivers", query(Op.QUERY_VALID_DERIVERS, "out", sorted_texts)),
        ("missing drv", missing_drv),
        ("drv referrers", query(Op.QUERY_REFERRERS, "tree", sorted_texts)),
        ("temp root", query(Op.ADD_TEMP_ROOT, "tree", lambda c: c.reader.u64())),
        ("unknown op", lambda c: _call(c, lambda c: c.writer.u64(99), lambda c: "answered")),
    ]
    return steps


def test_same_replies_as_nix_daemon(nix_daemon: str, ours: str, store_dir: str,
                                    tmp_path: Path) -> None:
    replies = {}
    for name, path in (("nix", nix_daemon), ("runner", ours)):
        with Client(path).connect() as c:
            replies[name] = [(step, run(c)) for step, run in _script(store_dir, tmp_path)]
            replies[name].insert(0, ("version", c.daemon_version))
    for (step, theirs), (_, mine) in zip(replies["nix"], replies["runner"], strict=True):
        assert mine == theirs, step
