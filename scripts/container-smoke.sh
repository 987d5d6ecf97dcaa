#!/usr/bin/env bash
# Smoke test of the runtime container image, with no registry at all.
#
# packaging/Dockerfile cannot be built offline (it pulls rust and debian base
# images), so this script assembles the same runtime image from this machine:
# the release binary and exactly the shared libraries it links (ldd, with the
# dynamic loader, at their own paths), a minimal /etc, /tmp, the CA bundle and
# the volume folders, imported with `docker import` (nothing to pull), with the
# runtime settings of the Dockerfile's final stage (ENV, USER, VOLUME, EXPOSE,
# HEALTHCHECK, ENTRYPOINT, CMD) copied from the Dockerfile itself. It then
# checks that the image
#   - prints the version;
#   - runs its default command (`serve`, as the non-root user, with the
#     image's LOADER_LISTEN, under the compose file's hardening: read-only
#     root, no capabilities) and becomes healthy by its own HEALTHCHECK;
#   - answers `azaion-loader status` through `docker exec`;
#   - stops cleanly, in time, on `docker stop` (SIGTERM to PID 1);
#   - serves, on the host network, against the offline local stack's peers
#     (the Resource API emulator and S3 of a host-side `azaion-loader dev`:
#     the image is the production build, --no-default-features, without
#     them): GET /health answers 200, login, load, upload and load again work
#     (data on the cache volume), unlock loads an image archive into Docker
#     through the mounted socket (as the non-root user, by the socket's
#     group, like the compose file), and `status --url http://localhost:PORT`
#     resolves a host name.
#
#   scripts/container-smoke.sh                          # amd64, built here
#   SMOKE_BINARY=dist/amd64/azaion-loader scripts/container-smoke.sh
#   SMOKE_ARCH=arm64 scripts/container-smoke.sh         # dist/arm64/azaion-loader, under qemu
#
# Uses the Docker daemon at $DOCKER_HOST when it is set (CI); otherwise starts
# a private one with scripts/docker-daemon.sh and stops it at the end.
# Prints PASS/FAIL lines; exits non-zero when any check fails. Removes its
# containers, image and temporary files.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly DOCKERFILE=packaging/Dockerfile
readonly ARCH="${SMOKE_ARCH:-amd64}"
readonly READY_TIMEOUT_SECONDS="${SMOKE_READY_TIMEOUT:-90}"
readonly DEMO_EMAIL=demo@azaion.local DEMO_PASSWORD=demo-password

