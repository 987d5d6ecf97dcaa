#!/usr/bin/env bash
# Runs the whole test suite, setting up what it needs on a fresh machine:
# a private Docker daemon for the Docker tests (Debian's docker.io is
# installed when no dockerd is on PATH), and moto from PyPI (a second S3
# server, in target/moto-venv). Where no daemon or no moto can be had, their
# tests skip with a printed reason - unless CI=true (or AZAION_REQUIRE_DOCKER=1,
# AZAION_REQUIRE_MOTO=1), where they must run.
#
#   scripts/test.sh            # everything
#   scripts/test.sh api        # extra arguments go to `cargo test` (a filter, --test api, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CI:-}" = "true" ]; then
    export AZAION_REQUIRE_DOCKER=1
    export AZAION_REQUIRE_MOTO=1
fi

if [ -z "${AZAION_MOTO_PYTHON:-}" ]; then
    if moto_python="$(scripts/moto.sh)"; then
        export AZAION_MOTO_PYTHON="$moto_python"
    else
        echo "test.sh: moto could not be installed; the moto tests will skip (or fail where required)" >&2
    fi
fi

docker_dir=""
cleanup() {
    if [ -n "$docker_dir" ]; then
        scripts/docker-daemon.sh stop "$docker_dir" || true
    fi
}
trap cleanup EXIT

if [ -z "${DOCKER_HOST:-}" ] && [ "${AZAION_SKIP_DOCKER_SETUP:-}" != "1" ]; then
    docker_dir="$(mktemp -d /tmp/azaion-docker.XXXXXX)"
    if exports="$(scripts/docker-daemon.sh start "$docker_dir")"; then
        eval "$exports"
        echo "test.sh: private Docker daemon at $DOCKER_HOST"
    else
        echo "test.sh: no Docker daemon could be started; Docker tests will skip (or fail where required)" >&2
        rmdir "$docker_dir" 2>/dev/null || true
        docker_dir=""
    fi
fi

cargo test --locked --all-targets "$@"

# The HTTP contract, checked by schemathesis against the running local stack
# (only for a full run: a filtered run is for iterating).
if [ "$#" -eq 0 ]; then
    scripts/schemathesis.sh
    # The status page in headless Chromium; screenshot in target/artifacts/status-page.png.
    scripts/browser-test.sh
fi
