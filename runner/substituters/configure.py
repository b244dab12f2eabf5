"""Turn declared substituters (user settings, then specs) into ready substituters.

Store URLs take Nix-style parameters: `?trusted=1` (signatures not required;
honoured only in the user's own settings), `?timeout=SECONDS`,
`?retries=N` (HTTP), `?priority=N` (instead of the cache's own),
`?compression=xz|zstd|none` (when writing).

A substituter program declared by a spec runs host code as the user, so,
like `?trusted=1` and keys, a spec cannot impose it: it is only run when
its program is in the user's `trusted-substituter-commands`.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.reasons import Reason
from runner.settings import Settings
from runner.substituters.base import Substituter, SubstituterDecl, Warn
from runner.substituters.binary_cache import BinaryCache
from runner.substituters.cache_info import DEFAULT_PRIORITY
from runner.substituters.command import CommandSubstituter
from runner.substituters.health import Health
from runner.substituters.negative_cache import NegativeCache
from runner.substituters.signing import PublicKey
from runner.substituters.transport import FileTransport, HttpTransport, Transport

if TYPE_CHECKING:
    from runner.substituters.http_client import HttpClient

KNOWN_PARAMS = ("trusted", "timeout", "retries", "compression", "priority")


def print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_url(url: str) -> urllib.parse.SplitResult:
    """`urlsplit`, with a malformed host or port as a RunnerError naming the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as e:
        raise RunnerError(f"store URL '{url}' is malformed: {e}", reason="bad-url") from None
    return parts


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split `URL?key=value&…` into the bare URL and its parameters."""
    check_url(url)
    base, _, query = url.partition("?")
    try:
        # Python 3.10's strict parser refuses an empty query; there is nothing to parse.
        params = (dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True))
                  if query else {})
    except ValueError:
        raise RunnerError(f"store URL '{url}' has malformed parameters", reason="bad-url") from None
    unknown = sorted(set(params) - set(KNOWN_PARAMS))
    if unknown:
        raise RunnerError(f"store URL '{url}': unknown parameter '{unknown[0]}' "
                          f"(known: {', '.join(KNOWN_PARAMS)})", reason="bad-url")
    return base, params


def _number(url: str, params: dict[str, str], key: str, default: float) -> float:
    try:
        value = float(params.get(key, default))
    except ValueError:
        value = -1.0
    if value < 0:
        raise RunnerError(f"store URL '{url}': '{key}' must be a non-negative number",
                          reason="bad-url")
    return value


def open_transport(url: str, client: HttpClient | None = None) -> Transport:
    """The transport for a `file://` or `http(s)://` URL (parameters already removed)."""
    parts = check_url(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RunnerError(f"'{url}': file URLs must name a local path (file:///…)",
                              reason="bad-url")
        root = urllib.parse.unquote(parts.path)
        if not root.startswith("/"):
            raise RunnerError(f"'{url}': file URLs need an absolute path", reason="bad-url")
        return FileTransport(url, root.rstrip("/") or "/")
    if parts.scheme in ("http", "https") and parts.hostname:
        return HttpTransport(url, client or _http_client_module().HttpClient())
    raise RunnerError(f"unsupported substituter URL '{url}' (expected file://, http:// or "
                      "https://)", reason="bad-url")


def trusted_keys_for(decl: SubstituterDecl, user_keys: Sequence[str], warn: Warn) -> frozenset[str]:
    """The user's trusted keys, plus the declaration's keys that the user trusts too.

    A spec may say which key signs its cache, but cannot make the user trust
    a key: keys it names that the user does not trust are ignored, loudly.
    """
    user = {k.name: k for k in (PublicKey.parse(t) for t in user_keys)}
    for text in decl.trusted_public_keys:
        try:
            key = PublicKey.parse(text)
        except RunnerError as e:
            raise RunnerError(f"{decl.origin}: substituter '{decl.label}': {e.message}",
                              reason="bad-key") from None
        if user.get(key.name) != key:
            warn(f"{decl.origin}: substituter '{decl.label}': ignoring key '{key.name}', "
                 "which is not in your trusted-public-keys setting")
    return frozenset(k.to_string() for k in user.values())


TRUSTED_COMMANDS = "trusted-substituter-commands"


def trusted_commands(settings: Settings) -> list[str]:
    """The programs the user lets specs run as substituters."""
    return [str(v) for v in settings.strings(TRUSTED_COMMANDS)]


def resolve_program(name: str) -> str | None:
    """The absolute, symlink-free path of a program (`PATH` lookup for a bare name)."""
    found = name if "/" in name else shutil.which(name)
    return os.path.realpath(os.path.abspath(found)) if found else None


def open_substituters(settings: Settings, declared: Sequence[SubstituterDecl] = (), *,
                      warn: Warn = print_warning,
                      trusted_programs: Sequence[str] | None = None) -> list[Substituter]:
    """The user's `substituters` setting, then `declared` (e.g. from specs), without repeats.

    Nothing is contacted here; each substituter connects on first use.
    Returns an empty list when the `substitute` setting is off. A program
    declared by a spec is left out, with a warning, unless it is one of
    `trusted_programs` (default: the `trusted-substituter-commands` setting).
    """
    if not settings.flag("substitute"):
        return []
    if trusted_programs is None:
        trusted_programs = trusted_commands(settings)
    allowed = {p for p in map(resolve_program, trusted_programs) if p is not None}
    decls = [SubstituterDecl(url=u) for u in settings.strings("substituters")]
    decls.extend(declared)
    shared = _Shared(settings)
    result: list[Substituter] = []
    seen: set[str] = set()
    for decl in decls:
        if decl.label in seen:
            continue
        seen.add(decl.label)
        if decl.command and decl.from_spec and resolve_program(decl.command[0]) not in allowed:
            program = resolve_program(decl.command[0]) or decl.command[0]
            warn(f"ignoring substituter program '{program}' declared in {decl.origin}: "
                 f"not in {TRUSTED_COMMANDS}")
            continue
        result.append(open_substituter(decl, settings, warn=warn, shared=shared))
    return result


def _http_client_module() -> ModuleType:
    """`http_client`, imported when an HTTP cache is opened: urllib3 takes ~75 ms to
    import here, which every `runner build` without one paid."""
    from runner.substituters import http_client

    return http_client


class _Shared:
    """What substituters opened together share: HTTP connection pools, the negative cache."""

    def __init__(self, settings: Settings) -> None:
        self.negative = NegativeCache(settings.state_dir,
                                      settings.number("narinfo-cache-negative-ttl"))
        self.health = open_health(settings)
        self.clients: dict[tuple[float, int], HttpClient] = {}

    def client(self, timeout: float, retries: int) -> HttpClient:
        client = self.clients.get((timeout, retries))
        if client is None:
            client = self.clients[timeout, retries] = _http_client_module().HttpClient(
                timeout, retries)
        return client


def open_substituter(decl: SubstituterDecl, settings: Settings, *, warn: Warn = print_warning,
                     shared: _Shared | None = None) -> Substituter:
    """One substituter. The caller decides whether a declared program may run at all
    (`open_substituters` asks `trusted-substituter-commands` for spec-declared ones)."""
    shared = shared or _Shared(settings)
    keys = trusted_keys_for(decl, list(settings.strings("trusted-public-keys")), warn)
    if decl.command is not None:
        return CommandSubstituter(decl.command, settings.store_dir,
                                  os.path.join(settings.state_dir, "tmp"), trusted_keys=keys,
                                  priority=decl.priority if decl.priority is not None
                                  else DEFAULT_PRIORITY)
    try:
        return _open_cache(decl, settings, warn, shared, keys)
    except RunnerError as e:
        if e.reason != Reason.BAD_URL:
            raise
        where = decl.origin if decl.from_spec else "setting 'substituters'"
        raise RunnerError(f"{where}: {e.message}", reason=e.reason) from None


def _open_cache(decl: SubstituterDecl, settings: Settings, warn: Warn, shared: _Shared,
                keys: frozenset[str]) -> Substituter:
    url, params = parse_url(decl.url or "")
    trusted = params.get("trusted") in ("1", "true")
    if trusted and decl.from_spec:
        warn(f"{decl.origin}: substituter '{url}': a spec cannot mark a cache trusted; "
             "signatures are still required")
        trusted = False
    # open_transport makes an HttpTransport exactly for these (or fails on the URL).
    http = urllib.parse.urlsplit(url).scheme in ("http", "https")
    defaults = _http_client_module() if http else None
    timeout = _number(url, params, "timeout", defaults.DEFAULT_TIMEOUT if defaults else 0.0)
    retries = int(_number(url, params, "retries", defaults.DEFAULT_RETRIES if defaults else 0))
    priority = decl.priority
    if "priority" in params:
        priority = int(_number(url, params, "priority", DEFAULT_PRIORITY))
    transport = open_transport(url, shared.client(timeout, retries) if http else None)
    # A file cache is cheap to ask and often freshly written: no negative caching.
    # Likewise, health across runs is for HTTP caches (a missing directory costs nothing).
    return BinaryCache(transport, settings.store_dir, trusted=trusted, trusted_keys=keys,
                       negative=shared.negative if http else None, priority=priority,
                       health=shared.health if http else None)


def open_health(settings: Settings) -> Health:
    return Health(settings.state_dir, settings.number("substituter-down-time"),
                  settings.number("substituter-down-max"))