failures=0
checks=0
pass() { checks=$((checks + 1)); printf 'PASS: %s\n' "$*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); printf 'FAIL: %s\n' "$*"; }
info() { printf 'INFO: %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/azaion-smoke.XXXXXX")"
tag="azaion-loader-smoke:$$"
daemon_dir=""
containers=()

cleanup() {
    local status=$? container
    for container in "${containers[@]}"; do
        docker rm -f "$container" >/dev/null 2>&1 || true
    done
    docker image rm -f "$tag" >/dev/null 2>&1 || true
    if [ -n "${peers_pid:-}" ]; then kill "$peers_pid" 2>/dev/null || true; wait "$peers_pid" 2>/dev/null || true; fi
    if [ -n "${unlock_tag:-}" ]; then docker image rm -f "$unlock_tag" >/dev/null 2>&1 || true; fi
    rm -rf -- "$work"
    if [ -n "$daemon_dir" ]; then
        scripts/docker-daemon.sh stop "$daemon_dir" || true
    fi
    exit "$status"
}
trap cleanup EXIT

show_logs() {
    printf -- '--- docker logs %s (last 40 lines) ---\n' "$1"
    docker logs --tail 40 "$1" 2>&1 | sed 's/^/    /' || true
}

# --- the Docker daemon -------------------------------------------------------

command -v docker >/dev/null 2>&1 || die "no docker CLI on PATH"
if [ -z "${DOCKER_HOST:-}" ]; then
    daemon_dir="$(mktemp -d /tmp/azaion-smoke-docker.XXXXXX)"
    if ! exports="$(scripts/docker-daemon.sh start "$daemon_dir")"; then
        rmdir "$daemon_dir" 2>/dev/null || true
        daemon_dir=""
        die "no Docker daemon could be started"
    fi
    eval "$exports"
    info "private Docker daemon at $DOCKER_HOST"
else
    info "Docker daemon at $DOCKER_HOST"
fi
docker version >/dev/null 2>&1 || die "the Docker daemon at ${DOCKER_HOST} does not answer"

# --- the binary ----------------------------------------------------------------

# The production build (--no-default-features: no local stack in it). CI
# passes the binary scripts/build-dist.sh made (SMOKE_BINARY=dist/amd64/...);
# by default the amd64 one is built here. The arm64 image (SMOKE_ARCH=arm64)
# needs dist/arm64/azaion-loader and runs under qemu through binfmt_misc
# (scripts/aarch64-test.sh registers it); its libraries come from Debian's
# libc6-arm64-cross.
run_binary=()
case "$ARCH" in
    amd64) ;;
    arm64)
        run_binary=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
            die "arm64: no qemu-aarch64 entry in binfmt_misc (scripts/aarch64-test.sh registers it)"
        ;;
    *) die "SMOKE_ARCH must be amd64 or arm64, not '$ARCH'" ;;
esac
platform=(--platform "linux/$ARCH")
if [ -n "${SMOKE_BINARY:-}" ]; then
    binary="$SMOKE_BINARY"
elif [ "$ARCH" = amd64 ]; then
    cargo build --release --locked --no-default-features
    binary="${CARGO_TARGET_DIR:-target}/release/azaion-loader"
else
    binary="dist/$ARCH/azaion-loader"
fi
[ -x "$binary" ] || die "no binary at $binary (scripts/build-dist.sh $ARCH)"
if "${run_binary[@]}" "$binary" dev --help >/dev/null 2>&1; then
    die "the production binary has the dev stack in it"
fi
# The local stack's peers (emulator, S3) come from the default build.
cargo build --locked --quiet --bin azaion-loader
dev_binary="${CARGO_TARGET_DIR:-target}/debug/azaion-loader"
expected_version="$("${run_binary[@]}" "$binary" --version)"
info "binary $binary ($ARCH): $expected_version"

# --- the runtime settings of the Dockerfile's final stage ---------------------

# One line per instruction (continuations joined, comments dropped), only the
# instructions `docker import --change` accepts, from after the last FROM.
runtime_instructions() {
    awk '
        /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
        {
            text = $0
            more = sub(/\\[[:space:]]*$/, "", text)
            line = line " " text
            if (more) next
        }
        {
            sub(/^[[:space:]]+/, "", line)
            split(line, words, /[[:space:]]+/)
            keyword = toupper(words[1])
            if (keyword == "FROM") count = 0
            else if (keyword ~ /^(ENV|USER|EXPOSE|VOLUME|HEALTHCHECK|ENTRYPOINT|CMD|WORKDIR|STOPSIGNAL|LABEL)$/)
                kept[++count] = line
            line = ""
        }
        END { for (i = 1; i <= count; i++) print kept[i] }
    ' "$DOCKERFILE"
}

mapfile -t instructions < <(runtime_instructions)
[ "${#instructions[@]}" -gt 0 ] || die "no runtime instructions found in $DOCKERFILE"
user_line="$(printf '%s\n' "${instructions[@]}" | grep -i '^USER ' | tail -n 1 || true)"
user_spec="${user_line#* }"
uid="${user_spec%%:*}"
gid="${user_spec#*:}"
case "$uid:$gid" in
    *[!0-9:]* | :* | *:) die "$DOCKERFILE: the final stage needs a numeric USER uid:gid (found '${user_spec}')" ;;
