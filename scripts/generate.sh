#!/usr/bin/env bash
# Regenerate generated/ from protos/: Python with grpcio-tools (messages, gRPC stubs, .pyi type stubs) and
# TypeScript with buf and the local protoc-gen-es pinned in generated/typescript/package.json (no remote plugin,
# no network).
# Usage: scripts/generate.sh [OUT_DIR]   (default: generated). The staleness test generates into a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
out="${1:-generated}"
python="$(realpath -s "${PYTHON:-.venv/bin/python}")"
buf="$repo/${BUF:-.tools/node_modules/.bin/buf}"
protoc_gen_es="$repo/generated/typescript/node_modules/.bin/protoc-gen-es"
mkdir -p "$out" && out="$(realpath "$out")"

# ---- Python ----
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

# ---- TypeScript (generated/typescript/{oma,vma,google}; the hand-written sdk/, test/, examples/ stay) ----
ts_out="$out/typescript"
mkdir -p "$ts_out"
rm -rf "$ts_out/oma" "$ts_out/vma" "$ts_out/google"
template() {  # $1: output directory
    printf '{"version":"v2","plugins":[{"local":"%s","out":"%s","opt":["target=ts","import_extension=js"]}]}' \
        "$protoc_gen_es" "$1"
}
"$buf" generate --template "$(template "$ts_out")"
# google.rpc.ErrorInfo (the detail every OMA error carries), from the copy googleapis-common-protos ships: the
# version pinned in pyproject.toml's dev extras, so every machine generates the same file.
deps="$(mktemp -d)"
trap 'rm -rf "$deps"' EXIT
mkdir -p "$deps/google/rpc"
"$python" - "$deps/google/rpc" <<'PY'
import importlib.util, shutil, sys
from pathlib import Path
spec = importlib.util.find_spec("google.rpc.error_details_pb2")
shutil.copy(Path(spec.origin).with_name("error_details.proto"), sys.argv[1])
PY
"$buf" generate "$deps" --template "$(template "$ts_out")"
