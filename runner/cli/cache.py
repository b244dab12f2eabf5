"""`runner copy`, `runner cache serve`, `runner key generate`: filling, serving and
trusting binary caches."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from runner.cli.args import store_flag
from runner.daemon.store_choice import daemon_socket
from runner.errors import RunnerError
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.store.local_store import LocalStore
    from runner.substituters.serve import StoreSource



def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("copy", help="copy store paths (with their closure) to or from a cache")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="URL", help="binary cache to fill (file:// or http://)")
    where.add_argument("--from", dest="from_", metavar="URL", help="binary cache to fetch from")
    p.add_argument("--sign-key", metavar="FILE", help="secret key to sign what is copied --to")
    p.add_argument("--compression", choices=("xz", "zstd", "none"),
                   help="NAR compression when copying --to (default: xz, or the URL's "
                        "?compression=)")
    p.add_argument("--no-check-sigs", action="store_true",
                   help="with --from: accept paths without a trusted signature")
    p.add_argument("--no-failures", action="store_true",
                   help="with --to: do not publish the failure records of cached failures")
    p.add_argument("--no-logs", action="store_true",
                   help="with --to: do not upload the build logs of the derivations")
    p.add_argument("paths", nargs="+", metavar="PATH|SPEC",
                   help="store paths to copy; with --to also a spec: its valid outputs, "
                        "and the failure records and logs of its derivations")
    store_flag(p)
    p.set_defaults(func=_copy)

    cache = sub.add_parser("cache", help="binary cache tools")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    s = actions.add_parser("serve", help="serve the store or a cache directory over HTTP")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--store", action="store_true", help="serve the local store (default)")
    what.add_argument("dir", nargs="?", metavar="DIR", help="serve this cache directory")
    s.add_argument("--port", type=int, default=5000, help="port (0: any free port)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--sign-key", metavar="FILE", help="sign narinfos on the fly (store only)")
    s.add_argument("--priority", type=int, default=30, help="Priority in nix-cache-info")
    s.add_argument("--writable", action="store_true", help="accept PUT uploads (DIR only)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request")
    s.set_defaults(func=_serve)
    st = actions.add_parser("status", help="health of every substituter: up or down, since "
                            "when, why, next probe, lookups and hits of the last run")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_status)
    r = actions.add_parser("reset", help="forget substituter health records (all, or URL's)")
    r.add_argument("url", nargs="?", metavar="URL", help="only this substituter")
    r.set_defaults(func=_reset)

    key = sub.add_parser("key", help="signing keys for binary caches")
    key_actions = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    g = key_actions.add_parser("generate", help="make an ed25519 key pair (as "
                               "nix-store --generate-binary-cache-key)")
    g.add_argument("name", metavar="NAME", help="key name, e.g. cache.example.org-1")
    g.add_argument("--secret", metavar="FILE", help="write the secret key here (else stdout)")
    g.add_argument("--public", metavar="FILE", help="write the public key here (else stdout)")
    g.set_defaults(func=_generate)


def _copy(args: argparse.Namespace, settings: Settings) -> int:
    from runner.cli.args import store_path_arg
    from runner.store.local_store import open_store

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        return client_cli.copy(args, settings, socket_path)
    with open_store(settings) as store:
        if args.to:
            return _copy_to(args, settings, store)
        paths = [store_path_arg(store, p) for p in args.paths]  # follows ./result
        return _copy_from(args, settings, store, paths)


def _copy_to(args: argparse.Namespace, settings: Settings, store: LocalStore) -> int:
    from runner.substituters.configure import open_transport, parse_url
    from runner.substituters.failure_export import publish_failures, publish_logs
    from runner.substituters.signing import SecretKey
    from runner.substituters.writer import check_cache_info, copy_to_cache, ensure_cache_info

    url, params = parse_url(args.to)
    compression = args.compression or params.get("compression", "xz")
    if compression not in ("xz", "zstd", "none"):
        raise RunnerError(f"'{args.to}': compression must be xz, zstd or none", reason="usage")
    key = SecretKey.load(args.sign_key) if args.sign_key else None
    paths, spec_drvs = _copy_targets(store, args.paths)
    tmp_dir = os.path.join(settings.state_dir, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    transport = open_transport(url)
    check_cache_info(transport, store.store_dir)  # another store dir's cache: nothing written
    written = copy_to_cache(store, paths, transport, compression=compression,
                            sign_key=key, tmp_dir=tmp_dir)
    for path in written:
        print(f"copied '{path}'", file=sys.stderr)
    closure = store.compute_closure(paths) if paths else set()
    drvs = {p for p in closure if p.endswith(".drv")} | spec_drvs
    created = bool(written)

    def first_write() -> None:  # a cache that only gets records or logs is created too
        nonlocal created
        if not created:
            ensure_cache_info(transport, store.store_dir)
            created = True

    failed: list[str] = []
    if not args.no_failures:
        failed = publish_failures(store, settings.state_dir, drvs, transport, key,
                                  first_write)
        for drv in failed:
            print(f"copied failure record of '{drv}'", file=sys.stderr)
        if failed and key is None:
            print("warning: the failure records are not signed (no --sign-key): runner "
                  "ignores them when reading the cache", file=sys.stderr)
    if not args.no_logs:
        derivers = {d for p in closure if (d := store.query_deriver(p))}
        for drv in publish_logs(settings.state_dir, drvs | derivers, transport, skip=failed,
                                before_write=first_write):
            print(f"copied log of '{drv}'", file=sys.stderr)
    # Only a store with this store dir can use the cache (copy_to_cache refused any other).
    print(f"cache '{url}' is for store dir '{store.store_dir}': every machine using it needs "
          f"store-dir = {store.store_dir}", file=sys.stderr)
    return 0


def _copy_targets(store: LocalStore, args: list[str]) -> tuple[list[str], set[str]]:
    """The store paths to copy, and the derivations (with their inputs) of any spec
    among `args`: a spec adds its valid outputs to the paths; its derivations' failure
    records and logs are published without their .drv files."""
    from runner.cli.args import store_path_arg

    paths: list[str] = []
    drvs: set[str] = set()
    for arg in args:
        try:
            paths.append(store_path_arg(store, arg))  # follows ./result
            continue
        except RunnerError as e:
            if e.reason != "bad-path" or not os.path.isfile(arg):
                raise
        from runner.spec.load import load_spec
        from runner.spec.translate import instantiate

        targets = instantiate(load_spec(arg), store)
        roots = [inst.drv_path for inst in targets.values()]
        drvs.update(p for p in store.compute_closure(roots) if p.endswith(".drv"))
        outputs = [p for inst in targets.values() for p in inst.outputs.values()]
        paths.extend(sorted(store.valid_paths(outputs)))
    return paths, drvs


def _copy_from(args: argparse.Namespace, settings: Settings, store: LocalStore,
               paths: list[str]) -> int:
    from runner.substituters.base import SubstituterDecl
    from runner.substituters.configure import open_substituter
    from runner.substituters.substitute import substitute

    settings = settings.with_overrides(substituter_errors="fail")
    if args.no_check_sigs:
        settings = settings.with_overrides(require_sigs=False)
    sub = open_substituter(SubstituterDecl(url=args.from_), settings)
    for path in paths:
        result = substitute(store, path, [sub], settings)
        if not result.ok:
            raise result.error()
        for done in result.substituted:
            print(f"copied '{done}'", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from runner.substituters.serve import StoreSource, make_server
    from runner.substituters.signing import SecretKey

    key = SecretKey.load(args.sign_key) if args.sign_key else None
    if args.dir is not None:
        if key is not None:
            raise RunnerError("--sign-key applies to --store; sign a cache directory when "
                              "filling it (runner copy --to … --sign-key)", reason="usage")
        if not os.path.isdir(args.dir):
            raise RunnerError(f"'{args.dir}' is not a directory", reason="not-found")
        source: StoreSource | str = os.path.abspath(args.dir)
    else:
        if args.writable:
            raise RunnerError("--writable applies to a cache directory, not the store",
                              reason="usage")
        source = StoreSource(settings.store_dir, settings.state_dir, key, args.priority)
    server = make_server(source, host=args.host, port=args.port, writable=args.writable,
                         verbose=args.verbose)
    host, port = server.server_address[:2]
    what = source if isinstance(source, str) else f"store {settings.store_dir}"
    print(f"serving {what} on http://{host!s}:{port} ({_served_store_dir(source)})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0
    finally:
        server.server_close()
    return 0


def _served_store_dir(source: StoreSource | str) -> str:
    """Which store dir the served cache is for: only stores with it can use the cache."""
    if not isinstance(source, str):
        return f"for store dir '{source.store_dir}'"
    from runner.substituters.cache_info import parse

    info_file = os.path.join(source, "nix-cache-info")
    try:
        with open(info_file) as f:
            return f"for store dir '{parse(f.read(), info_file).store_dir}'"
    except FileNotFoundError:
        return "no nix-cache-info yet: the first `runner copy --to` sets its store dir"
    except RunnerError as e:
        return f"unreadable nix-cache-info: {e.message}"
    except (OSError, UnicodeDecodeError) as e:
        return f"unreadable nix-cache-info: {e}"


def _status(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import time

    from runner.substituters.configure import open_health, parse_url
    from runner.substituters.health import Record

    health = open_health(settings)
    try:
        records = {r.url: r for r in health.all()}
    finally:
        health.close()
    configured = [parse_url(u)[0] for u in settings.get("substituters")]
    urls = list(dict.fromkeys([*configured, *sorted(records)]))
    rows = [records.get(u) or Record(u, None, None, 0, None, 0, 0) for u in urls]
    if args.json:
        print(json.dumps([{**r.as_json(), "configured": r.url in configured} for r in rows],
                         indent=2))
        return 0
    if not rows:
        print("no substituters: none configured (setting 'substituters') and none recorded")
        return 0
    now = time.time()
    for r in rows:
        if r.is_down:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.down_since or now))
            wait = max(0, round((r.next_probe or now) - now))
            state = f"down since {since} ({r.last_error}); next probe in {wait} s"
        else:
            state = "up"
        extra = "" if r.url in configured else " (not in your settings)"
        print(f"{r.url}{extra}: {state}; last run: {r.lookups} lookups, {r.hits} hits")
    return 0


def _reset(args: argparse.Namespace, settings: Settings) -> int:
    from runner.substituters.configure import open_health, parse_url

    health = open_health(settings)
    try:
        count = health.reset(parse_url(args.url)[0] if args.url else None)
    finally:
        health.close()
    print(f"forgot {count} substituter health record{'s' if count != 1 else ''}",
          file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from runner.substituters.signing import SecretKey, write_key_file

    secret = SecretKey.generate(args.name)
    public = secret.public_key().to_string()
    if args.secret:
        write_key_file(args.secret, secret.to_string(), secret=True)
    else:
        print(secret.to_string())
    if args.public:
        write_key_file(args.public, public, secret=False)
    else:
        print(public)
    return 0
