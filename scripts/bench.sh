#!/usr/bin/env bash
# The benchmark table of BENCHMARKS.md, in one command, on a fresh machine:
# installs what it needs (openssl, curl, wrk, nginx-light; docker.io through
# scripts/docker-daemon.sh), builds in release mode, starts the dev stack and
# a private Docker daemon, and moto (PyPI, in target/moto-venv: scripts/moto.sh),
# runs scenarios P1-P10 with their baselines, prints one table, and stops and
# removes everything it started.
#
#   scripts/bench.sh                   # everything (~6 min after the build)
#   scripts/bench.sh --s3 moto         # P3-P6, P8 against moto instead of the embedded s3s-fs
#   scripts/bench.sh --only P3,P4      # some scenarios (P6 runs too: it uploads their data)
#   scripts/bench.sh --markdown t.md   # also write the table to t.md
#   BENCH_SKIP_DOCKER=1 scripts/bench.sh  # P7 printed as skipped
#
# Other options: scripts/bench/run.py --help. Everything listens on 127.0.0.1.
# It needs ~7 GiB free under ${TMPDIR:-/tmp} and nothing else running, or the
# figures measure the neighbours too.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench.sh: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages for the missing commands, without starting services.
install_missing() {
    local packages=() cmd pkg
    for pair in openssl:openssl curl:curl wrk:wrk nginx:nginx-light python3:python3; do
        cmd="${pair%%:*}" pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || packages+=("$pkg")
    done
    [ "${#packages[@]}" -gt 0 ] || return 0
    command -v apt-get >/dev/null 2>&1 || { log "missing ${packages[*]} and no apt-get"; exit 1; }
    log "installing ${packages[*]}"
    # Keep the packages' init scripts from starting a system nginx on port 80.
    local policy=/usr/sbin/policy-rc.d placed_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        placed_policy=1
    fi
    local status=0
    {
        as_root apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
    } >&2 || status=$?
    if [ "$placed_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
    [ "$status" -eq 0 ] || { log "apt-get install failed ($status)"; exit 1; }
    hash -r
}

install_missing

# The path of an executable cargo built, from its JSON messages on stdin.
executable_of() {
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}

log "building (release; the first build takes ~20 minutes on 2 cores)"
loader="$(cargo build --release --bin azaion-loader --message-format=json-render-diagnostics | executable_of azaion-loader)"
throughput="$(cargo bench --no-run --bench throughput --message-format=json-render-diagnostics | executable_of throughput)"
[ -x "$loader" ] || { log "the loader did not build"; exit 1; }
[ -x "$throughput" ] || { log "the throughput bench did not build"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/azaion-bench.XXXXXX")"
docker_dir="" runner=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$runner" ]; then
        kill -TERM "$runner" 2>/dev/null || true
        wait "$runner" 2>/dev/null || true
    fi
    # Whatever the runner started and could not stop itself (it notes every pid).
    local pid
    if [ -f "$work/pids" ]; then
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done <"$work/pids"
    fi
    if [ -n "$docker_dir" ]; then scripts/docker-daemon.sh stop "$docker_dir" >/dev/null 2>&1 || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docker_host="${DOCKER_HOST:-}" docker_skip=""
if [ -z "$docker_host" ]; then
    if [ "${BENCH_SKIP_DOCKER:-}" = "1" ]; then
        docker_skip="BENCH_SKIP_DOCKER=1"
    elif [ ! -x scripts/docker-daemon.sh ]; then
        docker_skip="no scripts/docker-daemon.sh"
    else
        docker_dir="$(mktemp -d "${TMPDIR:-/tmp}/azaion-bench-docker.XXXXXX")"
        if exports="$(scripts/docker-daemon.sh start "$docker_dir" 2>"$work/docker-daemon.log")"; then
            docker_host="$(printf '%s\n' "$exports" | sed -n 's/^export DOCKER_HOST=//p')"
            log "private Docker daemon at $docker_host"
        else
            docker_skip="no Docker daemon could be started ($(tail -n 1 "$work/docker-daemon.log"))"
            rmdir "$docker_dir" 2>/dev/null || true
            docker_dir=""
        fi
    fi
fi

# moto: P10's S3 server, and that of the whole table with --s3 moto.
moto_python="$(scripts/moto.sh)"

# In the background, so that a signal to this script reaches the trap at once.
python3 scripts/bench/run.py \
    --moto-python "$moto_python" \
    --binary "$loader" \
    --throughput "$throughput" \
    --work "$work" \
    --docker-host "$docker_host" \
    --docker-skip "$docker_skip" \
    "$@" &
runner=$!
status=0
wait "$runner" || status=$?
runner=""
exit "$status"
