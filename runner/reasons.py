"""Every reason code a `RunnerError` may carry: a closed set, one line each.

Tests and scripts match on these codes rather than on the wording of messages, so a
code is part of the interface: `RunnerError` refuses one not listed here, and
tests/test_reasons.py checks that every `reason=` in runner/ is listed and every listed
code is used. To add a code, add one line `NAME = "code", "what it means"` below (keep
the alphabetical order) and run `python -m runner.reasons > docs/reasons.md`.

A `Reason` is a `str` (its code), so `reason="bad-hash"` and `reason=Reason.BAD_HASH`
are the same thing; prefer the member where a typo would otherwise go unnoticed until
run time (sets of codes, comparisons).
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """A reason code (the value) and its one-line meaning (`.meaning`)."""

    _value_: str
    meaning: str

    def __new__(cls, code: str, meaning: str) -> Reason:
        member = str.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    def __str__(self) -> str:  # the code, on every Python (3.11 changed str() of mixins)
        return self._value_

    def __format__(self, spec: str) -> str:
        return format(self._value_, spec)

    BAD_CA = "bad-ca", "a content-address field is malformed or contradicts the path"
    BAD_CACHE_INFO = "bad-cache-info", "a binary cache's nix-cache-info file is malformed"
    BAD_DRV = "bad-drv", "a .drv file is malformed or not what its path promises"
    BAD_FAILURE_RECORD = ("bad-failure-record",
                          "a binary cache's signed failure record is malformed or does not fit")
    BAD_FILE_TYPE = "bad-file-type", "a tree holds something other than files, dirs, symlinks"
    BAD_HASH = "bad-hash", "a hash is malformed, of an unknown algorithm or the wrong size"
    BAD_HISTORY = "bad-history", "the build history database is unreadable or too new"
    BAD_KEY = "bad-key", "a signing key is malformed or its file unreadable"
    BAD_LOG = "bad-log", "a stored build log cannot be read"
    BAD_NAME = "bad-name", "a store path name has characters or a length Nix refuses"
    BAD_NAR = "bad-nar", "a NAR stream is malformed, truncated or cannot be decompressed"
    BAD_NARINFO = "bad-narinfo", "a binary cache's .narinfo is malformed"
    BAD_OWNERSHIP = "bad-ownership", "a file to register belongs to an unexpected user"
    BAD_PATH = "bad-path", "text that should be a store path is not one (syntax, store dir)"
    BAD_ROOT = "bad-root", "a GC root is malformed or cannot be made"
    BAD_SETTING = "bad-setting", "an unknown setting, a bad value, or a malformed config file"
    BAD_SIGNATURE = "bad-signature", "a narinfo signature does not match its contents"
    BAD_URL = "bad-url", "a substituter or remote-executor URL is malformed or unsupported"
    BUILD_FAILED = "build-failed", "a build failed (its builder, its outputs, or a dependency)"
    BUSY = "busy", "another process holds what this operation needs"
    CLOSURE = "closure", "registering a path whose references are not valid"
    CORRUPT_STORE = "corrupt-store", "a store path's contents no longer match its NAR hash"
    CYCLE = "cycle", "paths or derivations that refer to each other"
    DAEMON = "daemon", "the daemon could not be reached or reported an error"
    DB = "db", "the store database cannot be opened or used"
    DB_TOO_NEW = "db-too-new", "the store database has a schema newer than this runner"
    ERROR = "error", "unclassified (the default; prefer a specific code)"
    EXISTS = "exists", "refusing to overwrite a file that exists"
    FETCH_FAILED = "fetch-failed", "a command substituter could not deliver a NAR"
    GIT = "git", "git is missing or failed on a git-tracked input"
    HASH_MISMATCH = "hash-mismatch", "contents do not have the hash that was promised"
    HOOK_EXISTS = "hook-exists", "a pre-commit hook runner did not write is in the way"
    INCOMPLETE_CLOSURE = ("incomplete-closure",
                          "a substitute's references could not be substituted")
    IN_USE = "in-use", "a store path is still referenced and cannot be deleted"
    INPUT = "input", "a spec input cannot be read"
    INTERRUPTED = "interrupted", "the run was interrupted by a signal"
    INVALID_PATH = "invalid-path", "a well-formed store path that is not valid (registered)"
    IO = "io", "a file system operation failed"
    LOCK = "lock", "a lock file cannot be opened or taken"
    MISSING_NAR = "missing-nar", "a binary cache lists a path whose NAR file is missing"
    NO_BUILD_SLOTS = "no-build-slots", "builds are needed but max-jobs is 0 and no remote"
    NO_DEPENDENCY = "no-dependency", "why-depends: the first path does not depend on the second"
    NO_LOG = "no-log", "no build log is stored for this path"
    NO_SPEC = "no-spec", "no spec given and no default spec file found"
    NO_SUBSTITUTE = "no-substitute", "no substituter offered the path"
    NO_SUCCESS = "no-success", "runner why: no recorded success to compare with"
    NOT_A_FILE = "not-a-file", "a file was expected"
    NOT_DRV = "not-drv", "a derivation (.drv store path) was expected"
    NOT_FOUND = "not-found", "a named file, derivation, output or target does not exist"
    NOT_TRUSTED = "not-trusted", "the daemon refuses an operation to an untrusted user"
    PATH_TOO_LONG = "path-too-long", "a path inside a tree is longer than the limit"
    PROTOCOL = "protocol", "the daemon protocol was violated (framing, magic, version)"
    REMOTE_CHECK_FAILED = "remote-check-failed", "runner remote check found a problem"
    REMOTE_ERROR = "remote-error", "the remote executor answered with an error"
    REMOTE_UNAVAILABLE = "remote-unavailable", "the remote executor cannot be reached"
    REMOTE_UNSUPPORTED = "remote-unsupported", "the remote executor cannot run this build"
    ROOTED = "rooted", "a store path is a GC root (or a temporary one) and is kept"
    SANDBOX_NOT_ALLOWED = "sandbox-not-allowed", "a derivation asks to leave a required sandbox"
    SANDBOX_PATH_NOT_ALLOWED = ("sandbox-path-not-allowed",
                                "__sandboxPaths names a path not in allowed-spec-sandbox-paths")
    SANDBOX_SETUP = "sandbox-setup", "the build sandbox could not be set up (not a build failure)"
    SANDBOX_UNAVAILABLE = "sandbox-unavailable", "sandboxing is required but does not work here"
    SIZE_MISMATCH = "size-mismatch", "a NAR does not have the size that was promised"
    SOCKET = "socket", "the daemon cannot listen on its socket"
    SPEC = "spec", "one or more problems in spec files (each FILE:LINE:COL)"
    SPEC_TOO_DEEP = "spec-too-deep", "a spec file nests deeper than the loader allows"
    STORE_MISMATCH = "store-mismatch", "a state dir or binary cache belongs to another store dir"
    SUBSTITUTER_DOWN = "substituter-down", "a substituter cannot be reached"
    TOO_LARGE = "too-large", "a daemon request is larger than allowed"
    UNSAFE_BUILD_DIR = "unsafe-build-dir", "the build directory could be reached by others"
    UNSIGNED = "unsigned", "a substitute is not signed and signatures are required"
    UNSUPPORTED = "unsupported", "an operation this daemon does not support"
    UNTRUSTED_KEY = "untrusted-key", "a substitute is signed only by keys not trusted"
    USAGE = "usage", "the command line is wrong (flags, arguments, their combination)"
    VERIFY_FAILED = "verify-failed", "store verification found problems it did not fix"

    @classmethod
    def check(cls, code: str) -> str:
        """`code` as a plain str if registered; ValueError (naming it) if not."""
        member = cls._value2member_map_.get(code)
        if member is None:
            raise ValueError(f"unregistered reason code {code!r} (add it to runner/reasons.py)")
        return str(member.value)


#: Codes renamed when the set was closed: old code → the code that replaced it.
RENAMED = {
    "bad-config": Reason.BAD_SETTING,
    "bad-remote-url": Reason.BAD_URL,
    "corrupt-nar": Reason.BAD_NAR,
    "daemon-error": Reason.DAEMON,
    "hook": Reason.IO,
    "io-error": Reason.IO,
    "store": Reason.IO,
    "wrong-store-dir": Reason.STORE_MISMATCH,
}


def markdown() -> str:
    """The table of docs/reasons.md."""
    lines = ["# Reason codes", "",
             "<!-- generated by `python -m runner.reasons > docs/reasons.md`; do not edit -->", "",
             "Every `error: …` runner prints comes with a reason code (the `reason` of",
             "`RunnerError`). Scripts and tests match on the",
             "code, never on the wording. The set is closed: runner/reasons.py lists them all.",
             "", "| code | meaning |", "|---|---|"]
    lines += [f"| `{r.value}` | {r.meaning} |" for r in sorted(Reason, key=lambda r: r.value)]
    lines += ["", "Renamed when the set was closed (the old code is no longer used):", ""]
    lines += [f"- `{old}` → `{new.value}`" for old, new in sorted(RENAMED.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
