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
.venv-test/bin/python -m pytest --durations=15 "${args[@]}" "$@"
