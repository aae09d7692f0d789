#!/usr/bin/env bash
# Install the Debian packages the OMA and its tests drive for real, only when missing (idempotent, fast).
set -euo pipefail
need=()
command -v nbd-server >/dev/null 2>&1 || need+=(nbd-server)
command -v nbdcopy >/dev/null 2>&1 || need+=(libnbd-bin)
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
[ -e /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing Debian packages: ${need[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
