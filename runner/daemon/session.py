"""One client connection: its state, the stderr channel and the loop over operations.

An operation reads its arguments, then "starts work" (log messages may flow
from here on), does it, "stops work" (`STDERR_LAST`, or `STDERR_ERROR` and
the message) and writes its result. A `RunnerError` while working is sent to
the client and the connection goes on; bad framing while reading arguments
leaves the stream out of step, so the error is sent and the connection ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from runner.daemon import signatures
from runner.daemon.options import ClientOptions
from runner.daemon.protocol import (
    STDERR_LAST,
    STDERR_NEXT,
    minor,
    write_error,
)
from runner.daemon.trust import Peer
from runner.daemon.wire import ProtocolError, Reader, Writer
from runner.errors import RunnerError, raise_not_valid
from runner.settings import Settings
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.store.paths import parse_store_path
from runner.substituters.base import Substituter


class Session:
    """The state of one connection, served by one process (see server.py)."""

    def __init__(self, reader: Reader, writer: Writer, version: int, peer: Peer,
                 store: LocalStore, settings: Settings) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.minor = minor(version)
        self.peer = peer
        self.store = store
        self.settings = settings
        self.options = ClientOptions()
        self.substituter_cache: tuple[object, list[Substituter]] | None = None
        self._working = False

    # ------------------------------------------------------------ the stderr channel

    def start_work(self) -> None:
        self._working = True

    def stop_work(self) -> None:
        self._working = False
        self.writer.u64(STDERR_LAST)

    def log(self, message: str) -> None:
        """A line for the client's stderr (dropped outside an operation, as it cannot be sent)."""
        if self._working:
            self.writer.u64(STDERR_NEXT).text(message.rstrip("\n") + "\n")
            self.writer.flush()

    def fail(self, error: RunnerError) -> None:
        """Report `error` to the client as the end of the current operation."""
        self._working = False
        write_error(self.writer, self.version, error.message)
        self.writer.flush()

    def serve(self, handlers: Mapping[int, Callable[[Session], None]]) -> None:
        """Answer operations until the client hangs up (or breaks the framing). The
        operation table is passed in (ops.HANDLERS): the operations import this module."""
        while not self.reader.at_eof():
            code = self.reader.u64()
            handler = handlers.get(code)
            if handler is None:
                # Its arguments are unknown, so the stream cannot be resynchronised.
                raise ProtocolError(f"invalid operation {code}")
            try:
                handler(self)
            except ProtocolError:
                raise
            except RunnerError as e:
                if not self._working:
                    raise  # failed while reading arguments: the stream is out of step
                self.fail(e)
            except KeyboardInterrupt:  # SIGTERM/SIGINT to the daemon
                if self._working:
                    self.fail(RunnerError("the daemon is shutting down"))
                raise
            except Exception as e:  # a bug of ours: tell the client, then end (state unknown)
                if self._working:
                    self.fail(RunnerError(f"internal error in the daemon: "
                                          f"{type(e).__name__}: {e}"))
                raise
            self.writer.flush()

    # ------------------------------------------------------------ argument helpers

    def path(self, text: str) -> str:
        parse_store_path(text, self.store.store_dir)
        return text

    def paths(self, texts: Iterable[str]) -> list[str]:
        return [self.path(t) for t in texts]

    def require_trust(self, what: str) -> None:
        if not self.peer.trusted:
            raise RunnerError(f"you are not privileged to {what} (setting trusted-users)",
                              reason="not-trusted")

    def valid_info(self, path: str) -> PathInfo:
        info = self.store.query_path_info(path)
        if info is None:
            raise_not_valid(path)
        return info

    def write_info(self, info: PathInfo, *, include_path: bool) -> None:
        w = self.writer
        if include_path:
            w.text(info.path)
        w.text(info.deriver or "").text(info.nar_hash.hex())
        w.texts(sorted(info.references))
        w.u64(info.registration_time).u64(info.nar_size)
        if self.minor >= 16:
            # never "ultimate": runner does not record which paths it built itself
            w.flag(False).texts(signatures.query(self.store, info.path)).text(info.ca or "")


