#!/usr/bin/env bash
# A private Docker daemon for CI and local tests of the Docker adapters.
# It never touches the system daemon: its own socket, data, exec root and pid
# file live under one folder, and `stop` removes only a folder this script made.
#
#   eval "$(scripts/docker-daemon.sh start [DIR])"   # prints: export DOCKER_HOST=unix://DIR/docker.sock
#   scripts/docker-daemon.sh stop [DIR]              # DIR defaults to the folder of $DOCKER_HOST
#
# `start` installs Debian's docker.io only when no `dockerd` is on PATH, and
# tries the storage drivers in $DOCKER_STORAGE_DRIVERS (default: overlay2 vfs).
# Everything but the final `export` line goes to stderr.
set -euo pipefail

readonly MARKER=".azaion-docker-daemon"
readonly READY_TIMEOUT_SECONDS="${DOCKER_DAEMON_TIMEOUT:-60}"

log() { printf 'docker-daemon: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_dockerd() {
    command -v apt-get >/dev/null 2>&1 || die "no dockerd on PATH and no apt-get to install docker.io"
    log "no dockerd on PATH: installing Debian's docker.io"
    # Keep the package's init scripts from starting a system daemon.
    local policy=/usr/sbin/policy-rc.d placed_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        placed_policy=1
    fi
    local status=0
    {
        as_root apt-get update &&
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y --no-install-recommends docker.io
    } >&2 || status=$?
    if [ "$placed_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
    [ "$status" -eq 0 ] || die "apt-get install docker.io failed ($status)"
    hash -r
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still not on PATH"
}

docker_answers() {
    docker -H "unix://$1/docker.sock" version >/dev/null 2>&1
}

# Starts dockerd with one storage driver; succeeds once the socket answers,
# fails (daemon stopped) if it exits or the timeout passes.
try_driver() {
    local dir="$1" driver="$2"
    log "starting dockerd with storage driver $driver in $dir"
    # setsid: the daemon outlives this shell and ignores its terminal's signals.
    as_root setsid dockerd \
        --host "unix://$dir/docker.sock" \
        --data-root "$dir/data" \
        --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.pid" \
        --storage-driver "$driver" \
        --iptables=false --ip6tables=false --bridge=none \
        >>"$dir/dockerd.log" 2>&1 </dev/null &
    local pid=$!
    local deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if docker_answers "$dir"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd ($driver) exited before answering"
            return 1
        fi
        sleep 0.2
    done
    log "dockerd ($driver) did not answer within ${READY_TIMEOUT_SECONDS}s"
    stop_daemon_in "$dir"
    return 1
}

start() {
    local dir="${1:-}" made_dir=0
    command -v dockerd >/dev/null 2>&1 || install_dockerd
    command -v docker >/dev/null 2>&1 || die "no docker CLI on PATH"
    if [ -z "$dir" ]; then
        dir="$(mktemp -d "${TMPDIR:-/tmp}/azaion-docker.XXXXXX")"
        made_dir=1
    else
        mkdir -p "$dir"
        dir="$(cd "$dir" && pwd)"
        if [ -f "$dir/dockerd.pid" ] && docker_answers "$dir"; then
            log "a daemon already answers in $dir"
            printf 'export DOCKER_HOST=unix://%s/docker.sock\n' "$dir"
            return 0
        fi
    fi
    touch "$dir/$MARKER"
    : >"$dir/dockerd.log"
    local driver started=0
    for driver in ${DOCKER_STORAGE_DRIVERS:-overlay2 vfs}; do
        if try_driver "$dir" "$driver"; then
            started=1
            break
        fi
        log "storage driver $driver failed"
    done
    if [ "$started" -ne 1 ]; then
        log "dockerd log ($dir/dockerd.log):"
        cat "$dir/dockerd.log" >&2
        if [ "$made_dir" -eq 1 ]; then stop "$dir" 2>/dev/null || true; fi
        die "could not start a Docker daemon"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        as_root chown "$(id -u):$(id -g)" "$dir/docker.sock"
    fi
    log "daemon ready (log: $dir/dockerd.log)"
    printf 'export DOCKER_HOST=unix://%s/docker.sock\n' "$dir"
}

# Sends TERM to the pid in a pid file, then KILL after 20 s.
stop_pid_file() {
    local pid_file="$1" pid
    [ -f "$pid_file" ] || return 0
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    kill -0 "$pid" 2>/dev/null || return 0
    as_root kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    log "pid $pid ignored TERM; killing it"
    as_root kill -KILL "$pid" 2>/dev/null || true
}

stop_daemon_in() {
    local dir="$1" pid children child
    pid="$(cat "$dir/dockerd.pid" 2>/dev/null || true)"
    # The containerd that dockerd supervises: stopped by dockerd, unless it outlives it.
    children=""
    if [ -n "$pid" ]; then children="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"; fi
    stop_pid_file "$dir/dockerd.pid"
    for child in $children; do
        if grep -qF "$dir/" "/proc/$child/cmdline" 2>/dev/null; then
            as_root kill -KILL "$child" 2>/dev/null || true
        fi
    done
    # Whatever dockerd left mounted under the folder, innermost first.
    local mount_point
    awk -v prefix="$dir/" 'index($2, prefix) == 1 {print $2}' /proc/self/mounts | sort -r |
        while read -r mount_point; do
            as_root umount -l "$mount_point" 2>/dev/null || true
        done
}

stop() {
    local dir="${1:-}"
    if [ -z "$dir" ]; then
        case "${DOCKER_HOST:-}" in
            unix://*/docker.sock) dir="${DOCKER_HOST#unix://}"; dir="${dir%/docker.sock}" ;;
            *) die "stop: give the daemon folder, or set DOCKER_HOST=unix://DIR/docker.sock" ;;
        esac
    fi
    [ -f "$dir/$MARKER" ] || die "stop: $dir was not made by this script; leaving it alone"
    stop_daemon_in "$dir"
    as_root rm -rf -- "$dir"
    log "daemon stopped; $dir removed"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) die "usage: $0 start [DIR] | stop [DIR]" ;;
esac
