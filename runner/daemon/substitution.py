"""Substitutes for the daemon's clients: ensure-path, the substitutable-path queries and
query-valid-paths' "substitute first", with the connection's substituters (the daemon's
`substituters` setting, narrowed by what the client asked for; see options.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.substituters.base import Substituter, Warn
from runner.substituters.configure import open_substituters
from runner.substituters.narinfo import NarInfo
from runner.substituters.substitute import find_offer, substitute

if TYPE_CHECKING:
    from runner.daemon.session import Session


def _substituters(s: Session) -> list[Substituter]:
    key = tuple(s.settings.strings("substituters")), s.settings.flag("substitute")
    if s.substituter_cache is None or s.substituter_cache[0] != key:
        s.substituter_cache = (key, open_substituters(s.settings, warn=_warner(s)))
    return s.substituter_cache[1]


def _warner(s: Session) -> Warn:
    return lambda text: s.log(f"warning: {text}")


def offers(s: Session, paths: Iterable[str]) -> dict[str, NarInfo]:
    """What a trusted substituter would deliver, for each of `paths` it has."""
    subs = _substituters(s)
    found: dict[str, NarInfo] = {}
    if not subs:
        return found
    for path in paths:
        info = find_offer(s.store, path, subs, s.settings, warn=_warner(s))
        if info is not None:
            found[path] = info
    return found


def ensure_valid(s: Session, paths: Iterable[str], *, strict: bool = True) -> None:
    """Substitute every invalid path of `paths`; with `strict`, fail for one that no
    substituter delivers."""
    for path in sorted(set(paths) - s.store.valid_paths(paths)):
        subs = _substituters(s)
        if subs:
            result = substitute(s.store, path, subs, s.settings, warn=_warner(s))
            if result.ok:
                continue
            if strict and result.rejections:
                raise result.error()
        if strict:
            raise RunnerError(f"path '{path}' is not valid and no substituter has it",
                              reason="invalid-path")
