#!/usr/bin/env bash
# Block devices for the lab's hosts: under one NAME, one loop device per host, so that a VM spec's
# `path: /etc/livemig-blk/NAME` is a block device on both hosts, each host's own.
#   blockdev.sh add NAME SIZE_MB   a sparse $LAB_DIR/blk/<host>/NAME.img per host, attached to a loop device, and
#                                  the link /etc/netns/<host>/livemig-blk/NAME -> /dev/loopN. Idempotent (the same
#                                  size again changes nothing, another size is an error). Prints NAME's list line.
#   blockdev.sh remove NAME...     detach and delete them; `remove --all` removes every one (lab-down.sh does)
#   blockdev.sh list               one line per NAME: NAME SIZE_MB hv1=/dev/loopN hv2=/dev/loopM
# In a host's namespace (its sshd, everything Ansible runs there, `ip netns exec <host>`) /etc/livemig-blk is
# /etc/netns/<host>/livemig-blk, bind-mounted by ip netns exec: lab-up.sh makes those directories before it
# starts the hosts' sshd, and links added later show through at once.
set -euo pipefail

LAB_DIR="${LAB_DIR:-/var/lib/livemig-lab}"
HOSTS=(hv1 hv2)
BLK_DIR=livemig-blk
MIB=1048576

log() { echo "blockdev: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 add NAME SIZE_MB | remove NAME...|--all | list" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

image() { echo "$LAB_DIR/blk/$1/$2.img"; }        # image HOST NAME
link() { echo "/etc/netns/$1/$BLK_DIR/$2"; }      # link HOST NAME

# The loop devices a backing file is attached to.
loops_of() { losetup -n -O NAME -j "$1"; }

check_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad NAME '$1' (letters, digits, '.', '_', '-')"
}

# NAME SIZE_MB hv1=/dev/loopN hv2=/dev/loopM ("-" where a host has no link)
describe() {
    local name=$1 h line
    line="$name $(($(stat -c %s "$(image "${HOSTS[0]}" "$name")") / MIB))"
    for h in "${HOSTS[@]}"; do
        line+=" $h=$(readlink "$(link "$h" "$name")" || echo -)"
    done
    echo "$line"
}

add() {
    local name=$1 size_mb=$2 h file dev
    check_name "$name"
    [[ $size_mb =~ ^[1-9][0-9]*$ ]] || die "SIZE_MB must be a positive whole number, not '$size_mb'"
    for h in "${HOSTS[@]}"; do
        [ -d "/etc/netns/$h/$BLK_DIR" ] || die "/etc/netns/$h/$BLK_DIR is missing: bring the lab up (lab/lab-up.sh)"
        file=$(image "$h" "$name")
        # Every host is checked before anything is made, so that a clash changes nothing.
        [ ! -e "$file" ] || [ "$(stat -c %s "$file")" -eq $((size_mb * MIB)) ] ||
            die "$name exists on $h with $(($(stat -c %s "$file") / MIB)) MiB, not $size_mb (remove it first)"
    done
    for h in "${HOSTS[@]}"; do
        file=$(image "$h" "$name")
        if [ ! -e "$file" ]; then
            mkdir -p "$(dirname "$file")"
            truncate -s $((size_mb * MIB)) "$file"
        fi
        dev=$(loops_of "$file" | sed -n 1p)
        [ -n "$dev" ] || dev=$(losetup --find --show "$file")
        [ "$(readlink "$(link "$h" "$name")")" = "$dev" ] || ln -sfn "$dev" "$(link "$h" "$name")"
    done
    describe "$name"
}

remove() {
    local name=$1 h file dev
    check_name "$name"
    for h in "${HOSTS[@]}"; do
        file=$(image "$h" "$name")
        if [ -e "$file" ]; then
            for dev in $(loops_of "$file"); do losetup -d "$dev"; done
        fi
        rm -f "$(link "$h" "$name")" "$file"
    done
}

# Every loop device backed by a file under $LAB_DIR/blk (even one already deleted), every link, every image.
remove_all() {
    local dev back h
    while read -r dev back; do
        case "$back" in "$LAB_DIR/blk/"*) losetup -d "$dev" ;; esac
    done < <(losetup -n -l -O NAME,BACK-FILE)
    for h in "${HOSTS[@]}"; do
        [ ! -d "/etc/netns/$h/$BLK_DIR" ] || find "/etc/netns/$h/$BLK_DIR" -mindepth 1 -maxdepth 1 -type l -delete
    done
    rm -rf "${LAB_DIR:?}/blk"
}

names() {
    local f
    for f in "$LAB_DIR/blk/${HOSTS[0]}"/*.img; do
        [ -e "$f" ] && basename "$f" .img
    done
    return 0
}

[ "$#" -ge 1 ] || usage
# One change at a time (lab-down.sh and the tests may run this at once).
if [ -d "$LAB_DIR" ] && command -v flock >/dev/null 2>&1; then
    exec 8>"$LAB_DIR/.blockdev.lock"
    flock 8
fi
case "$1" in
    add)
        [ "$#" -eq 3 ] || usage
        add "$2" "$3"
        ;;
    remove)
        [ "$#" -ge 2 ] || usage
        if [ "$2" = --all ]; then
            remove_all
        else
            shift
            for n in "$@"; do remove "$n"; done
        fi
        ;;
    list)
        [ "$#" -eq 1 ] || usage
        for n in $(names); do describe "$n"; done
        ;;
    *) usage ;;
esac
