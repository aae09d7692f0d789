#!/usr/bin/env bash
# The README's two set-up commands on a machine that has nothing but the basics.
#
# As root: debootstrap a Debian bookworm `--variant=minbase` root with python3, python3-venv, python3-pip, make, git
# and ca-certificates and nothing else; clone this repository's commit under test into it; run `make demo`, then
# `make test` there; check the work tree is still clean; print the time of each step (and write them as JSON).
#
# Everything runs in a private mount namespace (`unshare --mount --propagation private`): /proc, /sys and /dev are
# mounted into the root only there, so they vanish with the namespace, and the root is deleted from outside it,
# after every mount is gone — nothing of the host is ever bound into a directory that is being deleted.
#
# What comes from the machine, read at run time and never written into the repository: the apt mirror (the Debian
# bookworm sources of the host's own apt configuration, or --mirror), DNS (/etc/resolv.conf), and the CA
# certificates the host added locally (/usr/local/share/ca-certificates), which its network may need for TLS; pip
# and npm are told to trust the root's system CA bundle. Services that package scripts would start are not
# started (policy-rc.d), as in any chroot: they would bind the host's default ports.
#
# Usage: sudo scripts/fresh-root-check.sh [--rev REV] [--mirror URL] [--out DIR] [--keep]
#   --rev     commit to test (default HEAD; uncommitted changes are not part of it)
#   --mirror  Debian mirror URL (default: from the host's apt configuration)
#   --out     where logs and results.json go (default: a new directory under /tmp)
#   --keep    keep the root directory afterwards (its path is printed)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(git -C "$here/.." rev-parse --show-toplevel)"
rev=HEAD
mirror=""
out=""
keep=0
inner=""
while [ $# -gt 0 ]; do
    case "$1" in
    --rev) rev="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --inner) inner="$2"; shift 2 ;; # internal: the part that runs inside the private mount namespace
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "fresh-root-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
log() { printf '[fresh-root %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { local ms=$(($(now_ms) - $1)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

# A mirror and suite from the host's apt configuration (apt's own parser, so sources.list and deb822 both work).
host_sources() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(LABEL)' 2>/dev/null | sort -u
}

# ------------------------------------------------------------------------------------------------------------------
# Inside the private mount namespace: build the root, run the two commands, write results.
if [ -n "$inner" ]; then
    root="$inner"
    mount --make-rprivate /
    t0=$(now_ms)
    log "debootstrap bookworm minbase from $mirror into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,make,git,ca-certificates \
        bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 || {
        tail -20 "$out/debootstrap.log" >&2
        exit 1
    }
    t_boot=$(secs_since "$t0")
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
    # apt sources of the root: the same mirror (and the host's security mirror, when it has one).
    {
        echo "deb $mirror bookworm main"
        echo "deb $mirror bookworm-updates main"
        security="$(host_sources | awk '$2 == "bookworm-security" {print $1; exit}')"
        [ -n "$security" ] && echo "deb $security bookworm-security main"
    } >"$root/etc/apt/sources.list"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    git clone -q --no-local "$repo" "$root/work/oma"
    git -C "$root/work/oma" checkout -q --detach "$(git -C "$repo" rev-parse "$rev")"
    if [ -d "$repo/../shared" ]; then cp -r "$repo/../shared" "$root/work/shared"; fi

    in_root() {
        chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
            NPM_CONFIG_CAFILE=/etc/ssl/certs/ca-certificates.crt CI=true \
            bash -c "cd /work/oma && $1" </dev/null
    }
    step() { # name command: run it, log to $out/name.log, print and record the seconds
        local name="$1" cmd="$2" s rc
        log "$name: $cmd"
        s=$(now_ms)
        set +e
        in_root "$cmd" >"$out/$name.log" 2>&1
        rc=$?
        set -e
        local secs
        secs=$(secs_since "$s")
        printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >>"$out/steps.tsv"
        log "$name: rc=$rc in $secs s (log: $out/$name.log)"
        [ "$rc" -eq 0 ] || tail -30 "$out/$name.log" >&2
        return 0
    }
    printf 'debootstrap\t0\t%s\n' "$t_boot" >"$out/steps.tsv"
    step make-demo "make demo"
    step make-test "make test"
    status="$(in_root 'git status --porcelain --untracked-files=normal' 2>&1)"
    printf '%s' "$status" >"$out/git-status.txt"
    # Whatever the two commands left running in the root (a defect if anything): recorded, then ended.
    left=()
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] || continue
        left+=("${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)")
    done
    printf '%s\n' "${left[@]}" >"$out/left-running.txt"
    for entry in "${left[@]}"; do kill -KILL "${entry%% *}" 2>/dev/null || true; done
    exit 0
fi

# ------------------------------------------------------------------------------------------------------------------
# Outside: checks, the namespace, the report, the clean-up.
[ "$(id -u)" -eq 0 ] || { echo "fresh-root-check: run as root (debootstrap and chroot need it)" >&2; exit 2; }
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if [ -z "$mirror" ]; then
    mirror="$(host_sources | awk '$2 == "bookworm" && $3 == "Debian" {print $1; exit}')"
    [ -n "$mirror" ] || {
        echo "fresh-root-check: the host's apt configuration has no Debian bookworm source; pass --mirror URL" >&2
        exit 2
    }
fi
git -C "$repo" rev-parse -q --verify "$rev^{commit}" >/dev/null || { echo "fresh-root-check: no commit $rev" >&2; exit 2; }
commit="$(git -C "$repo" rev-parse "$rev")"
out="${out:-$(mktemp -d /tmp/fresh-root-check.XXXXXX)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
root="$(mktemp -d /var/tmp/oma-fresh-root.XXXXXX)"
chmod 755 "$root" # it becomes the root's /, which every user must be able to traverse (mktemp makes it 0700)
log "commit $commit; root $root; logs in $out"

cleanup() {
    if findmnt -rn -o TARGET | grep -q "^$root"; then
        log "mounts under $root are still visible here; not deleting it"
        return
    fi
    if [ "$keep" -eq 1 ]; then log "kept $root"; else rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT
export repo rev mirror out
unshare --mount --propagation private -- bash "$0" --inner "$root" --rev "$rev" --mirror "$mirror" --out "$out"

python3 - "$out" "$commit" <<'EOF'
import json, sys
from pathlib import Path
out, commit = Path(sys.argv[1]), sys.argv[2]
steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
status = (out / "git-status.txt").read_text().strip()
left = [line for line in (out / "left-running.txt").read_text().splitlines() if line.strip()]
result = {
    "commit": commit,
    "steps": [{"step": s, "rc": int(rc), "seconds": float(secs)} for s, rc, secs in steps],
    "work_tree_clean": not status,
    "git_status": status,
    "left_running": left,
}
(out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"\nfresh root (Debian bookworm minbase), commit {commit[:12]}")
print(f"{'step':<12} {'rc':>3} {'seconds':>8}")
for s in result["steps"]:
    print(f"{s['step']:<12} {s['rc']:>3} {s['seconds']:>8.1f}")
print(f"work tree clean after both: {'yes' if not status else 'NO: ' + status}")
print(f"processes left running: {len(left)}" + ("".join(f"\n  {line}" for line in left)))
print(f"results: {out}/results.json")
ok = all(s["rc"] == 0 for s in result["steps"]) and not status and not left
sys.exit(0 if ok else 1)
EOF
