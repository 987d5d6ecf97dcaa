#!/usr/bin/env bash
# The aarch64 (Jetson) build, tested on an x86_64 machine under qemu user-mode
# emulation (issue 15; CI runs it after scripts/build-dist.sh):
#   - the library tests and the offline API tests, cross-built for
#     aarch64-unknown-linux-gnu and run by qemu-aarch64-static (the runner in
#     .cargo/config.toml);
#   - the shipped binary dist/arm64/azaion-loader: --version, `hardware`
#     (which must report the ARMv8 AES backend: qemu's CPU has the
#     instructions, so this proves the run-time detection), then `serve`
#     under qemu against the peers of a host-side local stack: login, load of
#     the demo resource, upload then load of 1 MiB, byte for byte.
#
#   scripts/aarch64-test.sh            # both; needs dist/arm64/azaion-loader (scripts/build-dist.sh arm64)
#   scripts/aarch64-test.sh tests      # only the cross-built tests
#   scripts/aarch64-test.sh binary     # only the shipped binary
#
# Installs Debian's cross gcc, arm64 libc and qemu-user-static when missing.
# Registers qemu with binfmt_misc when it can (root), so that aarch64 programs
# also run by themselves; without it the runner alone is used.
set -euo pipefail
cd "$(dirname "$0")/.."
readonly PART="${1:-all}"
case "$PART" in all | tests | binary) ;; *) echo "usage: $0 [all|tests|binary]" >&2; exit 2 ;; esac

readonly TRIPLE=aarch64-unknown-linux-gnu SYSROOT=/usr/aarch64-linux-gnu
readonly DEMO_EMAIL=demo@azaion.local DEMO_PASSWORD=demo-password
say() { printf 'aarch64-test: %s\n' "$*"; }
die() { printf 'aarch64-test: FAIL: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (Debian)"
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$TRIPLE" || rustup target add "$TRIPLE"

# binfmt_misc: the kernel runs aarch64 ELF files through qemu (flag F: the
# interpreter is opened now, so it works in chroots and containers too).
register_binfmt() {
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -r "$conf" ] || return 1
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || return 1
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && return 0
    grep -v '^#' "$conf" | as_root tee /proc/sys/fs/binfmt_misc/register >/dev/null 2>&1
}
if register_binfmt; then
    say "binfmt_misc: aarch64 programs run through qemu-aarch64-static"
else
    say "binfmt_misc could not be registered here: only the cargo runner runs aarch64 programs"
fi

# --- the tests, cross-built ------------------------------------------------------
started=$SECONDS
if [ "$PART" != binary ]; then
# The aarch64-only code (the ARMv8 CBC loop) is linted here: scripts/lint.sh
# checks the host's.
cargo clippy --locked --quiet --target "$TRIPLE" --lib --tests -- -D warnings
say "cargo test --target $TRIPLE --lib --test api (run by qemu-aarch64-static)"
# Skipped here only (it runs natively in scripts/test.sh): qemu-user answers
# /proc/self/stat with a made-up line whose rss field is 0.
say "skipped under qemu: metrics::tests::the_process_figures_are_read_from_proc (qemu fakes /proc/self/stat)"
# Emulated, the 16 parallel 16 MiB loads of the single-flight test take
# longer than the test client's default 60 s.
AZAION_TEST_CLIENT_TIMEOUT_SECS=600 cargo test --locked --target "$TRIPLE" --lib --test api -- \
    --skip metrics::tests::the_process_figures_are_read_from_proc
say "tests under qemu: $((SECONDS - started)) s (build and run)"
fi
[ "$PART" != tests ] || exit 0

# --- the shipped binary ----------------------------------------------------------
binary=dist/arm64/azaion-loader
[ -x "$binary" ] || die "no $binary: run scripts/build-dist.sh arm64 first"
qemu=(qemu-aarch64-static -L "$SYSROOT")
version="$("${qemu[@]}" "$binary" --version)" || die "$binary --version failed under qemu"
say "$binary --version: $version"
[ "$version" = "azaion-loader $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ] ||
    die "unexpected version line '$version'"
hardware="$("${qemu[@]}" "$binary" hardware)" || die "$binary hardware failed under qemu"
printf '%s\n' "$hardware" | sed 's/^/    /'
printf '%s\n' "$hardware" | grep -q '^crypto: armv8 ' ||
    die "the aarch64 binary does not use the ARMv8 AES instructions that qemu's CPU has"

work="$(mktemp -d "${TMPDIR:-/tmp}/azaion-aarch64.XXXXXX")"
pids=()
cleanup() {
    local status=$? pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf -- "$work"
    exit "$status"
}
trap cleanup EXIT
free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
    done
    return 1
}

# The peers (Resource API emulator, S3) of a host-side local stack: the
# shipped binary has no local stack in it (--no-default-features).
cargo build --locked --quiet --bin azaion-loader
dev_binary="${CARGO_TARGET_DIR:-target}/debug/azaion-loader"
: >"$work/peers.log"
"$dev_binary" dev --listen "127.0.0.1:$(free_port)" --data-dir "$work/peers" >"$work/peers.log" 2>&1 &
pids+=($!)
api_url=""
for _ in $(seq 1 120); do
    api_url="$(sed -n 's/^  Resource API (emul.) *//p' "$work/peers.log" | head -n 1)"
    [ -n "$api_url" ] && break
    sleep 0.5
done
[ -n "$api_url" ] || { cat "$work/peers.log" >&2; die "the local stack's peers did not start"; }

port="$(free_port)"
base="http://127.0.0.1:$port"
LOADER_LISTEN="127.0.0.1:$port" RESOURCE_API_URL="$api_url" MODEL_CACHE_DIR="$work/cache" \
    "${qemu[@]}" "$binary" serve >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
    curl -sf "$base/health" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -sf "$base/health" >/dev/null || { cat "$work/serve.log" >&2; die "serve under qemu did not answer /health"; }
grep -q 'armv8' "$work/serve.log" || { cat "$work/serve.log" >&2; die "serve did not log the armv8 AES backend"; }

curl -sf -X POST "$base/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$DEMO_EMAIL\",\"password\":\"$DEMO_PASSWORD\"}" >/dev/null ||
    { cat "$work/serve.log" >&2; die "login through the aarch64 binary failed"; }
curl -sf -X POST "$base/load/demo.txt" -H 'content-type: application/json' \
    -d '{"filename":"demo.txt","folder":"models"}' -o "$work/demo.txt" &&
    grep -q 'Hello from Azaion Loader' "$work/demo.txt" ||
    { cat "$work/serve.log" >&2; die "load of the demo resource through the aarch64 binary failed"; }
head -c 1048576 /dev/urandom >"$work/model.bin"
curl -sf -X POST "$base/upload/aarch64-model.bin" -F folder=models -F "data=@$work/model.bin" >/dev/null ||
    { cat "$work/serve.log" >&2; die "upload through the aarch64 binary failed"; }
curl -sf -X POST "$base/load/aarch64-model.bin" -H 'content-type: application/json' \
    -d '{"folder":"models"}' -o "$work/model.back" ||
    { cat "$work/serve.log" >&2; die "load after upload through the aarch64 binary failed"; }
cmp -s "$work/model.bin" "$work/model.back" || die "the 1 MiB upload did not load back byte for byte"
say "PASS: the aarch64 binary under qemu: --version, armv8 AES, serve: login, load, upload, load (1 MiB, byte-exact)"
say "total: $((SECONDS - started)) s"
