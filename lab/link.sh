#!/usr/bin/env bash
# Fault / link emulation for a lab host's migration link (mig0, 198.18.0.10N).
# The management link (eth0, SSH) is only touched by mgmt-down/mgmt-up, for a host on one network for both.
#   link.sh HOST down|up        cut / restore the link (root-side veth lmm-HOST)
#   link.sh HOST mgmt-down|mgmt-up  cut / restore the management link (root-side veth lm-HOST): SSH goes too
#   link.sh HOST limit RATE     rate-limit both directions, e.g. 1gbit, 100mbit
#   link.sh HOST unlimit        remove the rate limit
#   link.sh HOST show           show link state and qdiscs
set -euo pipefail

usage() { echo "usage: $0 hv1|hv2 down|up|mgmt-down|mgmt-up|limit RATE|unlimit|show" >&2; exit 2; }

[ "$#" -ge 2 ] || usage
HOST=$1 ACTION=$2
case "$HOST" in hv1|hv2) ;; *) usage ;; esac
DEV="lmm-$HOST"
ip link show "$DEV" >/dev/null 2>&1 || { echo "link.sh: $DEV not found (lab up?)" >&2; exit 1; }

# Run a tc command on both egress sides: root-side veth (traffic towards HOST)
# and the namespace's eth0 (traffic from HOST).
tc_both() {
    local obj=$1 verb=$2
    shift 2
    tc "$obj" "$verb" dev "$DEV" "$@"
    ip netns exec "$HOST" tc "$obj" "$verb" dev mig0 "$@"
}

case "$ACTION" in
    down) ip link set "$DEV" down ;;
    up) ip link set "$DEV" up ;;
    mgmt-down) ip link set "lm-$HOST" down ;;
    mgmt-up) ip link set "lm-$HOST" up ;;
    limit)
        [ "$#" -eq 3 ] || usage
        RATE=$3
        # HTB computes a burst suited to the rate; unclassified traffic -> 1:10.
        # Re-create rather than change: htb qdiscs don't support "change".
        "$0" "$HOST" unlimit
        tc_both qdisc add root handle 1: htb default 10
        tc_both class add parent 1: classid 1:10 htb rate "$RATE" ceil "$RATE" quantum 60000
        ;;
    unlimit)
        tc qdisc del dev "$DEV" root 2>/dev/null || true
        ip netns exec "$HOST" tc qdisc del dev mig0 root 2>/dev/null || true
        ;;
    show)
        ip -br link show "$DEV"
        tc qdisc show dev "$DEV"
        ip netns exec "$HOST" tc qdisc show dev mig0
        ;;
    *) usage ;;
esac
