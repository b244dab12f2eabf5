"""Every name of the store's on-disk layout, in one place: the bottom of the store floor.

Store dir (`store-dir`):

    <hash>-<name>         store paths
    <path>.lock           a path's lock file (locks.py)
    <path>.check          `build --check -K`: a rebuild that differs, kept to compare
    .links/<base32>       optimise's shared copies, named by their NAR hash
    .link-tmp-*           optimise's temp links, renamed over a file
    .tmp-<pid>-*          temp dirs of adds and repairs (staging.TempDir), and trees
                          set aside to be removed by a thread (trash.py)
    .sandbox-<output>     the staging dir of a sandboxed build
    .runner-state         the state dir (database) this store belongs to

A store path always starts with its 32-character hash, so a name starting with '.'
is runner's, never a path; a suffix proves nothing (`<hash>-foo.lock` may be a store
path, not `<hash>-foo`'s lock): gc checks validity and roots before suffixes.

State dir (`state-dir`): `db/db.sqlite`, `gc.lock`, `gcroots/`, `temproots/`.
"""

from __future__ import annotations

LINKS_DIR = ".links"
TEMP_LINK_PREFIX = ".link-tmp-"  # not ".tmp-": that is the adders' temp dirs
TEMP_DIR_PREFIX = ".tmp-"
SANDBOX_STAGING_PREFIX = ".sandbox-"
LOCK_SUFFIX = ".lock"
CHECK_SUFFIX = ".check"
STATE_MARKER = ".runner-state"

DB_FILE = ("db", "db.sqlite")
GC_LOCK = "gc.lock"
ROOTS_DIR = "gcroots"
TEMP_ROOTS_DIR = "temproots"
