"""Why `--dry-run` will not use a binary cache: one line per cache and reason.

A real build warns as it goes (a cache for another store dir, a cache that is
down, each refused substitute); a dry run asks the same questions and sums the
answers up, so `these 2 derivations will be built` comes with its reasons."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

from runner.errors import RunnerError
from runner.substituters.base import Read, Substituter
from runner.substituters.narinfo import NarInfo
from runner.substituters.signing import parse_signature
from runner.substituters.substitute import Rejection


class Watched:
    """A substituter that remembers what it was asked and how it failed."""

    def __init__(self, inner: Substituter) -> None:
        self.inner = inner
        self.name = inner.name
        self.trusted = inner.trusted
        self.trusted_keys = inner.trusted_keys
        self.error: RunnerError | None = None  # why it could not answer (down, store dir)
        self.missing: list[str] = []  # paths it does not have
        self.infos: dict[str, NarInfo] = {}

    @property
    def priority(self) -> int:
        try:
            return self.inner.priority
        except RunnerError as e:
            self.error = self.error or e
            raise

    def query(self, path: str) -> NarInfo | None:
        try:
            info = self.inner.query(path)
        except RunnerError as e:
            if e.reason != "bad-narinfo":  # a refused answer, reported as a rejection
                self.error = self.error or e
            raise
        if info is None:
            self.missing.append(path)
        else:
            self.infos[path] = info
        return info

    def fetch(self, info: NarInfo) -> AbstractContextManager[Read]:
        return self.inner.fetch(info)

    def report_down(self, message: str) -> bool:
        return self.inner.report_down(message)

    @property
    def is_down(self) -> bool:
        return self.inner.is_down


class CacheWatch:
    """The substituters of one dry run, watched; `note` each lookup's refusals."""

    def __init__(self, substituters: Iterable[Substituter]) -> None:
        self.caches = [Watched(s) for s in substituters]
        self.refused: dict[str, dict[str, set[str]]] = {}  # cache -> reason -> paths

    @property
    def substituters(self) -> list[Substituter]:
        return list(self.caches)

    def note(self, path: str, rejections: Iterable[Rejection]) -> None:
        for r in rejections:
            self.refused.setdefault(r.substituter, {}).setdefault(r.reason, set()).add(path)

    def lines(self, not_used: set[str]) -> list[str]:
        """For each cache, each reason it will not deliver a path of `not_used` (what
        the plan builds): down or for another store dir, refused substitutes, not found."""
        lines: list[str] = []
        for cache in self.caches:
            if cache.error is not None:
                lines.append(f"  {cache.name}: {_unusable(cache.name, cache.error)}")
                continue
            per_reason = [(paths & not_used, _refusal(reason, cache, paths & not_used))
                          for reason, paths in sorted(self.refused.get(cache.name, {}).items())]
            per_reason.append((set(cache.missing) & not_used, "not found"))
            lines += [f"  {cache.name}: {_paths(len(paths))} {text}"
                      for paths, text in per_reason if paths]
        return ["binary caches that will not be used:", *lines] if lines else []


def _paths(count: int) -> str:
    return "1 path" if count == 1 else f"{count} paths"


def _unusable(name: str, error: RunnerError) -> str:
    if error.reason == "wrong-store-dir":
        text = error.message.removeprefix(f"binary cache '{name}' is ")
        return f"{text} (every machine sharing a cache needs the same store-dir)"
    known = f"cache {name} is down "  # found down by an earlier run (health records)
    if error.message.startswith(known):
        return "down " + error.message.removeprefix(known)
    return f"down ({error.message})"


def _refusal(reason: str, cache: Watched, paths: set[str]) -> str:
    if reason == "unsigned":
        return "not signed (require-sigs is on; see trusted-public-keys)"
    if reason == "untrusted-key":
        names = sorted({parsed[0] for p in paths if p in cache.infos
                        for parsed in map(parse_signature, cache.infos[p].sigs)
                        if parsed is not None})
        shown = ", ".join(f"'{n}'" for n in names)
        return f"signed only by keys you do not trust ({shown}; see trusted-public-keys)"
    if reason == "bad-signature":
        return "with a signature that does not match its contents"
    if reason == "bad-narinfo":
        return "with an unreadable .narinfo"
    return f"refused ({reason})"
