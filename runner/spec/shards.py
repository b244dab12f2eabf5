"""`shards: N`: one test derivation split into N that run in parallel, and one that gathers.

`NAME` with `shards: N` becomes `NAME.shard-K-of-N` (K = 1..N), each the original with
`TEST_SHARD_INDEX` / `TEST_TOTAL_SHARDS` (Bazel's names, 0-based index) and
`RUNNER_SHARD_INDEX` / `RUNNER_SHARD_COUNT` (the same values) in its environment, and `NAME`
itself becomes a derivation that gathers them: each of its outputs is a directory holding
every shard's output of that name (`shard-K`, or `shard-K.xml` for a JUnit file), so the
JUnit reader, which reads every `*.xml` below a directory, sees all the shards' cases.
The gathering builder is `/bin/sh` with `cp` from the build PATH: no new tool, nothing
runner has to put in the store.
"""

from __future__ import annotations

from runner.spec.model import DerivationEntry
from runner.spec.yaml_loader import Node

SHARD_ENV = ("TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS", "RUNNER_SHARD_INDEX", "RUNNER_SHARD_COUNT")

# RUNNER_GATHER holds lines `OUTPUT K PATH`; the output's own path is in $OUTPUT.
GATHER_SCRIPT = """set -e
printf '%s\\n' "$RUNNER_GATHER" | while read -r output k from; do
  to=$(printenv "$output")
  mkdir -p "$to"
  if [ -d "$from" ]; then
    cp -r "$from" "$to/shard-$k"
  elif [ "$output" = "$RUNNER_JUNIT_OUTPUT" ]; then
    cp "$from" "$to/shard-$k.xml"
  else
    cp "$from" "$to/shard-$k"
  fi
  chmod -R u+w "$to"
done
echo "gathered $RUNNER_SHARD_COUNT shards"
"""


def shard_key(key: str, k: int, count: int) -> str:
    return f"{key}.shard-{k}-of-{count}"


def expand(derivations: dict[str, DerivationEntry]) -> dict[str, DerivationEntry]:
    """The derivations with every sharded one replaced by its shards and its gatherer."""
    out: dict[str, DerivationEntry] = {}
    for key, entry in derivations.items():
        if entry.shards <= 1:
            out[key] = entry
            continue
        keys = [shard_key(key, k, entry.shards) for k in range(1, entry.shards + 1)]
        for k, skey in enumerate(keys, start=1):
            out[skey] = _shard(entry, skey, k)
        out[key] = _gatherer(entry, tuple(keys))
    return out


def _shard(entry: DerivationEntry, key: str, k: int) -> DerivationEntry:
    name = shard_key(entry.name, k, entry.shards)
    at = entry.pos
    attrs = dict(entry.attrs)
    attrs["name"] = Node(name, at)
    for var, value in zip(SHARD_ENV, (k - 1, entry.shards, k - 1, entry.shards), strict=True):
        attrs[var] = Node(str(value), at)
    return DerivationEntry(key, at, name, entry.outputs, attrs, entry.args, entry.fixed,
                           entry.junit, 1, retries=entry.retries, flaky=entry.flaky)


def _gatherer(entry: DerivationEntry, keys: tuple[str, ...]) -> DerivationEntry:
    at = entry.pos
    attrs: dict[str, Node] = {
        "name": Node(entry.name, at), "system": entry.attrs["system"],
        "builder": Node("/bin/sh", at),
        "PATH": Node("/usr/local/bin:/usr/bin:/bin", at),
        "RUNNER_JUNIT_OUTPUT": Node(entry.junit or "", at),
        "RUNNER_SHARD_COUNT": Node(str(entry.shards), at),
    }
    if "outputs" in entry.attrs:
        attrs["outputs"] = entry.attrs["outputs"]
    args = (Node("-c", at), Node(GATHER_SCRIPT, at))
    return DerivationEntry(entry.key, at, entry.name, entry.outputs, attrs, args, None,
                           entry.junit, 1, keys)
