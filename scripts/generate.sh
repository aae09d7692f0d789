#!/usr/bin/env bash
# Regenerate generated/ from protos/ with grpcio-tools (messages, gRPC stubs, .pyi type stubs).
# Usage: scripts/generate.sh [OUT_DIR]   (default: generated). The staleness test generates into a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-generated}"
python="$(realpath -s "${PYTHON:-.venv/bin/python}")"
mkdir -p "$out" && out="$(realpath "$out")"
rm -rf "$out/oma" "$out/vma"
mapfile -t protos < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
(cd protos && "$python" -m grpc_tools.protoc -I. \
    --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" "${protos[@]}")
# The same files as one descriptor set *with* source info (comments): server reflection serves it, so that
# `grpcurl describe` shows the proto comments (the descriptors embedded in *_pb2.py carry none).
(cd protos && "$python" -m grpc_tools.protoc -I. --include_imports --include_source_info \
    --descriptor_set_out="$out/oma/descriptor_set.binpb" "${protos[@]}")
# Packages so that `from oma.v1 import x_pb2` (what protoc emits) works without rewriting imports.
for dir in $(cd "$out" && find oma vma -type d); do
    printf '"""Generated from protos/%s by scripts/generate.sh; do not edit."""\n' "$dir" > "$out/$dir/__init__.py"
done
