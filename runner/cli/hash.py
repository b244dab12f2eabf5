"""`runner hash path|file`: what `nix-hash` computes, in the same encodings."""

from __future__ import annotations

import argparse
import os

from runner.errors import RunnerError
from runner.settings import Settings

ALGOS = ("md5", "sha1", "sha256", "sha512")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("hash", help="hash files or file trees as Nix does")
    actions = group.add_subparsers(dest="hash_command", metavar="MODE", required=True)
    for mode, help_text in (
        ("path", "hash the NAR serialisation of each path (nix-hash)"),
        ("file", "hash the contents of each file (nix-hash --flat)"),
    ):
        p = actions.add_parser(mode, help=help_text)
        p.add_argument("paths", nargs="+", metavar="PATH", help="files to hash")
        p.add_argument("--type", default="sha256", choices=ALGOS, help="hash algorithm")
        enc = p.add_mutually_exclusive_group()
        for flag in ("base16", "base32", "base64", "sri"):
            enc.add_argument(f"--{flag}", dest="encoding", action="store_const", const=flag,
                             help=f"print the hash in {flag}")
        p.set_defaults(func=_run, mode=mode, encoding="base16")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from runner.store import hashes, nar

    for path in args.paths:
        if not os.path.lexists(path):
            raise RunnerError(f"path '{path}' does not exist", reason="not-found")
        if args.mode == "file":
            # Any readable file, pipes too (`<(…)`), as `nix hash file`; not a directory.
            if os.path.isdir(path):
                raise RunnerError(f"'{path}' is a directory, not a file", reason="not-a-file")
            try:
                h = hashes.hash_file(args.type, path)
            except OSError as e:
                raise RunnerError(f"cannot read '{path}': {e.strerror}", reason="io") from None
        else:
            h = nar.hash_path(path, algo=args.type)[0]
        print(h.to_string(args.encoding, prefix=False))
    return 0
