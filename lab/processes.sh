# shellcheck shell=bash
# Sourced by lab-up.sh and lab-down.sh: what the lab needs to know about the processes it started.

# A pid is alive if it exists and is not a zombie.
alive() {
    local pid=$1 state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}
