#!/usr/bin/env bash
# Lints a live /metrics with `promtool check metrics` (issue 14): every name
# follows the Prometheus conventions, each family is declared once, and
# promtool reports nothing. Installs Debian's `prometheus` package (which
# carries promtool) when promtool is missing.
#
#   scripts/promtool-check.sh http://127.0.0.1:PORT     # a running loader
set -euo pipefail
BASE=${1:?usage: promtool-check.sh BASE_URL}
log() { printf 'promtool-check.sh: %s\n' "$*" >&2; }

if ! command -v promtool >/dev/null 2>&1; then
    log "installing Debian's prometheus package for promtool"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
        || { $SUDO apt-get update >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi

metrics=$(mktemp)
trap 'rm -f "$metrics"' EXIT
python3 - "$BASE/metrics" "$metrics" <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    assert r.status == 200, r.status
    open(sys.argv[2], "wb").write(r.read())
PY
families=$(grep -c '^# TYPE ' "$metrics" || true)
report=$(promtool check metrics <"$metrics" 2>&1) || { log "promtool failed: $report"; exit 1; }
if [ -n "$report" ]; then
    log "promtool reports:"
    printf '%s\n' "$report" >&2
    exit 1
fi
log "promtool check metrics: clean ($families families)"
