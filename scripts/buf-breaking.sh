#!/usr/bin/env bash
# `buf breaking` against the previous commit's protos, once there is a previous version with protos.
set -euo pipefail
buf="$1"
if ! git rev-parse -q --verify HEAD~1 >/dev/null 2>&1 || [ -z "$(git ls-tree -d HEAD~1 protos 2>/dev/null)" ]; then
    echo "buf breaking: no previous version of protos/ to compare with; skipped"
    exit 0
fi
"$buf" breaking protos --against ".git#ref=HEAD~1,subdir=protos"
echo "buf breaking: no breaking change against HEAD~1"
