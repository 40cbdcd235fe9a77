# shellcheck shell=bash
# Sourced by lab-up.sh and lab-down.sh: what the lab needs to know about the processes it started.

# A pid is alive if it exists and is not a zombie.
alive() {
    local pid=$1 state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# pidfile_pid PIDFILE COMM [NETNS]: print the pid in PIDFILE if that process is alive, is named COMM and (when
# given) runs in network namespace NETNS; fail otherwise, so that a stale pidfile never names someone else.
pidfile_pid() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1")
    alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    [ -z "${3:-}" ] || [ "$(ip netns identify "$pid" 2>/dev/null)" = "$3" ] || return 1
    echo "$pid"
}

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
