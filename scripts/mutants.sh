#!/usr/bin/env bash
# Mutation testing (issue 12, TESTING.md): cargo-mutants changes the code one
# small way at a time and checks that some test fails. Slow on two cores
# (src/domain and src/app hold about 900 mutants: many hours), so not in CI.
#
#   scripts/mutants.sh                                  # src/domain and src/app, lib + API tests
#   scripts/mutants.sh --file src/domain/split.rs -- --lib   # one file, lib tests only
#
# Results land in mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --locked
if [ "$#" -eq 0 ]; then
    set -- --file 'src/domain/**/*.rs' --file 'src/app/**/*.rs' -- --lib --test api
fi
# In place: one target dir, built incrementally (a copy would rebuild every dependency).
exec cargo mutants --in-place --no-shuffle "$@"
