#!/usr/bin/env bash
# `make test`'s pytest run, in the isolated .venv-test. Where Debian's PostgreSQL server binaries are installed
# (CI installs them), a throwaway server is started for the tests that need a real one and stopped however the
# tests end; without them those tests skip, saying why. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    pg_dir=$(mktemp -d /tmp/sslc-test-pg.XXXXXX)
    trap 'scripts/pg-test-server.sh stop "$pg_dir"' EXIT
    args+=("--postgres-url=$(scripts/pg-test-server.sh start "$pg_dir")")
fi
# --durations: the slowest tests, so a CI log shows where its minutes go.
# Two pytest-xdist workers, each taking whole test files (module fixtures are built once, the benchmark fixtures'
# cache is written by one worker): much of the suite waits on Ray, subprocesses and one-thread torch, so on 2 cores
# the suite took 909 s against 1234 s in one process (2026-12-07, all 633 passed both ways).
.venv-test/bin/python -m pytest -n 2 --dist loadfile --durations=15 "${args[@]}" "$@"
