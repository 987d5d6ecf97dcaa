#!/usr/bin/env bash
# The .deb packages install and start in a clean Debian root (issue 15):
#
#   scripts/deb-test.sh            # dist/azaion-loader_*_{amd64,arm64}.deb (scripts/build-dist.sh)
#   scripts/deb-test.sh amd64      # one architecture
#
# The root is Debian 11 "bullseye" (glibc 2.31, the glibc of JetPack 5's
# Ubuntu 20.04), minbase with systemd and ca-certificates, made by
# debootstrap once per architecture and kept in target/rootfs/ (a later run
# unpacks the kept tarball). arm64 runs under qemu-aarch64-static through
# binfmt_misc (scripts/aarch64-test.sh registers it).
#
# In a fresh copy of the root, in its own mount and PID namespaces (chroot),
# it checks that
#   - `dpkg -i` installs the package (its dependencies are in the root);
#   - the service user and group exist, /etc/azaion is 0750 root:azaion-loader,
#     the client token was made 0640 root:azaion-loader, the unit is enabled;
#   - `systemd-analyze verify` accepts the unit;
#   - the service starts as the unit says: its ExecStart, Environment= and
#     EnvironmentFile=, as its User=/Group=, with its RuntimeDirectory= and
#     CacheDirectory= (what systemd would do; no systemd runs in a chroot),
#     and `azaion-loader status` answers healthy on its Unix socket with the
#     token; SIGTERM stops it with exit status 143;
#   - `dpkg --purge` removes the binary, the token and the user's files.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly RELEASE=bullseye MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
readonly ROOTFS_CACHE="${CARGO_TARGET_DIR:-target}/rootfs"
say() { printf 'deb-test: %s\n' "$*" >&2; }
die() { printf 'deb-test: FAIL: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, namespaces)"

archs=("$@")
[ "${#archs[@]}" -gt 0 ] || archs=(amd64 arm64)
command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

work="$(mktemp -d "${TMPDIR:-/tmp}/azaion-deb.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT

rootfs_tarball() {
    local arch=$1 tarball="$ROOTFS_CACHE/$RELEASE-$1.tar.gz"
    if [ ! -s "$tarball" ]; then
        local dir="$work/bootstrap-$arch" started=$SECONDS
        say "$arch: debootstrap $RELEASE (once; kept as $tarball)"
        debootstrap --variant=minbase --arch="$arch" --include=systemd,ca-certificates \
            "$RELEASE" "$dir" "$MIRROR" >"$work/debootstrap-$arch.log" 2>&1 ||
            { tail -n 30 "$work/debootstrap-$arch.log" >&2; die "$arch: debootstrap failed"; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        mkdir -p "$ROOTFS_CACHE"
        tar -C "$dir" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$dir"
        say "$arch: root made in $((SECONDS - started)) s"
    fi
    echo "$tarball"
}

# Runs inside the root, as PID 1 of its own namespace.
cat >"$work/inside.sh" <<'INSIDE'
#!/bin/sh
set -eu
fail() { echo "FAIL: $*"; exit 1; }
deb=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
dpkg -i "$deb" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i $deb"; }
echo "PASS: dpkg -i $(basename "$deb")"
getent passwd azaion-loader >/dev/null || fail "no azaion-loader user"
getent group azaion-loader >/dev/null || fail "no azaion-loader group"
[ "$(stat -c '%a %U:%G' /etc/azaion)" = "750 root:azaion-loader" ] || fail "/etc/azaion is $(stat -c '%a %U:%G' /etc/azaion)"
[ "$(stat -c '%a %U:%G' /etc/azaion/loader.token)" = "640 root:azaion-loader" ] || fail "token is $(stat -c '%a %U:%G' /etc/azaion/loader.token)"
[ "$(wc -c </etc/azaion/loader.token)" -ge 40 ] || fail "the token is too short"
[ "$(stat -c '%a %U:%G' /etc/azaion/loader.env)" = "640 root:root" ] || fail "loader.env is $(stat -c '%a %U:%G' /etc/azaion/loader.env)"
unit=/usr/lib/systemd/system/azaion-loader.service
[ -L /etc/systemd/system/multi-user.target.wants/azaion-loader.service ] || fail "the unit is not enabled"
echo "PASS: user, group, /etc/azaion, token 0640, unit enabled"
for doc in /usr/share/man/man1/azaion-loader.1.gz /usr/share/man/man1/azaion-loader-serve.1.gz \
    /usr/share/bash-completion/completions/azaion-loader /usr/share/zsh/vendor-completions/_azaion-loader \
    /usr/share/fish/vendor_completions.d/azaion-loader.fish; do
    [ -s "$doc" ] || fail "no $doc"
done
zcat /usr/share/man/man1/azaion-loader.1.gz | grep -q '^\.TH azaion-loader 1' || fail "the manual page is not roff"
echo "PASS: manual pages and bash, zsh and fish completions installed"
# verify: the unit's syntax and its ExecStart (found on systemd's own path).
# It needs a cgroup file system to start its manager (this namespace's own mounts).
mount -t sysfs sysfs /sys && mount -t cgroup2 cgroup2 /sys/fs/cgroup ||
    fail "cannot mount sysfs and cgroup2 for systemd-analyze"
verify="$(systemd-analyze verify "$unit" 2>&1 | sed 's/\x1b\[[0-9;]*m//g')" || { printf '%s\n' "$verify"; fail "systemd-analyze verify failed"; }
if printf '%s\n' "$verify" | grep -q 'azaion-loader'; then
    printf '%s\n' "$verify"; fail "systemd-analyze verify complains about the unit"
fi
echo "PASS: systemd-analyze verify $unit${verify:+ (it says: $(printf '%s' "$verify" | tr '\n' ' '))}"

# Start it as systemd would.
value() { sed -n "s/^$1=//p" "$unit"; }
user="$(value User)"; group="$(value Group)"
runtime="/run/$(value RuntimeDirectory)"; cache="/var/cache/$(value CacheDirectory)"
install -d -o "$user" -g "$group" -m "$(value RuntimeDirectoryMode)" "$runtime"
install -d -o "$user" -g "$group" -m "$(value CacheDirectoryMode)" "$cache"
exec_start="$(value ExecStart)"
program="${exec_start%% *}"; args="${exec_start#* }"
program="$(command -v "$program")" || fail "ExecStart's $program is not on systemd's path"
env_file="$(value EnvironmentFile)"
env_lines="$(value Environment; grep -v '^[[:space:]]*#' "$env_file" | grep '=')"
(
    umask "$(value UMask)"
    # shellcheck disable=SC2086
    exec env -i $env_lines setpriv --reuid="$user" --regid="$group" --init-groups "$program" $args
) >/tmp/serve.log 2>&1 &
pid=$!
socket_listen="$(printf '%s\n' "$env_lines" | sed -n 's/^LOADER_LISTEN=//p' | tail -n 1)"
token_file="$(printf '%s\n' "$env_lines" | sed -n 's/^LOADER_TOKEN_FILE=//p' | tail -n 1)"
ok=0
for _ in $(seq 1 120); do
    if LOADER_LISTEN="$socket_listen" LOADER_TOKEN_FILE="$token_file" azaion-loader status --timeout-secs 2 >/tmp/status.txt 2>&1; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
[ "$ok" = 1 ] || { cat /tmp/serve.log /tmp/status.txt; fail "the service did not come up"; }
echo "PASS: the service runs as $user on $socket_listen; azaion-loader status: $(head -n 1 /tmp/status.txt)"
[ "$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")" = "$(id -u "$user")" ] || fail "the service does not run as $user"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
# 143 = 128 + SIGTERM, after the requests in flight (the unit's SuccessExitStatus=143).
[ "$status" = 143 ] || { cat /tmp/serve.log; fail "SIGTERM: exit status $status"; }
echo "PASS: SIGTERM stops it (exit $status)"

dpkg --purge azaion-loader >/tmp/purge.log 2>&1 || { cat /tmp/purge.log; fail "dpkg --purge"; }
[ ! -e /usr/bin/azaion-loader ] && [ ! -e /etc/azaion/loader.token ] && [ ! -e "$unit" ] ||
    fail "purge left files behind"
echo "PASS: dpkg --purge removes the binary, the unit and the token"
INSIDE
chmod 0755 "$work/inside.sh"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
for arch in "${archs[@]}"; do
    deb="dist/azaion-loader_${version}-1_${arch}.deb"
    [ -f "$deb" ] || die "no $deb: run scripts/build-dist.sh $arch first"
    if [ "$arch" = arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        die "arm64: binfmt_misc has no qemu-aarch64 entry (scripts/aarch64-test.sh registers it)"
    fi
    started=$SECONDS
    tarball="$(rootfs_tarball "$arch")"
    root="$work/root-$arch"
    mkdir -p "$root"
    tar -C "$root" -xzf "$tarball"
    cp "$deb" "$root/tmp/"
    cp "$work/inside.sh" "$root/tmp/inside.sh"
    say "$arch: installing and starting $(basename "$deb") in a clean $RELEASE root"
    set +e
    unshare --mount --pid --fork --mount-proc="$root/proc" \
        chroot "$root" /tmp/inside.sh "/tmp/$(basename "$deb")" 2>&1 | sed "s/^/    $arch: /"
    result="${PIPESTATUS[0]}"
    set -e
    [ "$result" = 0 ] || die "$arch: the package test failed in the root"
    rm -rf "$root"
    say "$arch: PASS ($((SECONDS - started)) s)"
done
