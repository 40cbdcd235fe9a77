#!/usr/bin/env bash
# Bring up the two-host test lab: network namespaces hv1/hv2 on bridge lmbr0,
# each running its own sshd, a guest network (bridge lmguest in each host, joined
# by bridge lmbr2) with the client namespace lmclient and its DHCP server, then
# prepare both hosts with the playbook
# livemig.qemu.prepare (role livemig.qemu.hypervisor: a venv per host, the
# image/run/state directories). Idempotent: re-running on a lab that is up
# converges to the same state and exits 0.
#
# Environment:
#   LAB_DIR                   the lab's state (default /var/lib/livemig-lab)
#   LAB_VENV                  the controller venv with ansible-playbook and pip (default <repo>/.venv)
#   LAB_WHEEL_DIR             wheels of requirements-host.txt for the hosts, which have no internet; filled with
#                             pip download from this (root) namespace (default $LAB_DIR/wheels)
#   LIVEMIG_COLLECTIONS_PATH  where livemig.qemu is installed (default: <repo>/collections, a link to the repo)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB_DIR="${LAB_DIR:-/var/lib/livemig-lab}"
LAB_VENV="${LAB_VENV:-$REPO/.venv}"
LAB_WHEEL_DIR="${LAB_WHEEL_DIR:-$LAB_DIR/wheels}"
BR=lmbr0
BR_ADDR=198.18.0.254/24
HOSTS=(hv1 hv2)
SSH_DIR="$LAB_DIR/ssh"

