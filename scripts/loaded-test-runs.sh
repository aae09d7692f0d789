#!/usr/bin/env bash
# `make test` N times in a row while a CPU burner keeps every core busy: flaky tests show up here, not in CI.
#
# Usage: scripts/loaded-test-runs.sh [N] [--out DIR] [--burner-nice K]   (default N=10; logs and results.tsv in DIR)
# The burners are one busy loop per core, at normal priority unless --burner-nice (on a machine others use, so the
# cores stay busy without starving them), started before the first run and ended (by their pids) after the last.
# results.tsv records each run's load average. Exit 0 only if every run passed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10
out=""
burner_nice=0
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out="$2"; shift 2 ;;
    --burner-nice) burner_nice="$2"; shift 2 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) runs="$1"; shift ;;
    esac
done
out="${out:-$(mktemp -d /tmp/loaded-test-runs.XXXXXX)}"
mkdir -p "$out"
burners=()
stop_burners() { for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in $(seq "$(nproc)"); do
    nice -n "$burner_nice" python3 -c 'while True: pass' &
    burners+=($!)
done
echo "burners (one per core): ${burners[*]}; logs in $out"
printf 'run\trc\tseconds\tload\tsummary\n' >"$out/results.tsv"
green=0
for i in $(seq "$runs"); do
    start=$(date +%s)
    set +e
    make test >"$out/run-$i.log" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - start))
    summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$out/run-$i.log" | tail -1 | tr -d '=' | xargs)"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$rc" "$secs" "$load" "$summary" >>"$out/results.tsv"
    echo "run $i/$runs: rc=$rc in ${secs}s: $summary"
    [ "$rc" -eq 0 ] && green=$((green + 1))
done
echo "$green/$runs green under load ($(nproc) burners); $out/results.tsv"
[ "$green" -eq "$runs" ]
