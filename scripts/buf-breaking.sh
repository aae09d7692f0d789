#!/usr/bin/env bash
# `buf breaking` against the last release: the newest tag v* before HEAD (or, in a clone without tags, HEAD~1).
#
# Semver decides what may break: within a release line (same major.minor while the major is 0, same major after)
# nothing may; a new line may break the contract, and the CHANGELOG's top section must then say so under
# "### Breaking" (the list buf prints is the checklist).
set -euo pipefail
buf="$1"
cd "$(dirname "$0")/.."

line_of() {  # the release line of a version: "0.3" for 0.3.x, "1" for 1.x.y
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    if [ "$major" = 0 ]; then echo "0.$minor"; else echo "$major"; fi
}

version="$(tr -d '[:space:]' < VERSION.txt)"
if tag="$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null)"; then
    base="$tag"
    base_version="${tag#v}"
    ref="tag=$tag"
elif git rev-parse -q --verify HEAD~1 >/dev/null 2>&1 && [ -n "$(git ls-tree -d HEAD~1 protos 2>/dev/null)" ]; then
    base="HEAD~1"
    base_version="$(git show HEAD~1:VERSION.txt | tr -d '[:space:]')"
    ref="ref=HEAD~1"
else
    echo "buf breaking: no earlier release or commit with protos/ to compare with; skipped"
    exit 0
fi

if [ "$(line_of "$version")" = "$(line_of "$base_version")" ]; then
    "$buf" breaking protos --against ".git#$ref,subdir=protos"
    echo "buf breaking: no breaking change against $base ($base_version)"
    exit 0
fi

if report="$("$buf" breaking protos --against ".git#$ref,subdir=protos" 2>&1)"; then
    echo "buf breaking: $version starts a new release line over $base ($base_version); nothing breaks"
    exit 0
fi
top_section="$(awk '/^## /{n++} n==1' CHANGELOG.md)"
if ! grep -q '^### Breaking' <<<"$top_section"; then
    echo "$report"
    echo "buf breaking: $version breaks the contract of $base ($base_version) but CHANGELOG.md's top section has no"
    echo "'### Breaking' list; describe every change above there."
    exit 1
fi
echo "buf breaking: $version is a new release line over $base ($base_version); its breaking changes (listed in"
echo "CHANGELOG.md under Breaking):"
sed 's/^/  /' <<<"$report"
