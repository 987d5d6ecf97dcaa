#!/usr/bin/env bash
# Prints the path of a Python that runs moto's S3 server (`python -m moto.server`),
# installing moto from PyPI into a venv under target/ on first use (kept between
# runs). moto is the second, independent S3 server of the tests and benchmarks
# (issue 16): the S3 adapter must not be tuned to one server's quirks.
#
#   python="$(scripts/moto.sh)"; "$python" -m moto.server -H 127.0.0.1 -p 9000
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(pwd)/target/moto-venv"
# moto 5 answers the S3 calls the loader makes (multipart, ranged GET, metadata).
MOTO_SPEC='moto[server]>=5.1,<6'

if ! "$VENV/bin/python" -c 'import moto.server, flask' >/dev/null 2>&1; then
    printf 'moto.sh: installing %s into %s\n' "$MOTO_SPEC" "$VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_SPEC" >&2
fi
printf '%s\n' "$VENV/bin/python"
