#!/usr/bin/env bash
# The shipped binaries and .deb packages, for x86_64 ground stations and
# aarch64 Jetsons (issue 15):
#
#   scripts/build-dist.sh                 # both architectures
#   scripts/build-dist.sh amd64           # or arm64: one of them
#
# writes
#   dist/amd64/azaion-loader  dist/arm64/azaion-loader      (Docker's TARGETARCH names)
#   dist/azaion-loader_VERSION-1_amd64.deb  dist/azaion-loader_VERSION-1_arm64.deb
#   dist/SHA256SUMS
#
# The binaries are the production build (--no-default-features: no local
# stack) linked by `cargo zigbuild` against glibc 2.17's symbols, so they run
# on any glibc from 2.17 on: JetPack 5 (Ubuntu 20.04, glibc 2.31), JetPack 6
# (22.04, 2.35) and every supported Debian/Ubuntu x86_64. Chosen over static
# musl because Debian has no aarch64 musl cross compiler for ring's C code.
# The allocator is mimalloc (C, built by the same zig cc) on both.
#
# Checks each binary: no glibc symbol newer than 2.31 (objdump -T), and the
# hardware AES instructions in it (aesenc/aesdec on x86_64; aese/aesd on
# aarch64, from .cargo/config.toml's aes_armv8). Fails if either is wrong.
#
# Installs what it lacks: the Rust targets, zig (PyPI's ziglang), cargo-zigbuild
# and cargo-deb (crates.io), and Debian's aarch64 binutils for the checks.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly GLIBC_LINK=2.17 GLIBC_MAX=2.31
readonly ZIGLANG_VERSION=0.17.1 CARGO_ZIGBUILD_VERSION=0.24.1 CARGO_DEB_VERSION=3.8.0
archs=("$@")
[ "${#archs[@]}" -gt 0 ] || archs=(amd64 arm64)

say() { printf 'build-dist: %s\n' "$*"; }
die() { printf 'build-dist: FAIL: %s\n' "$*" >&2; exit 1; }

triple_of() {
    case "$1" in
        amd64) echo x86_64-unknown-linux-gnu ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        *) die "unknown architecture '$1' (amd64 or arm64)" ;;
    esac
}

# --- tools ---------------------------------------------------------------------
apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    say "installing ${missing[*]} (Debian)"
    "${sudo[@]}" apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
apt_install binutils binutils-aarch64-linux-gnu python3-pip
for arch in "${archs[@]}"; do
    triple="$(triple_of "$arch")"
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
done
python3 -m ziglang version >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages "ziglang==$ZIGLANG_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --locked --quiet cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"

# --- binaries and packages -------------------------------------------------------
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p dist/unit
# The package's unit runs the package's binary.
sed 's#^ExecStart=/usr/local/bin/azaion-loader #ExecStart=/usr/bin/azaion-loader #' \
    packaging/azaion-loader.service >dist/unit/azaion-loader.service
grep -q '^ExecStart=/usr/bin/azaion-loader ' dist/unit/azaion-loader.service ||
    die "packaging/azaion-loader.service has no ExecStart=/usr/local/bin/azaion-loader line to rewrite"
for arch in "${archs[@]}"; do
    triple="$(triple_of "$arch")"
    started=$SECONDS
    say "$arch: cargo zigbuild --release --no-default-features --target $triple.$GLIBC_LINK"
    cargo zigbuild --quiet --release --locked --no-default-features --target "$triple.$GLIBC_LINK"
    built="$target_dir/$triple/release/azaion-loader"
    [ -x "$built" ] || die "$arch: no binary at $built"
    mkdir -p "dist/$arch"
    cp "$built" "dist/$arch/azaion-loader"
    binary="dist/$arch/azaion-loader"

    case "$arch" in
        amd64) objdump=objdump aes_pattern='aesenc|aesdec' ;;
        arm64) objdump=aarch64-linux-gnu-objdump aes_pattern='aese|aesd' ;;
    esac
    newest="$("$objdump" -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)"
    [ -n "$newest" ] || die "$arch: objdump -T found no glibc symbol versions in $binary"
    [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MAX" | sort -V | tail -n 1)" = "$GLIBC_MAX" ] ||
        die "$arch: $binary needs GLIBC_$newest, newer than $GLIBC_MAX"
    aes_count="$("$objdump" -d --no-show-raw-insn "$binary" | grep -cE "[[:space:]]($aes_pattern)[[:space:]]" || true)"
    [ "$aes_count" -gt 0 ] || die "$arch: no $aes_pattern instructions in $binary (software AES only)"
    say "$arch: $binary, $(stat -c %s "$binary") bytes, needs glibc >= $newest (<= $GLIBC_MAX), $aes_count AES instructions ($aes_pattern)"

    # The manual pages and shell completions the .deb installs, from this
    # build's own command line (a binary that runs here: this one, the amd64
    # one, or this one under qemu).
    docs_binary=()
    if "$binary" --version >/dev/null 2>&1; then
        docs_binary=("$binary")
    elif [ -x dist/amd64/azaion-loader ] && dist/amd64/azaion-loader --version >/dev/null 2>&1; then
        docs_binary=(dist/amd64/azaion-loader)
    elif command -v qemu-aarch64-static >/dev/null 2>&1 && [ "$arch" = arm64 ]; then
        docs_binary=(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$binary")
    else
        die "$arch: no binary of this build runs here to write the manual pages (build amd64 too)"
    fi
    rm -rf dist/share && mkdir -p dist/share/man/man1 dist/share/completions
    "${docs_binary[@]}" man --dir dist/share/man/man1
    gzip -9n dist/share/man/man1/*.1
    "${docs_binary[@]}" completions bash >dist/share/completions/azaion-loader.bash
    "${docs_binary[@]}" completions zsh >dist/share/completions/_azaion-loader
    "${docs_binary[@]}" completions fish >dist/share/completions/azaion-loader.fish
    if ls dist/share/man/man1 | grep -q -- '-dev\.1'; then
        die "$arch: the manual documents the dev command, which the shipped binary lacks"
    fi

    deb="$(cargo deb --no-build --no-strip --target "$triple" --output dist/ 2>&1 | tail -n 1)"
    [ -f "$deb" ] || die "$arch: cargo deb wrote no package ($deb)"
    say "$arch: $deb ($((SECONDS - started)) s)"
done
(cd dist && find . \( -path ./unit -o -path ./share \) -prune -o -type f \( -name '*.deb' -o -name azaion-loader \) -print | sort | sed 's#^\./##' | xargs sha256sum > SHA256SUMS)
say "dist/SHA256SUMS:"
sed 's/^/    /' dist/SHA256SUMS
