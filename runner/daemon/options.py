"""set-options: the client's build settings for this connection.

The fixed fields (keep-failed, keep-going, fallback, verbosity, max-jobs,
max-silent-time, cores, substitute) apply to everyone, as in Nix. The
name/value overrides apply as given for trusted users; untrusted users may
set only the harmless ones (Nix's list: the build timeout) and narrow the
substituters to ones the daemon already uses. Everything else is ignored
with a warning to the client, so that a client's own nix.conf does not make
every connection fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from runner.daemon.wire import MAX_COUNT, Reader
from runner.errors import RunnerError
from runner.settings import BY_NAME, Settings

# Nix's names for settings runner calls differently.
_ALIASES = {"build-timeout": "timeout", "build-max-silent-time": "max-silent-time",
            "build-cores": "cores", "build-max-jobs": "max-jobs",
            "build-fallback": "fallback", "build-use-substitutes": "substitute"}
_UNTRUSTED_OK = {"timeout"}
# Nix settings with no runner counterpart that are harmless to drop silently.
_IGNORED = {"ssh-auth-sock", "connect-timeout", "builders", "build-repeat",
            "experimental-features", "show-trace", "system-features"}


@dataclass
class ClientOptions:
    keep_failed: bool = False
    keep_going: bool = False
    fallback: bool = False
    verbosity: int = 3  # Nix's lvlInfo
    max_jobs: int = 1
    max_silent_time: int = 0
    cores: int = 0
    substitute: bool = True
    overrides: dict[str, str] = field(default_factory=dict)

    def apply(self, settings: Settings, *, trusted: bool, warn: Callable[[str], None]
              ) -> Settings:
        values: dict[str, object] = {
            "keep-failed": self.keep_failed, "keep-going": self.keep_going,
            "fallback": self.fallback, "max-jobs": self.max_jobs,
            "max-silent-time": self.max_silent_time, "cores": self.cores,
            "substitute": self.substitute,
        }
        for raw_name, text in self.overrides.items():
            name = _ALIASES.get(raw_name, raw_name)
            if name in _IGNORED:
                continue
            if name == "substituters" and not trusted:
                allowed = set(settings.strings("substituters"))
                wanted = text.split()
                for url in wanted:
                    if url not in allowed:
                        warn(f"warning: ignoring untrusted substituter '{url}'")
                values[name] = [u for u in wanted if u in allowed]
                continue
            setting = BY_NAME.get(name)
            if setting is None:
                continue  # a Nix setting runner does not have
            if not trusted and name not in _UNTRUSTED_OK:
                warn(f"warning: ignoring the client-specified setting '{raw_name}', because "
                     "it is a restricted setting and you are not a trusted user")
                continue
            if name == "sandbox":
                text = {"true": "on", "false": "off"}.get(text.strip(), text)
            try:
                values[name] = setting.parse(text)
            except RunnerError as e:
                warn(f"warning: {e.message}")
        return settings.with_overrides(**{k.replace("-", "_"): v for k, v in values.items()})


def read_options(r: Reader, minor: int) -> ClientOptions:
    o = ClientOptions()
    o.keep_failed = r.flag()
    o.keep_going = r.flag()
    o.fallback = r.flag()
    o.verbosity = r.num(0xFFFF, "verbosity")
    o.max_jobs = r.num(1 << 20, "max-jobs")
    o.max_silent_time = r.num(1 << 40, "max-silent-time")
    r.u64()  # obsolete useBuildHook
    r.u64()  # verboseBuild as a verbosity level
    r.u64()  # obsolete logType
    r.u64()  # obsolete printBuildTrace
    o.cores = r.num(1 << 20, "cores")
    o.substitute = r.flag()
    if minor >= 12:
        count = r.num(MAX_COUNT, "option count")
        for _ in range(count):
            name = r.text()
            o.overrides[name] = r.text()
    return o
