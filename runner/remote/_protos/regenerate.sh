#!/usr/bin/env bash
# Regenerates the vendored REAPI v2 stubs in this directory (see README.md).
# Usage: runner/remote/_protos/regenerate.sh [BUILDSTREAM_WHEEL]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wheel="${1:-}"
if [ -z "$wheel" ]; then
    pip download --no-deps buildstream==2.8.1 -d "$work/dl" >/dev/null
    wheel="$(ls "$work"/dl/buildstream-2.8.1-*.whl)"
fi
python -m zipfile -e "$wheel" "$work/whl"
src="$work/whl/buildstream/_protos"
protos=(
    build/bazel/remote/execution/v2/remote_execution.proto
    build/bazel/semver/semver.proto
    google/bytestream/bytestream.proto
    google/longrunning/operations.proto
    google/rpc/status.proto
    google/api/annotations.proto
    google/api/http.proto
)
find "$here" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
(cd "$src" && python -m grpc_tools.protoc -I. --python_out="$here" --pyi_out="$here" \
    --grpc_python_out="$here" "${protos[@]}")
for p in "${protos[@]}"; do
    mkdir -p "$here/proto/$(dirname "$p")" && cp "$src/$p" "$here/proto/$p"
done
# Generated modules import each other as top-level packages (`build.bazel…`,
# `google.rpc…`); point those imports at this package instead.
find "$here/build" "$here/google" -name '*.py*' -print0 | xargs -0 sed -i -E \
    's/^(from|import) (build|google\.(api|bytestream|longrunning|rpc))([. ])/\1 runner.remote._protos.\2\4/'
find "$here/build" "$here/google" -type d -exec touch {}/__init__.py \;
# Files without services only hold a version check.
find "$here/build" "$here/google" -name "*_pb2_grpc.py" -print0 | xargs -0 grep -L Stub | xargs -r rm
