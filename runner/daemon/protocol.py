"""Nix's worker protocol as Nix 2.8 speaks it (1.34): magic numbers, op codes, the
handshake and the stderr channel that brackets every operation's reply.

A reply is a run of log messages (`STDERR_NEXT`, activities) ended by
`STDERR_LAST` and the operation's result, or by `STDERR_ERROR` and an error
(structured from minor 26, a message and status before). Each side adapts
to the *other* side's version, so the daemon decides every layout by the
client's minor.
"""

from __future__ import annotations

import enum

from runner import __version__
from runner.daemon.wire import ProtocolError, Reader, Writer

WORKER_MAGIC_1 = 0x6E697863  # "cxin": client hello
WORKER_MAGIC_2 = 0x6478696F  # "oixd": daemon hello
PROTOCOL_VERSION = 1 << 8 | 34
OLDEST_CLIENT = 1 << 8 | 10  # as Nix: older clients cannot even set options

STDERR_NEXT = 0x6F6C6D67
STDERR_READ = 0x64617461
STDERR_WRITE = 0x64617416
STDERR_LAST = 0x616C7473
STDERR_ERROR = 0x63787470
STDERR_START_ACTIVITY = 0x53545254
STDERR_STOP_ACTIVITY = 0x53544F50
STDERR_RESULT = 0x52534C54


class Op(enum.IntEnum):
    IS_VALID_PATH = 1
    HAS_SUBSTITUTES = 3
    QUERY_PATH_HASH = 4
    QUERY_REFERENCES = 5
    QUERY_REFERRERS = 6
    ADD_TO_STORE = 7
    ADD_TEXT_TO_STORE = 8
    BUILD_PATHS = 9
    ENSURE_PATH = 10
    ADD_TEMP_ROOT = 11
    ADD_INDIRECT_ROOT = 12
    SYNC_WITH_GC = 13
    FIND_ROOTS = 14
    EXPORT_PATH = 16
    QUERY_DERIVER = 18
    SET_OPTIONS = 19
    COLLECT_GARBAGE = 20
    QUERY_SUBSTITUTABLE_PATH_INFO = 21
    QUERY_DERIVATION_OUTPUTS = 22
    QUERY_ALL_VALID_PATHS = 23
    QUERY_FAILED_PATHS = 24
    CLEAR_FAILED_PATHS = 25
    QUERY_PATH_INFO = 26
    IMPORT_PATHS = 27
    QUERY_DERIVATION_OUTPUT_NAMES = 28
    QUERY_PATH_FROM_HASH_PART = 29
    QUERY_SUBSTITUTABLE_PATH_INFOS = 30
    QUERY_VALID_PATHS = 31
    QUERY_SUBSTITUTABLE_PATHS = 32
    QUERY_VALID_DERIVERS = 33
    OPTIMISE_STORE = 34
    VERIFY_STORE = 35
    BUILD_DERIVATION = 36
    ADD_SIGNATURES = 37
    NAR_FROM_PATH = 38
    ADD_TO_STORE_NAR = 39
    QUERY_MISSING = 40
    QUERY_DERIVATION_OUTPUT_MAP = 41
    REGISTER_DRV_OUTPUT = 42
    QUERY_REALISATION = 43
    ADD_MULTIPLE_TO_STORE = 44
    ADD_BUILD_LOG = 45
    BUILD_PATHS_WITH_RESULTS = 46


def minor(version: int) -> int:
    return version & 0xFF


def major(version: int) -> int:
    return version & 0xFF00


def server_handshake(reader: Reader, writer: Writer) -> int:
    """Exchange greetings; returns the client's protocol version.

    Up to here nothing can be reported to the client: a wrong magic number
    or an unsupported version ends the connection (as Nix's daemon does).
    """
    magic = reader.u64()
    if magic != WORKER_MAGIC_1:
        raise ProtocolError(f"protocol mismatch (client sent magic {magic:#x})")
    writer.u64(WORKER_MAGIC_2).u64(PROTOCOL_VERSION)
    writer.flush()
    version = reader.num(0xFFFF, "protocol version")
    if major(version) != major(PROTOCOL_VERSION) or version < OLDEST_CLIENT:
        raise ProtocolError(f"unsupported client protocol version {version >> 8}.{minor(version)}")
    if minor(version) >= 14 and reader.u64():
        reader.u64()  # obsolete CPU affinity
    if minor(version) >= 11:
        reader.u64()  # obsolete reserveSpace
    if minor(version) >= 33:
        writer.text(f"{__version__} (runner)")
    return version


def write_error(writer: Writer, version: int, message: str, status: int = 1) -> None:
    """`STDERR_ERROR` and the error in the layout the client's version reads."""
    writer.u64(STDERR_ERROR)
    if minor(version) >= 26:
        # type, level (0 = error), name (unused), message, no position, no traces
        writer.text("Error").u64(0).text("Error").text(message).u64(0).u64(0)
    else:
        writer.text(message).u64(status)
