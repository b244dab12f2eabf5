"""Substitution: get a valid store path from the first substituter that has it.

Substituters are asked by priority (lower first, Nix's `Priority` from
`nix-cache-info` unless the declaration sets one; equal priorities keep
their declared order, as Nix's stable sort does). For each: ask for the
path's info; check that it is signed by a trusted key (or content-addressed,
or the substituter trusted) before downloading anything; substitute its references first, so the
closure invariant holds; then, under the path lock, stream the NAR through
decompression and hashing into a temp dir in the store, check hash and
size, canonicalise, rename into place and register. Any failure rejects
this substituter's offer with a message naming it, and the next one is
tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.canonicalise import canonicalise, remove_tree, rename_tree
from runner.store.hashes import Hash
from runner.store.locks import PathLocks
from runner.store.path_info import PathInfo
from runner.store.staging import TempDir, replace_tree
from runner.substituters import content_address
from runner.substituters.base import Read, Store, Substituter, Warn
from runner.substituters.cache_info import DEFAULT_PRIORITY
from runner.substituters.configure import print_warning
from runner.substituters.health import KnownDown
from runner.substituters.narinfo import NarInfo
from runner.substituters.signing import count_valid_signatures, parse_public_keys, parse_signature

_PATH_MAX = 4096  # Linux's, counting the final NUL

# Outcomes. "no-substitute": nobody has it (build it); "failed": someone had
# it but every offer was rejected; "incomplete-closure": a reference failed.
SUBSTITUTED, VALID, NO_SUBSTITUTE, FAILED, INCOMPLETE = (
    "substituted", "valid", "no-substitute", "failed", "incomplete-closure")


@dataclass(frozen=True)
class Rejection:
    substituter: str
    reason: str  # a RunnerError reason: "unsigned", "untrusted-key", "hash-mismatch", …
    message: str


@dataclass(frozen=True)
class SubstituteResult:
    path: str
    status: str
    substituter: str | None = None  # who delivered it
    rejections: tuple[Rejection, ...] = field(default=())
    substituted: tuple[str, ...] = ()  # every path made valid, references first

    @property
    def ok(self) -> bool:
        return self.status in (SUBSTITUTED, VALID)

    def describe(self) -> str:
        if self.ok:
            return f"'{self.path}' is valid"
        if not self.rejections:
            return f"no substituter has '{self.path}'"
        return "\n".join(r.message for r in self.rejections)

    def error(self) -> RunnerError:
        reason = self.rejections[0].reason if self.rejections else "no-substitute"
        return RunnerError(f"cannot substitute '{self.path}':\n{self.describe()}", reason=reason)


def substitute(store: Store, path: str, substituters: list[Substituter], settings: Settings, *,
               warn: Warn = print_warning, repair: bool = False,
               on_fetch: Callable[[str, str], None] | None = None) -> SubstituteResult:
    """Make `path` valid from the first substituter that can deliver it (blocking).

    With `repair`, a valid `path` (presumably corrupt) is fetched again and
    replaces the one on disk once verified. Safe to call from several threads
    at once. Raises RunnerError only when a substituter is down and
    `substituter-errors` is `fail`. `on_fetch(path, substituter)` is called as each
    download starts (the `substitution-started` event).
    """
    return _Substitution(store, substituters, settings, warn, repair=path if repair else None,
                         on_fetch=on_fetch).run(path)


def find_offer(store: Store, path: str, substituters: list[Substituter], settings: Settings, *,
               warn: Warn = print_warning,
               rejections: list[Rejection] | None = None) -> NarInfo | None:
    """The info of the first substituter that has `path` and is trusted for it, without
    downloading anything (what `--dry-run` reports as "will be fetched"). Offers refused
    on the way are added to `rejections`."""
    found = [] if rejections is None else rejections
    offers = _Substitution(store, substituters, settings, warn).offers(path, found)
    return next((info for _, info in offers), None)


class _Substitution:
    def __init__(self, store: Store, substituters: list[Substituter], settings: Settings,
                 warn: Warn, *, repair: str | None = None,
                 on_fetch: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.on_fetch = on_fetch
        self.repair = repair  # the one path to fetch again although valid
        self.require_sigs = bool(settings.get("require-sigs"))
        self.fail_on_errors = settings.get("substituter-errors") == "fail"
        self.warn = warn
        self.done: list[str] = []
        self.substituters = self._by_priority(substituters)

    def _by_priority(self, substituters: list[Substituter]) -> list[Substituter]:
        """Stable sort by priority. A cache's priority is in its nix-cache-info, fetched once
        per run (as Nix opens every substituter first); one that cannot say is down."""
        keyed: list[tuple[int, int, Substituter]] = []
        for i, sub in enumerate(substituters):
            priority = DEFAULT_PRIORITY
            if not sub.is_down:
                try:
                    priority = sub.priority
                except RunnerError as e:
                    self._down(sub, e)
            keyed.append((priority, i, sub))
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [sub for _, _, sub in keyed]

    def offers(self, path: str, rejections: list[Rejection]
               ) -> Iterator[tuple[Substituter, NarInfo]]:
        """Each substituter's info on `path` that may be used, by priority. An offer that
        cannot be trusted, or a narinfo that cannot be read, is added to `rejections`;
        a substituter that fails to answer is marked down."""
        for sub in self.substituters:
            if sub.is_down:
                continue
            try:
                info = sub.query(path)
            except RunnerError as e:
                if e.reason == "bad-narinfo":
                    rejections.append(Rejection(sub.name, e.reason, f"{sub.name}: {e.message}"))
                else:
                    self._down(sub, e)
                continue
            if info is None:
                continue
            problem = self._check_trust(sub, info)
            if problem is not None:
                rejections.append(problem)
                continue
            yield sub, info

    def run(self, path: str) -> SubstituteResult:
        if path != self.repair and self.store.is_valid(path):
            return SubstituteResult(path, VALID)
        rejections: list[Rejection] = []
        for sub, info in self.offers(path, rejections):
            for ref in sorted(info.references - {path}):
                sub_result = self.run(ref)
                if not sub_result.ok:
                    rejections.extend(sub_result.rejections)
                    rejections.append(Rejection(
                        sub.name, "incomplete-closure",
                        f"{sub.name}: cannot substitute '{path}': its reference '{ref}' "
                        "could not be substituted"))
                    return SubstituteResult(path, INCOMPLETE, None, tuple(rejections),
                                            tuple(self.done))
            try:
                self._install(sub, info)
            except RunnerError as e:
                if e.reason == "missing-nar":
                    # The cache lost the file: as if it never had the path (Nix's
                    # SubstituteGone), not a rejection that needs --fallback.
                    self.warn(e.message)
                    continue
                if e.reason == "substituter-down":
                    self._down(sub, e)
                rejections.append(Rejection(
                    sub.name, e.reason, f"{sub.name}: rejected '{path}': {e.message}"))
                continue
            return SubstituteResult(path, SUBSTITUTED, sub.name, tuple(rejections),
                                    tuple(self.done))
        status = FAILED if rejections else NO_SUBSTITUTE
        return SubstituteResult(path, status, None, tuple(rejections), tuple(self.done))

    def _down(self, sub: Substituter, e: RunnerError) -> None:
        message = f"substituter '{sub.name}' is unusable, skipping it: {e.message}"
        if isinstance(e, KnownDown):  # found down by an earlier run: the message says it all
            message = e.message
        if self.fail_on_errors:
            raise RunnerError(message.replace(", skipping it", ""), reason=e.reason) from None
        if sub.report_down(message):
            self.warn(message)

    def _check_trust(self, sub: Substituter, info: NarInfo) -> Rejection | None:
        if not self.require_sigs or sub.trusted:
            return None
        if content_address.vouches_for_path(info, self.store.store_dir):
            return None
        keys = parse_public_keys(sub.trusted_keys)
        if count_valid_signatures(info.fingerprint(), info.sigs, keys):
            return None
        names = sorted({p[0] for p in map(parse_signature, info.sigs) if p is not None})
        if not info.sigs:
            reason, why = "unsigned", "it is not signed"
        elif not set(names) & set(keys):
            shown = ", ".join(f"'{n}'" for n in names) or "malformed signatures"
            reason, why = "untrusted-key", f"it is signed only by keys you do not trust ({shown})"
        else:
            reason, why = "bad-signature", "its signature does not match its contents"
        return Rejection(sub.name, reason, f"{sub.name}: rejected '{info.path}': {why} "
                         "(require-sigs is on; see trusted-public-keys)")

    def _install(self, sub: Substituter, info: NarInfo) -> None:
        path = info.path
        with PathLocks([path]):
            repairing = path == self.repair and self.store.is_valid(path)
            if self.store.is_valid(path) and not repairing:
                return
            if not repairing:
                remove_tree(path)  # a leftover of an interrupted attempt is never valid
            with TempDir(self.store.store_dir) as tmp:
                staged = os.path.join(tmp.path, "x")
                if self.on_fetch is not None:
                    self.on_fetch(path, sub.name)
                try:
                    with sub.fetch(info) as read:
                        nar_hash, nar_size = _unpack_verified(read, staged, info)
                    content_address.check_content(info, staged)
                except BaseException:
                    # Still ours and writable: removed by descriptor, whatever its depth.
                    with contextlib.suppress(OSError):
                        remove_tree(staged)
                    raise
                try:
                    canonicalise(staged)
                    if repairing:
                        replace_tree(staged, path)
                    else:
                        rename_tree(staged, path)
                except OSError as e:
                    raise RunnerError(f"cannot move '{path}' into place: {e.strerror}",
                                      reason="io") from None
            try:
                self.store.register_valid_paths([PathInfo(
                    path, nar_hash, nar_size, info.references, info.deriver, 0, info.ca)])
            except BaseException:
                if not repairing:
                    remove_tree(path)
                raise
        self.done.append(path)


def _unpack_verified(read: Read, dest: str, info: NarInfo) -> tuple[Hash, int]:
    """Restore the NAR at `dest`; insist it had exactly the announced hash and size and
    nothing after it. Returns the hash and size of the bytes the parser consumed: the
    NAR of what was written, which is what gets registered."""
    hasher = hashlib.new(info.nar_hash.algo)
    size = 0

    def counted(n: int) -> bytes:
        nonlocal size
        data = read(n)
        size += len(data)
        if size > info.nar_size:
            raise RunnerError(f"NAR is larger than the {info.nar_size} bytes announced",
                              reason="size-mismatch")
        hasher.update(data)
        return data

    # Paths inside must stay under PATH_MAX once in place (Nix fails on them too).
    room = _PATH_MAX - 1 - len(os.fsencode(info.path))
    try:
        nar.restore(counted, dest, max_rel=room)
        if read(1):  # not `counted`: the parser's bytes alone are hashed
            raise RunnerError(f"data after the end of the NAR (the NAR is {size} bytes)",
                              reason="corrupt-nar")
    except RunnerError as e:
        if e.reason in ("size-mismatch", "hash-mismatch", "corrupt-nar", "substituter-down",
                        "fetch-failed", "path-too-long", "io"):
            raise
        raise RunnerError(f"corrupt NAR: {e.message}", reason="corrupt-nar") from None
    if size != info.nar_size:
        raise RunnerError(f"NAR has {size} bytes, but {info.nar_size} were announced",
                          reason="size-mismatch")
    got = Hash(info.nar_hash.algo, hasher.digest())
    if got != info.nar_hash:
        raise RunnerError(f"NAR hash mismatch: expected {info.nar_hash}, got {got}",
                          reason="hash-mismatch")
    return got, size