log() { echo "lab-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

host_ip() { echo "198.18.0.${1#hv}"; }
# The migration network is a second link per host (bridge lmbr1), so that a
# fault test can cut or slow it while Ansible still reaches the host over eth0.
MIG_BR=lmbr1
mig_ip() { echo "198.18.0.10${1#hv}"; }
# The guest network: a bridge lmguest in each host (VM specs say `bridge: lmguest`), each with an uplink
# (lmguest-up <-> lmg-hvN) to the root namespace's bridge lmbr2, the "top of rack" switch that joins them at layer
# 2. The client namespace lmclient sits on lmbr2 and serves DHCP. No address of the lab's own on any bridge.
GUEST_BR=lmguest
GUEST_UPLINK=lmguest-up
TOR_BR=lmbr2
CLIENT_NS=lmclient
CLIENT_ADDR=198.19.0.254/24
# Its bridges forget a MAC after 30 s instead of 300 s: a move without announce-self recovers within 30 s.
AGEING_CS=3000
# Fixed, locally administered bridge MACs (taps coming and going never change them): lmbr2 ...:00, lmguest ...:0N.
guest_br_mac() { printf '02:6c:6d:00:02:%02x' "${1#hv}"; }
# shellcheck disable=SC2054  # the commas belong to dnsmasq's options
DNSMASQ_ARGS=(--conf-file=/dev/null --port=0 --no-resolv --no-hosts --bind-interfaces --interface=eth0
    --dhcp-range=198.19.0.100,198.19.0.199,255.255.255.0,12h --dhcp-authoritative
    --dhcp-option=option:router --dhcp-option=option:dns-server
    --dhcp-leasefile="$LAB_DIR/dnsmasq.leases" --pid-file="$LAB_DIR/dnsmasq.pid"
    --log-facility="$LAB_DIR/dnsmasq.log" --log-dhcp --user=root)
# Inside a host's namespace /etc/livemig-blk is /etc/netns/<host>/livemig-blk (bind-mounted by ip netns exec),
# where lab/blockdev.sh puts the host's own loop devices; /etc/qemu is the host's own too (empty: a test may put a
# firmware descriptor there that only that host sees).
BLK_DIR=livemig-blk
HOST_ETC_DIRS=("$BLK_DIR" qemu)

# shellcheck source=lab/processes.sh
. "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

# Write stdin to $1 only when the content differs; returns 0 if it changed.
write_if_changed() {
    local dst=$1 tmp
    tmp=$(mktemp "$dst.XXXXXX")
    cat >"$tmp"
    if [ -f "$dst" ] && cmp -s "$tmp" "$dst"; then
        rm -f "$tmp"
        return 1
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dst"
    return 0
}

# The lab's tools, and the packages the hypervisor role installs apart from QEMU (scripts/setup.sh brings QEMU 10):
# the hosts share this machine's filesystem but have no internet, so apt must find them installed.
ensure_packages() {
    local missing=0 c p
    for c in /usr/sbin/sshd ssh ssh-keygen ip tc ping /usr/sbin/dnsmasq; do
        command -v "$c" >/dev/null 2>&1 || missing=1
    done
    for p in python3-venv python3-packaging ovmf; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    local pkgs=(openssh-server openssh-client iproute2 iputils-ping dnsmasq-base python3-venv python3-packaging ovmf)
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${pkgs[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y "${pkgs[@]}" >/dev/null; }
}

# The hosts' own directories (venv, images, run, state) come from the hypervisor role.
ensure_dirs() {
    local h
    for h in "${HOSTS[@]}"; do
        mkdir -p "$SSH_DIR/$h"
    done
    mkdir -p "$LAB_DIR/shared"
    chmod 0700 "$SSH_DIR"
    mkdir -p /run/sshd && chmod 0755 /run/sshd   # sshd privilege separation dir
    # Before anything runs `ip netns exec <host>`: the mount point in the root ns, and each host's directory.
    local d
    for d in "${HOST_ETC_DIRS[@]}"; do
        mkdir -p "/etc/$d"
        for h in "${HOSTS[@]}"; do
            mkdir -p "/etc/netns/$h/$d"
        done
    done
}

ensure_keys() {
    local h
    [ -f "$SSH_DIR/id_ed25519" ] ||
        ssh-keygen -q -t ed25519 -N '' -C livemig-lab-controller -f "$SSH_DIR/id_ed25519"
    write_if_changed "$SSH_DIR/authorized_keys" <"$SSH_DIR/id_ed25519.pub" || true
    for h in "${HOSTS[@]}"; do
        [ -f "$SSH_DIR/$h/ssh_host_ed25519_key" ] ||
            ssh-keygen -q -t ed25519 -N '' -C "livemig-lab-$h" -f "$SSH_DIR/$h/ssh_host_ed25519_key"
    done
}

# in_ns NS CMD...: run CMD in network namespace NS, or in this (root) one when NS is empty.
in_ns() {
    local ns=$1
    shift
    if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# ensure_veth DEV NS PEER: a veth pair, DEV here and PEER in netns NS; made again when DEV is missing.
ensure_veth() {
    ip link show "$1" >/dev/null 2>&1 && return 0
    ip -n "$2" link del "$3" 2>/dev/null || true
    ip link add "$1" type veth peer name "$3" netns "$2"
}

# ensure_addr NS DEV ADDR/LEN
ensure_addr() {
    ip -n "$1" -4 addr show dev "$2" | grep -qF "inet $3 " || ip -n "$1" addr add "$3" dev "$2"
}

# No IPv6 on the guest network's links (no link-local address, DAD or router solicitation of the lab's own).
# Call it before the link goes up. Ignored where the kernel has no IPv6.
no_ipv6() { in_ns "$1" sysctl -q -e -w "net.ipv6.conf.$2.disable_ipv6=1" >/dev/null; }

# ensure_guest_bridge NS BRIDGE MAC: a bridge of the guest network, in netns NS (empty: the root ns).
ensure_guest_bridge() {
    local ns=$1 br=$2 mac=$3
    in_ns "$ns" ip link show "$br" >/dev/null 2>&1 || in_ns "$ns" ip link add "$br" type bridge
    in_ns "$ns" ip link set "$br" type bridge stp_state 0 forward_delay 0 ageing_time "$AGEING_CS"
    in_ns "$ns" ip link show "$br" | grep -qF "link/ether $mac " || in_ns "$ns" ip link set "$br" address "$mac"
    no_ipv6 "$ns" "$br"
    in_ns "$ns" ip link set "$br" up
}

ensure_guest_network() {
    local h
    ensure_guest_bridge "" "$TOR_BR" "$(guest_br_mac 0)"
    for h in "${HOSTS[@]}"; do
        ensure_guest_bridge "$h" "$GUEST_BR" "$(guest_br_mac "$h")"
        ensure_veth "lmg-$h" "$h" "$GUEST_UPLINK"
        no_ipv6 "" "lmg-$h"
        no_ipv6 "$h" "$GUEST_UPLINK"
        ip link set "lmg-$h" master "$TOR_BR" up
        ip -n "$h" link set "$GUEST_UPLINK" master "$GUEST_BR" up
    done
    [ -e "/run/netns/$CLIENT_NS" ] || ip netns add "$CLIENT_NS"
    ensure_veth lmg-client "$CLIENT_NS" eth0
    no_ipv6 "" lmg-client
    no_ipv6 "$CLIENT_NS" eth0
    ip link set lmg-client master "$TOR_BR" up
    ip -n "$CLIENT_NS" link set lo up
    ensure_addr "$CLIENT_NS" eth0 "$CLIENT_ADDR"
    ip -n "$CLIENT_NS" link set eth0 up
}

ensure_migration_link() {
    local h=$1 peer
    ensure_veth "lmm-$h" "$h" mig0
    ip link set "lmm-$h" master "$MIG_BR" up
    ensure_addr "$h" mig0 "$(mig_ip "$h")/32"
    ip -n "$h" link set mig0 up
    for peer in "${HOSTS[@]}"; do
        [ "$peer" = "$h" ] && continue
        ip -n "$h" route replace "$(mig_ip "$peer")/32" dev mig0
    done
}

ensure_network() {
    ip link show "$MIG_BR" >/dev/null 2>&1 || ip link add "$MIG_BR" type bridge stp_state 0 forward_delay 0
    ip link set "$MIG_BR" up
    local h br
    if ! ip link show "$BR" >/dev/null 2>&1; then
        ip link add "$BR" type bridge stp_state 0 forward_delay 0
    fi
    ip -4 addr show dev "$BR" | grep -qF "inet $BR_ADDR " || ip addr add "$BR_ADDR" dev "$BR"
    ip link set "$BR" up

    for h in "${HOSTS[@]}"; do
        [ -e "/run/netns/$h" ] || ip netns add "$h"
        ensure_veth "lm-$h" "$h" eth0
        ip link set "lm-$h" master "$BR" up
        ip -n "$h" link set lo up
        ensure_addr "$h" eth0 "$(host_ip "$h")/24"
        ip -n "$h" link set eth0 up
        ensure_migration_link "$h"
    done
    ensure_guest_network

    # With br_netfilter loaded and bridge-nf-call-iptables=1, bridged frames
    # traverse the root ns iptables FORWARD chain. If that chain could drop
    # them, accept intra-bridge traffic explicitly (removed by lab-down).
    if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] &&
        command -v iptables >/dev/null 2>&1 &&
        [ "$(iptables -S FORWARD 2>/dev/null | grep -vc '^-P FORWARD ACCEPT$')" != 0 ]; then
        for br in "$BR" "$MIG_BR" "$TOR_BR"; do
            iptables -C FORWARD -i "$br" -o "$br" -m comment --comment livemig-lab -j ACCEPT 2>/dev/null ||
                iptables -I FORWARD -i "$br" -o "$br" -m comment --comment livemig-lab -j ACCEPT
        done
    fi
}

sshd_config() {
    local h=$1
    cat <<EOF
# Generated by livemig lab/lab-up.sh for lab host $h -- do not edit.
ListenAddress $(host_ip "$h"):22
AddressFamily inet
HostKey $SSH_DIR/$h/ssh_host_ed25519_key
PidFile $SSH_DIR/$h/sshd.pid
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 64
MaxStartups 64:30:128
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
}

# sees_host_dirs PID HOST: PID sees each /etc/netns/HOST/<dir> at /etc/<dir> (it was started after those
# directories existed, by `ip netns exec HOST`). /proc/PID/root resolves the path in PID's mount namespace.
sees_host_dirs() {
    local d
    for d in "${HOST_ETC_DIRS[@]}"; do
        [ "$(stat -c %d:%i "/proc/$1/root/etc/$d" 2>/dev/null)" = "$(stat -c %d:%i "/etc/netns/$2/$d")" ] || return 1
    done
}

ensure_sshd() {
    local h=$1 cfg="$SSH_DIR/$1/sshd_config" changed=0 pid
    sshd_config "$h" | write_if_changed "$cfg" && changed=1
    /usr/sbin/sshd -t -f "$cfg" || die "invalid $cfg"
    if pid=$(pidfile_pid "$SSH_DIR/$h/sshd.pid" sshd "$h"); then
        if sees_host_dirs "$pid" "$h"; then
            if [ "$changed" = 1 ]; then
                log "$h: sshd config changed, reloading"
                kill -HUP "$pid"
            fi
            return 0
        fi
        log "$h: sshd was started before /etc/netns/$h/{${HOST_ETC_DIRS[*]}} existed, restarting it"
        kill_pids "$pid"
    fi
    rm -f "$SSH_DIR/$h/sshd.pid"
    # sshd daemonizes; it keeps the netns (and the private mount ns that
    # `ip netns exec` sets up) after this script exits. A private UTS ns
    # gives the host its own hostname (hv1/hv2) for ssh sessions.
    # shellcheck disable=SC2016  # $1..$3 are expanded by the inner sh, from the arguments after the script
    ip netns exec "$h" unshare --uts -- sh -c 'hostname "$1" && exec /usr/sbin/sshd -f "$2" -E "$3"' \
        sshd-"$h" "$h" "$cfg" "$SSH_DIR/$h/sshd.log" </dev/null 9>&-
}

# dnsmasq in the client namespace, the guest network's DHCP server (no DNS). Restarted when dead or when its
# options differ from DNSMASQ_ARGS.
ensure_dnsmasq() {
    local pf="$LAB_DIR/dnsmasq.pid" pid
    if pid=$(pidfile_pid "$pf" dnsmasq "$CLIENT_NS"); then
        [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -n +2)" = "$(printf '%s\n' "${DNSMASQ_ARGS[@]}")" ] && return 0
        log "dnsmasq's options changed, restarting it"
        kill_pids "$pid"
    fi
    rm -f "$pf"
    ip netns exec "$CLIENT_NS" dnsmasq "${DNSMASQ_ARGS[@]}" </dev/null 9>&- ||
        die "dnsmasq did not start in $CLIENT_NS; see $LAB_DIR/dnsmasq.log"
}

control_path() {
    # Unix socket paths are limited to 107 bytes; %C expands to 40 chars
    # (plus ssh's temporary suffix while creating the socket).
    if [ $((${#SSH_DIR} + 4 + 40 + 20)) -le 107 ]; then
        echo "$SSH_DIR/cm-%C"
    else
        echo "/tmp/livemig-lab-cm-%C"
    fi
}

write_ssh_config() {
    local h
    {
        echo "# Generated by livemig lab/lab-up.sh -- use with: ssh -F $LAB_DIR/ssh_config hv1"
        for h in "${HOSTS[@]}"; do
            printf 'Host %s %s\n    HostName %s\n' "$h" "$(host_ip "$h")" "$(host_ip "$h")"
        done
        cat <<EOF
Host *
    User root
    IdentityFile $SSH_DIR/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ServerAliveInterval 5
    ServerAliveCountMax 3
    ControlMaster auto
    ControlPersist 60s
    ControlPath $(control_path)
EOF
    } | write_if_changed "$LAB_DIR/ssh_config" || true
}

write_inventory() {
    local h
    {
        cat <<EOF
# Generated by livemig lab/lab-up.sh (LAB_DIR=$LAB_DIR) -- do not edit.
# VMs (livemig_vms) go in a separate inventory file passed with another -i.
all:
  children:
    hypervisors:
      vars:
        ansible_user: root
        ansible_ssh_private_key_file: "$SSH_DIR/id_ed25519"
        # Keep-alives: a host that drops off the network fails its task in about 15 s instead of hanging.
        ansible_ssh_common_args: '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ServerAliveInterval=5 -o ServerAliveCountMax=3'
        ansible_ssh_timeout: 10
        # The hosts have no internet and share this machine's packages (livemig.qemu.prepare finds them installed)
        # and filesystem: one venv per host, so that two pip runs never share one.
        livemig_hypervisor_apt_update_cache: false
        livemig_hypervisor_pip_wheel_dir: "$LAB_WHEEL_DIR"
        # The lab's CA, on this controller; each host's certificates in its own directory (the hosts share one
        # filesystem, where /etc/livemig/tls would be one directory for both).
        livemig_tls_ca_dir: "$LAB_DIR/tls-ca"
      hosts:
EOF
        for h in "${HOSTS[@]}"; do
            cat <<EOF
        $h:
          ansible_host: $(host_ip "$h")
          livemig_hypervisor_venv: "$LAB_DIR/$h/venv"
          ansible_python_interpreter: "$LAB_DIR/$h/venv/bin/python"
          livemig_image_dir: "$LAB_DIR/$h/images"
          livemig_run_dir: "$LAB_DIR/$h/run"
          livemig_state_dir: "$LAB_DIR/$h/state"
          livemig_shared_dir: "$LAB_DIR/shared"
          livemig_migration_address: $(mig_ip "$h")
          livemig_tls_dir: "$LAB_DIR/$h/tls"
EOF
        done
    } | write_if_changed "$LAB_DIR/inventory.yml" || true
}

wait_ssh() {
    local h ip deadline=$((SECONDS + 20))
    for h in "${HOSTS[@]}"; do
        ip=$(host_ip "$h")
        # No control master here: keep no background ssh tied to our stdio.
        until ssh -F "$LAB_DIR/ssh_config" -o ControlMaster=no -o ControlPath=none \
            -o BatchMode=yes -o ConnectTimeout=2 "$ip" true </dev/null 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || die "ssh to $h ($ip) not ready after 20s; see $SSH_DIR/$h/sshd.log"
            sleep 0.5
        done
    done
}

# Wheels of the host requirements, downloaded again only when requirements-host.txt changes.
ensure_wheels() {
    local stamp="$LAB_WHEEL_DIR/.requirements.sha256" wanted
    wanted=$(sha256sum "$REPO/requirements-host.txt" | cut -d' ' -f1)
    [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && return 0
    [ -x "$LAB_VENV/bin/python" ] || die "no Python in LAB_VENV=$LAB_VENV (run scripts/setup.sh, or set LAB_VENV)"
    log "downloading the host requirements into $LAB_WHEEL_DIR"
    mkdir -p "$LAB_WHEEL_DIR"
    "$LAB_VENV/bin/python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        -d "$LAB_WHEEL_DIR" -r "$REPO/requirements-host.txt" ||
        die "pip download of $REPO/requirements-host.txt failed (the hosts need these wheels)"
    echo "$wanted" >"$stamp"
}

# The collection the way the test harness finds it: LIVEMIG_COLLECTIONS_PATH (the installed tarball in CI), else
# <repo>/collections with a link to this work tree.
collections_path() {
    if [ -n "${LIVEMIG_COLLECTIONS_PATH:-}" ]; then
        echo "$LIVEMIG_COLLECTIONS_PATH"
        return 0
    fi
    local link="$REPO/collections/ansible_collections/livemig/qemu"
    if [ ! -e "$link" ]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn "$REPO" "$link"
    fi
    echo "$REPO/collections"
}

prepare_hosts() {
    local log_file="$LAB_DIR/prepare.log"
    [ -x "$LAB_VENV/bin/ansible-playbook" ] ||
        die "no ansible-playbook in LAB_VENV=$LAB_VENV (run scripts/setup.sh, or set LAB_VENV)"
    if ! ANSIBLE_COLLECTIONS_PATH=$(collections_path) ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_PIPELINING=True \
        ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_CALLBACK_RESULT_FORMAT=json ANSIBLE_NOCOLOR=1 \
        "$LAB_VENV/bin/ansible-playbook" -i "$LAB_DIR/inventory.yml" livemig.qemu.prepare </dev/null >"$log_file" 2>&1 9>&-
    then
        tail -n 30 "$log_file" >&2
        die "preparing the hosts failed; see $log_file"
    fi
    # The role's report: one line per host.
    awk '/^ok: \[/ { host = $2 } /^ *"msg": "QEMU / { sub(/^ *"msg": "/, ""); sub(/"$/, ""); print "lab-up: " host " " $0 }' \
        "$log_file" >&2
}

# One lab-up at a time: helpers and tests may share the lab. The daemons it starts do not keep the lock (9>&-).
mkdir -p "$LAB_DIR"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LAB_DIR/.lab-up.lock"
    flock 9
fi
ensure_packages
ensure_dirs
ensure_keys
ensure_network
for h in "${HOSTS[@]}"; do ensure_sshd "$h"; done
ensure_dnsmasq
write_ssh_config
write_inventory
wait_ssh
ensure_wheels
prepare_hosts
echo "livemig lab up: hv1=198.18.0.1 hv2=198.18.0.2 bridge=$BR($BR_ADDR)" \
    "guest network=$GUEST_BR/$TOR_BR client=$CLIENT_NS(${CLIENT_ADDR%/*}) inventory=$LAB_DIR/inventory.yml" \
    "ssh: ssh -F $LAB_DIR/ssh_config hv1"