esac
env_text="$(printf '%s\n' "${instructions[@]}" | grep -i '^ENV ' || true)"
cache_dir="$(printf '%s\n' "$env_text" | grep -o 'MODEL_CACHE_DIR=[^[:space:]]*' | tail -n 1 | cut -d= -f2)"
images_path="$(printf '%s\n' "$env_text" | grep -o 'IMAGES_PATH=[^[:space:]]*' | tail -n 1 | cut -d= -f2)"
if [ -z "$cache_dir" ] || [ -z "$images_path" ]; then
    die "$DOCKERFILE: ENV must set MODEL_CACHE_DIR and IMAGES_PATH"
fi
info "runtime settings from $DOCKERFILE:"
printf '      %s\n' "${instructions[@]}"

# --- the root file system --------------------------------------------------------

rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" \
    "$rootfs$cache_dir" "$rootfs$(dirname "$images_path")"
chmod 1777 "$rootfs/tmp"
chmod 0750 "$rootfs$cache_dir"
install -m 0755 "$binary" "$rootfs/usr/local/bin/azaion-loader"

if [ "$ARCH" = amd64 ]; then
    ldd_output="$(ldd "$binary" 2>&1 || true)"
    if printf '%s\n' "$ldd_output" | grep -q 'not found'; then
        die "the binary links libraries this machine lacks: $ldd_output"
    fi
    # `name => /path (addr)` and `/path/to/ld.so (addr)`; linux-vdso has no file.
    mapfile -t libraries < <(printf '%s\n' "$ldd_output" |
        awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
    for library in "${libraries[@]}"; do
        mkdir -p "$rootfs$(dirname "$library")"
        cp -L "$library" "$rootfs$library"
    done
else
    # No ldd for a foreign binary: its interpreter and NEEDED libraries (none
    # of them needs another), from the cross libc, at the arm64 paths.
    interpreter="$(readelf -l "$binary" | sed -n 's/.*program interpreter: \(.*\)]/\1/p')"
    mapfile -t needed < <(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
    [ -n "$interpreter" ] || die "no program interpreter in $binary"
    mkdir -p "$rootfs$(dirname "$interpreter")" "$rootfs/lib/aarch64-linux-gnu"
    cp -L "/usr/aarch64-linux-gnu/lib/$(basename "$interpreter")" "$rootfs$interpreter" ||
        die "no /usr/aarch64-linux-gnu/lib/$(basename "$interpreter") (apt-get install libc6-arm64-cross)"
    libraries=("$interpreter")
    for library in "${needed[@]}"; do
        cp -L "/usr/aarch64-linux-gnu/lib/$library" "$rootfs/lib/aarch64-linux-gnu/$library" ||
            die "no arm64 $library in /usr/aarch64-linux-gnu/lib"
        libraries+=("/lib/aarch64-linux-gnu/$library")
    done
fi
info "shared libraries: ${libraries[*]:-none (static binary)}"

cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
azaion:x:$uid:$gid:Azaion Loader:/nonexistent:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
azaion:x:$gid:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
# The CA bundle is needed even offline: without roots the HTTP clients cannot
# be built at all (as in the Dockerfile, which installs ca-certificates).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
else
    die "no /etc/ssl/certs/ca-certificates.crt on this machine (apt-get install ca-certificates)"
fi

# Root owns everything but the cache folder, which the user owns (as the
# Dockerfile's `install -d -o`), so a new volume there is writable by it.
tar --numeric-owner --owner=0 --group=0 --exclude="./${cache_dir#/}" \
    -C "$rootfs" -cf "$work/rootfs.tar" .
tar --numeric-owner --owner="$uid" --group="$gid" --no-recursion \
    -C "$rootfs" -rf "$work/rootfs.tar" "./${cache_dir#/}"

changes=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for instruction in "${instructions[@]}"; do
    changes+=(--change "$instruction")
done
docker import "${changes[@]}" "$work/rootfs.tar" "$tag" >/dev/null || die "docker import failed"
if [ "$(docker image inspect --format '{{.Architecture}}' "$tag")" != "$ARCH" ]; then
    # `docker import --platform` needs an experimental daemon before Docker 23
    # (Debian's docker.io is 20.10): write the architecture into the image's
    # config and load it again under the same tag.
    mkdir "$work/image"
    docker save "$tag" | tar -C "$work/image" -xf -
    python3 - "$work/image" "$ARCH" <<'PY' || die "could not set the image's architecture"
import json, sys
folder, arch = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{folder}/manifest.json"))
config_path = f"{folder}/{manifest[0]['Config']}"
config = json.load(open(config_path))
config["architecture"] = arch
if arch == "arm64":
    config["variant"] = "v8"
json.dump(config, open(config_path, "w"))
PY
    docker image rm -f "$tag" >/dev/null
    tar -C "$work/image" -cf - . | docker load >/dev/null || die "docker load of the $ARCH image failed"
    [ "$(docker image inspect --format '{{.Architecture}}' "$tag")" = "$ARCH" ] ||
        die "the image's architecture is not $ARCH"
fi
info "image $tag: $(du -h "$work/rootfs.tar" | cut -f1) uncompressed"

# --- the checks ------------------------------------------------------------------

# 1. --version
if version="$(docker run "${platform[@]}" --rm "$tag" --version 2>&1)" && [ "$version" = "$expected_version" ]; then
    pass "docker run IMAGE --version prints '$version'"
else
    fail "docker run IMAGE --version printed '$version', expected '$expected_version'"
fi

# 2. The default command, as the image defines it, in its own network namespace.
wait_healthy() {
    local container="$1" deadline=$((SECONDS + READY_TIMEOUT_SECONDS)) state health
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(docker inspect --format '{{.State.Status}}' "$container" 2>/dev/null || echo gone)"
        health="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$container" 2>/dev/null || true)"
        [ "$health" = healthy ] && return 0
        [ "$health" = unhealthy ] && return 1
        [ "$state" = running ] || return 1
        sleep 1
    done
    return 1
}

# The hardening of packaging/docker-compose.yml: the loader must work under it.
hardening=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

serve_name="azaion-smoke-serve-$$"
containers+=("$serve_name")
if docker run "${platform[@]}" -d --name "$serve_name" "${hardening[@]}" --network none \
    --health-interval 2s --health-start-period 1s "$tag" >/dev/null; then
    if wait_healthy "$serve_name"; then
        pass "default command (serve, listening as the image's LOADER_LISTEN) is healthy by the image's HEALTHCHECK"
    else
        fail "default command never became healthy ($(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$serve_name" 2>&1))"
        show_logs "$serve_name"
    fi
    process_uid="$(docker top "$serve_name" -o pid,uid,args 2>/dev/null |
        awk 'NR > 1 && /azaion-loader/ {print $2; exit}' || true)"
    if [ "$process_uid" = "$uid" ]; then
        pass "the loader runs as uid $uid, not root"
    else
        fail "the loader runs as uid '${process_uid}', expected $uid"
    fi
    if status_output="$(docker exec "$serve_name" azaion-loader status 2>&1)"; then
        pass "docker exec ... azaion-loader status: $(printf '%s' "$status_output" | grep '^health' | tr -s ' ')"
    else
        fail "docker exec ... azaion-loader status failed: $status_output"
    fi
    started=$SECONDS
    docker stop -t 40 "$serve_name" >/dev/null 2>&1 || true
    took=$((SECONDS - started))
    exit_code="$(docker inspect --format '{{.State.ExitCode}}' "$serve_name" 2>/dev/null || echo '?')"
    # 143 = 128 + SIGTERM: the loader's own exit after its requests in flight.
    if [ "$exit_code" = 143 ] && [ "$took" -lt 35 ]; then
        pass "docker stop: exit code 143 after ${took}s (SIGTERM handled by PID 1)"
    else
        fail "docker stop: exit code $exit_code after ${took}s"
        show_logs "$serve_name"
    fi
