#!/usr/bin/env bash
# `buf breaking` against the last release and against the previous commit.
#
# The last release is the newest tag v* before HEAD; in a clone without tags, the last commit before VERSION.txt took
# its current value (the state the previous release shipped). Semver decides what may break: within a release line
# (same major.minor while the major is 0, same major after) nothing may; a new line may break the contract, and the
# CHANGELOG's top section must then say so under "### Breaking" (the list buf prints is the checklist). The previous
# commit (HEAD~1) is held to the same rule, so a break cannot slip in between releases either.
set -euo pipefail
buf="$1"
cd "$(dirname "$0")/.."

line_of() {  # the release line of a version: "0.3" for 0.3.x, "1" for 1.x.y
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    if [ "$major" = 0 ]; then echo "0.$minor"; else echo "$major"; fi
}

version_at() { git show "$1:VERSION.txt" 2>/dev/null | tr -d '[:space:]'; }

version="$(tr -d '[:space:]' < VERSION.txt)"

last_release() {  # prints "<ref> <label> <version>" of the last release, or nothing
    local tag commit
    if tag="$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null)"; then
        echo "tag=$tag $tag ${tag#v}"
        return
    fi
    for commit in $(git rev-list HEAD -- VERSION.txt); do
        if [ "$(version_at "$commit")" = "$version" ] && git rev-parse -q --verify "$commit~1" >/dev/null &&
            [ "$(version_at "$commit~1")" != "$version" ] && [ -n "$(git ls-tree -d "$commit~1" protos)" ]; then
            local base
            base="$(git rev-parse "$commit~1")"
            echo "ref=$base release-$(version_at "$base")@${base:0:7} $(version_at "$base")"
            return
        fi
    done
}

compare() {  # $1: buf ref, $2: label, $3: its version
    local ref="$1" base="$2" base_version="$3" report top_section
    if [ "$(line_of "$version")" = "$(line_of "$base_version")" ]; then
        "$buf" breaking protos --against ".git#$ref,subdir=protos"
        echo "buf breaking: no breaking change against $base ($base_version)"
        return 0
    fi
    if report="$("$buf" breaking protos --against ".git#$ref,subdir=protos" 2>&1)"; then
        echo "buf breaking: $version starts a new release line over $base ($base_version); nothing breaks"
        return 0
    fi
    top_section="$(awk '/^## /{n++} n==1' CHANGELOG.md)"
    if ! grep -q '^### Breaking' <<<"$top_section"; then
        echo "$report"
        echo "buf breaking: $version breaks the contract of $base ($base_version) but CHANGELOG.md's top section has"
        echo "no '### Breaking' list; describe every change above there."
        return 1
    fi
    echo "buf breaking: $version is a new release line over $base ($base_version); its breaking changes (listed in"
    echo "CHANGELOG.md under Breaking):"
    sed 's/^/  /' <<<"$report"
}

checked=0
release="$(last_release)"
if [ -n "$release" ]; then
    read -r ref label base_version <<<"$release"
    compare "$ref" "$label" "$base_version"
    checked=1
fi
if git rev-parse -q --verify HEAD~1 >/dev/null 2>&1 && [ -n "$(git ls-tree -d HEAD~1 protos 2>/dev/null)" ]; then
    # Against the previous commit its own version counts: only the commit that starts a new line may break.
    compare "ref=HEAD~1" "HEAD~1" "$(version_at HEAD~1)"
    checked=1
fi
if [ "$checked" = 0 ]; then
    echo "buf breaking: no earlier release or commit with protos/ to compare with; skipped"
fi
