#!/usr/bin/env bash
# Tear down the two-host test lab. Idempotent: exits 0 when already down.
# Keeps $LAB_DIR/ssh (keys); removes per-host data unless LAB_KEEP_DATA=1.
set -euo pipefail

LAB_DIR="${LAB_DIR:-/var/lib/livemig-lab}"
LAB_KEEP_DATA="${LAB_KEEP_DATA:-0}"
BR=lmbr0
HOSTS=(hv1 hv2)
SSH_DIR="$LAB_DIR/ssh"

log() { echo "lab-down: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }

# shellcheck source=lab/processes.sh
. "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

# kill_pids PID...: TERM, wait up to ~3 s, then KILL whatever is left.
kill_pids() {
    local pid left
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 30); do
        left=()
        for pid in "$@"; do alive "$pid" && left+=("$pid"); done
        [ "${#left[@]}" -eq 0 ] && return 0
        sleep 0.1
    done
    log "killing ${left[*]} with SIGKILL"
    kill -KILL "${left[@]}" 2>/dev/null || true
}

# Pids of processes inside netns $1 (optionally only those whose comm matches $2).
ns_pids() {
    local pid comm
    [ -e "/run/netns/$1" ] || return 0
    for pid in $(ip netns pids "$1" 2>/dev/null); do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        [[ "$comm" =~ ${2:-.} ]] && echo "$pid"
    done
    return 0
}

stop_host() {
    local h=$1 pf="$SSH_DIR/$1/sshd.pid" pid
    # 1. QEMU processes started inside the host (e.g. by the collection).
    # shellcheck disable=SC2046
    kill_pids $(ns_pids "$h" '^qemu')
    # 2. The host's sshd, by pidfile.
    if [ -f "$pf" ]; then
        pid=$(cat "$pf")
        if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]; then
            kill_pids "$pid"
        fi
        rm -f "$pf"
    fi
    # 3. Leftovers in the namespace (ssh sessions, helpers the tests started),
    #    so the namespace really goes away.
    # shellcheck disable=SC2046
    kill_pids $(ns_pids "$h")
    # Close a controller-side ssh master for this host, if any.
    if [ -f "$LAB_DIR/ssh_config" ]; then
        ssh -F "$LAB_DIR/ssh_config" -O exit "$h" >/dev/null 2>&1 </dev/null || true
        ssh -F "$LAB_DIR/ssh_config" -O exit "198.18.0.${h#hv}" >/dev/null 2>&1 </dev/null || true
    fi
    ip link del "lm-$h" 2>/dev/null || true
    ip link del "lmm-$h" 2>/dev/null || true
    [ -e "/run/netns/$h" ] && ip netns del "$h"
    return 0
}

for h in "${HOSTS[@]}"; do stop_host "$h"; done

ip link show "$BR" >/dev/null 2>&1 && ip link del "$BR"
ip link show lmbr1 >/dev/null 2>&1 && ip link del lmbr1
if command -v iptables >/dev/null 2>&1; then
    while iptables -D FORWARD -i "$BR" -o "$BR" -m comment --comment livemig-lab -j ACCEPT 2>/dev/null; do :; done
fi

if [ "$LAB_KEEP_DATA" != 1 ]; then
    case "$LAB_DIR" in
        ""|/) log "refusing to clean LAB_DIR='$LAB_DIR'"; exit 1 ;;
    esac
    rm -rf "${LAB_DIR:?}/hv1" "${LAB_DIR:?}/hv2" "${LAB_DIR:?}/shared"
fi
echo "livemig lab down"