else
    fail "docker run (default command) failed"
fi

# 3. The local stack on the host network, reached from this machine.
free_port() {
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
port="$(free_port)" || die "no free port found"

# Unlock through the mounted Docker socket, as the compose file sets it up:
# an archive of a re-tagged copy of this image, packed with the dev stack's
# key fragment; unlock must load that tag back into the daemon.
unlock_tag="azaion-loader-smoke-unlocked:$$"
socket=""
case "$DOCKER_HOST" in unix://*) socket="${DOCKER_HOST#unix://}" ;; esac
socket_mount=()
if [ -n "$socket" ] && [ -S "$socket" ]; then
    if docker tag "$tag" "$unlock_tag" &&
        docker save "$unlock_tag" -o "$work/images.tar" &&
        docker image rm "$unlock_tag" >/dev/null &&
        printf 'dev-key-fragment' >"$work/fragment.bin" &&
        "${run_binary[@]}" "$binary" pack-images --quiet --fragment "$work/fragment.bin" "$work/images.tar" "$work/images.enc" &&
        chmod 0644 "$work/images.enc"; then
        # The socket's group, like the compose file's group_add: DOCKER_GID.
        socket_mount=(-v "$socket:/var/run/docker.sock" --group-add "$(stat -c %g "$socket")")
    else
        fail "could not make an image archive for the unlock check"
    fi
else
    info "DOCKER_HOST is not a local unix socket: the unlock check is skipped"
fi
base="http://127.0.0.1:$port"
# The peers: a host-side local stack (its own loader, on another port, is unused).
peers_port="$(free_port)" || die "no free port found"
: >"$work/peers.log"
"$dev_binary" dev --listen "127.0.0.1:$peers_port" --data-dir "$work/peers" >"$work/peers.log" 2>&1 &
peers_pid=$!
api_url=""
for _ in $(seq 1 120); do
    api_url="$(sed -n 's/^  Resource API (emul.) *//p' "$work/peers.log" | head -n 1)"
    [ -n "$api_url" ] && break
    kill -0 "$peers_pid" 2>/dev/null || break
    sleep 0.5
done
[ -n "$api_url" ] || { cat "$work/peers.log" >&2; die "the local stack's peers did not start"; }
info "peers of the local stack: Resource API at $api_url"
dev_name="azaion-smoke-serve-peers-$$"
containers+=("$dev_name")
if docker run "${platform[@]}" -d --name "$dev_name" "${hardening[@]}" "${socket_mount[@]}" --network host \
    -e "LOADER_LISTEN=127.0.0.1:$port" -e "RESOURCE_API_URL=$api_url" \
    -e "IMAGES_PATH=$cache_dir/images.enc" -e "LOADER_IMAGES=$unlock_tag" \
    "$tag" serve >/dev/null; then
    deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    ready=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        if docker exec "$dev_name" azaion-loader status --url "$base" >/dev/null 2>&1; then
            ready=1
            break
        fi
        [ "$(docker inspect --format '{{.State.Status}}' "$dev_name" 2>/dev/null)" = running ] || break
        sleep 1
    done
    if [ "$ready" = 1 ]; then
        pass "serve (host network, port $port, data on the cache volume, the local stack's peers) is up: docker exec status answers"
    else
        fail "serve did not come up on $base"
        show_logs "$dev_name"
    fi
    if ! command -v curl >/dev/null 2>&1; then
        info "no curl on this machine: the HTTP checks from the host are skipped"
    else
        code="$(curl -s -o "$work/health.json" -w '%{http_code}' "$base/health" || true)"
        if [ "$code" = 200 ] && grep -q healthy "$work/health.json"; then
            pass "GET /health from the host: 200 $(cat "$work/health.json")"
        else
            fail "GET /health from the host: '$code' $(cat "$work/health.json" 2>/dev/null)"
        fi
        login="$(curl -s -X POST "$base/login" -H 'content-type: application/json' \
            -d "{\"email\":\"$DEMO_EMAIL\",\"password\":\"$DEMO_PASSWORD\"}" || true)"
        if curl -sf -X POST "$base/load/demo.txt" -H 'content-type: application/json' \
            -d '{"filename":"demo.txt","folder":"models"}' -o "$work/demo.txt" &&
            grep -q 'Hello from Azaion Loader' "$work/demo.txt"; then
            pass "POST /login ($login) and /load/demo.txt: decrypted demo resource"
        else
            fail "login ($login) or /load/demo.txt failed"
            show_logs "$dev_name"
        fi
        head -c 300000 /dev/urandom >"$work/model.bin"
        if curl -sf -X POST "$base/upload/smoke-model.bin" -F folder=models -F "data=@$work/model.bin" >/dev/null &&
            curl -sf -X POST "$base/load/smoke-model.bin" -H 'content-type: application/json' \
                -d '{"folder":"models"}' -o "$work/model.back" &&
            cmp -s "$work/model.bin" "$work/model.back"; then
            pass "upload then load of a 300 kB file round-trips (data on the cache volume)"
        else
            fail "upload/load round trip failed"
            show_logs "$dev_name"
        fi
        if [ "${#socket_mount[@]}" -gt 0 ]; then
            unlock_state=""
            if docker cp "$work/images.enc" "$dev_name:$cache_dir/images.enc" &&
                curl -sf -X POST "$base/unlock" -H 'content-type: application/json' \
                    -d "{\"email\":\"$DEMO_EMAIL\",\"password\":\"$DEMO_PASSWORD\"}" >/dev/null; then
                deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
                while [ "$SECONDS" -lt "$deadline" ]; do
                    unlock_status="$(curl -s "$base/unlock/status" || true)"
                    unlock_state="$(printf '%s' "$unlock_status" | sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p')"
                    case "$unlock_state" in ready | error) break ;; esac
                    sleep 1
                done
            fi
            if [ "$unlock_state" = ready ] && docker image inspect "$unlock_tag" >/dev/null 2>&1; then
                pass "unlock as uid $uid through the mounted Docker socket loaded $unlock_tag"
            else
                fail "unlock through the mounted Docker socket: state '${unlock_state}' ${unlock_status:-}"
                show_logs "$dev_name"
            fi
        fi
    fi
    if status_output="$(docker run "${platform[@]}" --rm --network host "$tag" status --url "http://localhost:$port" 2>&1)"; then
        pass "status --url http://localhost:$port from a second container (host names resolve in the image)"
    else
        fail "status --url http://localhost:$port from a second container: $status_output"
    fi
else
    fail "docker run --network host ... serve failed"
fi

# The fingerprint a device registers is the one the loader sees: in a
# container the system disk is the overlay, so it may differ from the host's.
host_hash="$("${run_binary[@]}" "$binary" hardware 2>/dev/null | sed -n 's/^hash: //p' || true)"
container_hash="$(docker run "${platform[@]}" --rm "$tag" hardware 2>/dev/null | sed -n 's/^hash: //p' || true)"
if [ -n "$host_hash" ] && [ "$host_hash" = "$container_hash" ]; then
    info "hardware fingerprint: the same on the host and in the container"
else
    info "hardware fingerprint differs: host ${host_hash:-?}, container ${container_hash:-?} (register the container's)"
fi

if [ "$failures" -eq 0 ]; then
    printf 'PASS: container smoke test, %d checks\n' "$checks"
else
    printf 'FAIL: container smoke test, %d of %d checks failed\n' "$failures" "$checks"
    exit 1
fi
