#!/usr/bin/env bash
# Install the Debian/Ubuntu packages a target needs, only those missing (idempotent; a few checks when set up).
#
# Usage: scripts/system-deps.sh demo|test
#   demo  what `make demo` drives for real: Python's venv module, nbdkit, libnbd's Python binding
#   test  everything the suite drives too: libnbd-bin (nbdcopy/nbdinfo), PostgreSQL, Node.js and npm (buf, the
#         TypeScript SDK: Node 18.14 or newer), Chromium and libatomic1 (the dashboard's browser tests drive it
#         through Playwright's driver)
set -euo pipefail
profile="${1:-test}"
case "$profile" in demo | test) ;; *)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac

python="$(command -v python3.11 || command -v python3 || true)"
need=()
[ -n "$python" ] || need+=(python3)
# `python3 -m venv` needs ensurepip, which Debian ships apart as python3-venv.
[ -n "$python" ] && ! "$python" -c 'import ensurepip' >/dev/null 2>&1 && need+=(python3-venv)
command -v nbdkit >/dev/null 2>&1 || need+=(nbdkit)
[ -e /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)
if [ "$profile" = test ]; then
    command -v nbdcopy >/dev/null 2>&1 || need+=(libnbd-bin)
    command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
    command -v node >/dev/null 2>&1 || need+=(nodejs)
    command -v npm >/dev/null 2>&1 || need+=(npm)
    [ -x /usr/bin/chromium ] || need+=(chromium)
    # Playwright's driver is a Node binary of its own; it links libatomic, which a minimal Debian lacks.
    compgen -G '/usr/lib/*/libatomic.so.1' >/dev/null || compgen -G '/lib/*/libatomic.so.1' >/dev/null || need+=(libatomic1)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing packages for make $profile: ${need[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
