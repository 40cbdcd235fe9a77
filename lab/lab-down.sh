#!/usr/bin/env bash
# Tear down the two-host test lab. Idempotent: exits 0 when already down.
# Keeps $LAB_DIR/ssh (keys); removes per-host data unless LAB_KEEP_DATA=1.
# The block devices of lab/blockdev.sh always go.
set -euo pipefail

LAB_DIR="${LAB_DIR:-/var/lib/livemig-lab}"
LAB_KEEP_DATA="${LAB_KEEP_DATA:-0}"
BR=lmbr0
BRIDGES=("$BR" lmbr1 lmbr2)
HOSTS=(hv1 hv2)
CLIENT_NS=lmclient
SSH_DIR="$LAB_DIR/ssh"
BLK_DIR=livemig-blk

log() { echo "lab-down: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }

# shellcheck source=lab/processes.sh
. "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

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

# stop_daemon PIDFILE COMM: stop the daemon a pidfile names, if it is still that daemon.
stop_daemon() {
    local pid
    if pid=$(pidfile_pid "$1" "$2"); then kill_pids "$pid"; fi
    rm -f "$1"
}

# stop_ns NS: kill what is left in netns NS (ssh sessions, helpers the tests started), so it really goes away.
stop_ns() {
    # shellcheck disable=SC2046
    kill_pids $(ns_pids "$1")
}

stop_host() {
    local h=$1
    # 1. QEMU processes started inside the host (e.g. by the collection).
    # shellcheck disable=SC2046
    kill_pids $(ns_pids "$h" '^qemu')
    # 2. The host's sshd, by pidfile.
    stop_daemon "$SSH_DIR/$h/sshd.pid" sshd
    # 3. Leftovers.
    stop_ns "$h"
    # Close a controller-side ssh master for this host, if any.
    if [ -f "$LAB_DIR/ssh_config" ]; then
        ssh -F "$LAB_DIR/ssh_config" -O exit "$h" >/dev/null 2>&1 </dev/null || true
        ssh -F "$LAB_DIR/ssh_config" -O exit "198.18.0.${h#hv}" >/dev/null 2>&1 </dev/null || true
    fi
    ip link del "lm-$h" 2>/dev/null || true
    ip link del "lmm-$h" 2>/dev/null || true
    ip link del "lmg-$h" 2>/dev/null || true
    [ -e "/run/netns/$h" ] && ip netns del "$h"
    return 0
}

# The client namespace: its DHCP server by pidfile, then whatever else runs there (the tests' clients).
stop_client() {
    stop_daemon "$LAB_DIR/dnsmasq.pid" dnsmasq
    stop_ns "$CLIENT_NS"
    ip link del lmg-client 2>/dev/null || true
    [ -e "/run/netns/$CLIENT_NS" ] && ip netns del "$CLIENT_NS"
    return 0
}

# The hosts' libvirtd (lab/libvirt.sh), if it ever ran: before the hosts' other processes.
LAB_DIR="$LAB_DIR" "$(dirname "${BASH_SOURCE[0]}")/libvirt.sh" down >/dev/null || log "lab/libvirt.sh down failed"
for h in "${HOSTS[@]}"; do stop_host "$h"; done
stop_client

for br in "${BRIDGES[@]}"; do
    ip link show "$br" >/dev/null 2>&1 && ip link del "$br"
    if command -v iptables >/dev/null 2>&1; then
        while iptables -D FORWARD -i "$br" -o "$br" -m comment --comment livemig-lab -j ACCEPT 2>/dev/null; do :; done
    fi
done

# Block devices (the hosts' QEMUs are gone), then the directories lab-up.sh made for them.
LAB_DIR="$LAB_DIR" "$(dirname "${BASH_SOURCE[0]}")/blockdev.sh" remove --all
for d in "$BLK_DIR" qemu; do
    for h in "${HOSTS[@]}"; do
        rm -rf "/etc/netns/$h/$d"
    done
    rmdir "/etc/$d" 2>/dev/null || true   # only when empty: never what others put there
done
for h in "${HOSTS[@]}"; do
    rmdir "/etc/netns/$h" 2>/dev/null || true
done
rmdir /etc/netns 2>/dev/null || true

if [ "$LAB_KEEP_DATA" != 1 ]; then
    case "$LAB_DIR" in
        ""|/) log "refusing to clean LAB_DIR='$LAB_DIR'"; exit 1 ;;
    esac
    rm -rf "${LAB_DIR:?}/hv1" "${LAB_DIR:?}/hv2" "${LAB_DIR:?}/shared" "${LAB_DIR:?}/dnsmasq.leases"
fi
echo "livemig lab down"
