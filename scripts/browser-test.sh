#!/usr/bin/env bash
# Renders the status page (`GET /`) in headless Chromium against the local
# stack and checks what its script filled in. Installs Debian's chromium when
# it is missing, builds the loader, starts `azaion-loader dev` on a free port
# with a throw-away data folder, logs in as the demo user and loads demo.txt
# once (so the cache lists it), then checks that the rendered page (after its
# script ran) shows the service healthy, the loader logged in, demo.txt in
# the cache and an unlock state, and that it refreshes by itself (its footer
# counts at least 2 completed poll rounds in the 5 s of virtual time: the
# page polls once a second, see status.js). Saves a screenshot for CI as
# target/artifacts/status-page.png. Prints PASS or FAIL; exits non-zero on
# failure. Offline apart from the apt install.
#
#   scripts/browser-test.sh
#   CHROMIUM=/usr/bin/chromium scripts/browser-test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARTIFACTS="$ROOT/target/artifacts"
SCREENSHOT="$ARTIFACTS/status-page.png"
CHROMIUM=${CHROMIUM:-chromium}

log() { printf 'browser-test.sh: %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------------
need_packages=()
command -v "$CHROMIUM" >/dev/null 2>&1 || need_packages+=(chromium)
command -v curl >/dev/null 2>&1 || need_packages+=(curl ca-certificates)
if [[ ${#need_packages[@]} -gt 0 ]]; then
    log "installing ${need_packages[*]} from Debian"
    sudo=()
    [[ "$(id -u)" -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${need_packages[@]}" >/dev/null
fi
log "$("$CHROMIUM" --version 2>/dev/null | tail -n 1)"

# --- the stack -------------------------------------------------------------------
cargo build --locked --quiet --bin azaion-loader
BIN="$ROOT/target/debug/azaion-loader"

free_port() { # a port nothing on 127.0.0.1 answers on
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}
PORT=$(free_port) || { log "no free port found"; exit 1; }
BASE="http://127.0.0.1:$PORT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/azaion-browser.XXXXXX")
STACK_PID=""

SLOW_PID=""
stop_stack() {
    if [[ -n "$SLOW_PID" ]]; then
        kill "$SLOW_PID" 2>/dev/null || true
        wait "$SLOW_PID" 2>/dev/null || true
        SLOW_PID=""
    fi
    if [[ -n "$STACK_PID" ]] && kill -0 "$STACK_PID" 2>/dev/null; then
        kill "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    STACK_PID=""
}
cleanup() {
    local status=$?
    stop_stack
    if [[ $status -ne 0 ]]; then
        if [[ -f "$WORK/stack.log" ]]; then
            log "the stack's log (last 30 lines):"
            tail -n 30 "$WORK/stack.log" >&2 || true
        fi
        echo "FAIL"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the local stack on $BASE"
RUST_LOG=${RUST_LOG:-info} "$BIN" dev --listen "127.0.0.1:$PORT" --data-dir "$WORK/stack" \
    >"$WORK/stack.log" 2>&1 &
STACK_PID=$!

for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$BASE/health" 2>/dev/null && break
    kill -0 "$STACK_PID" 2>/dev/null || { log "the stack exited early"; exit 1; }
    sleep 0.5
done
curl -fsS -o /dev/null "$BASE/health" || { log "the stack never answered /health"; exit 1; }

curl -fsS -o /dev/null -X POST "$BASE/login" -H 'content-type: application/json' \
    -d '{"email":"demo@azaion.local","password":"demo-password"}' ||
    { log "the demo login failed"; exit 1; }
curl -fsS -o "$WORK/demo.txt" -X POST "$BASE/load/demo.txt" -H 'content-type: application/json' \
    -d '{"filename":"demo.txt","folder":"models"}' ||
    { log "loading demo.txt failed"; exit 1; }
log "logged in and loaded demo.txt ($(wc -c <"$WORK/demo.txt") bytes)"

# A transfer in progress while the browser looks (issue 13): an 8 MiB
# resource, uploaded, then loaded by a client that reads 64 KiB/s (about two
# minutes: it outlasts both browser runs; cleanup stops it).
head -c $((8 << 20)) /dev/urandom >"$WORK/slow.bin"
curl -fsS -o /dev/null -X POST "$BASE/upload/slow.bin" -F folder=models -F "data=@$WORK/slow.bin" ||
    { log "uploading slow.bin failed"; exit 1; }
curl -sS -o /dev/null --limit-rate 64K -X POST "$BASE/load/slow.bin" -H 'content-type: application/json' \
    -d '{"folder":"models"}' &
SLOW_PID=$!
listed() { [[ "$(curl -fsS "$BASE/transfers")" == *'"models/slow.bin"'* ]]; }
for _ in $(seq 1 50); do
    listed && break
    sleep 0.1
done
listed || { log "the slow load is not listed in /transfers"; exit 1; }

# --- the browser -------------------------------------------------------------------
# Virtual time the page runs for before the DOM is dumped: the page polls once
# a second (ROUND_MS in status.js), so 5 s covers the first round and at least
# four more.
# Long enough for two slow poll rounds (5 s apart): the throughput chart needs two samples.
VIRTUAL_TIME_MS=7000
chromium_run() { # extra flags... URL: a fresh profile each run, nothing from the network
    local profile
    profile=$(mktemp -d "$WORK/profile.XXXXXX")
    timeout --kill-after=10 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --virtual-time-budget="$VIRTUAL_TIME_MS" "$@" 2>>"$WORK/chromium.log"
}

chromium_run --dump-dom "$BASE/" >"$WORK/dom.html" ||
    { log "chromium failed:"; tail -n 20 "$WORK/chromium.log" >&2; exit 1; }

failures=0
expect() { # DESCRIPTION EXTENDED-REGEX: the rendered DOM must match
    if grep -Eq -- "$2" "$WORK/dom.html"; then
        log "ok: $1"
    else
        log "MISSING: $1 (no match for $2)"
        failures=$((failures + 1))
    fi
}
expect "the service is healthy" 'id="health"[^>]*>healthy<'
expect "the loader is logged in" 'id="session"[^>]*>logged in<'
expect "the AES implementation is shown" 'id="crypto"[^>]*>(aes-ni|armv8|software)<'
expect "demo.txt is listed in the cache" '<td>demo\.txt</td>'
expect "the cache counts two entries (demo.txt, slow.bin)" 'id="cache-entries"[^>]*>2<'
expect "the unlock state is shown" \
    'id="unlock-state"[^>]*>(idle|authenticating|downloading key|decrypting|loading images|ready|error)<'
expect "the unlock poll ran" 'id="updated"[^>]*datetime="[0-9]{4}-'
expect "the page refreshes by itself (at least 2 poll rounds)" \
    'id="updated"[^>]*data-polls="([2-9]|[1-9][0-9]+)"'
expect "no client token was asked for (none is configured)" '<form id="token-form"[^>]*hidden'
expect "the slow load is shown as a transfer in progress" '<td>load</td><td>models/slow\.bin</td><td><progress'
expect "the throughput chart has its two lines" '<polyline class="served" points="[0-9]'
expect "the throughput is stated in words" 'id="throughput-note"[^>]*>Now: <span class="legend-served">served '
if grep -q 'checking…' "$WORK/dom.html"; then
    log "MISSING: a value still shows its placeholder (checking…)"
    failures=$((failures + 1))
fi

mkdir -p "$ARTIFACTS"
rm -f "$SCREENSHOT"
chromium_run --hide-scrollbars --window-size=1280,900 --screenshot="$SCREENSHOT" "$BASE/" >/dev/null ||
    { log "the screenshot failed:"; tail -n 20 "$WORK/chromium.log" >&2; exit 1; }
[[ -s "$SCREENSHOT" ]] || { log "no screenshot was written"; exit 1; }
log "screenshot: ${SCREENSHOT#"$ROOT"/}"

if [[ $failures -ne 0 ]]; then
    log "$failures check(s) failed; the rendered page is kept at target/artifacts/status-page.html"
    cp "$WORK/dom.html" "$ARTIFACTS/status-page.html"
    exit 1
fi
echo "PASS"
