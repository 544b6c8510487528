#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests that need a real one (CI starts it; see .ci/run).
#   scripts/pg-test-server.sh start DIR   initdb in DIR, serve on a free local port (socket and data in DIR),
#                                         create role/db "sslc", print the storage URL (also in DIR/url)
#   scripts/pg-test-server.sh stop DIR    stop that server (fast shutdown) and remove DIR
# Debian's postgresql package provides the binaries; the server refuses to run as root, so as root it runs as
# the "postgres" user the package creates.
set -euo pipefail
command=${1:-}; dir=${2:-}
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/pg_ctl" ] || { echo "no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 2; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$command" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log"
    # fsync off: a test server's data is thrown away, and fsync is most of the cost of Optuna's many commits.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" >/dev/null
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE sslc LOGIN PASSWORD 'sslc'" -c "CREATE DATABASE sslc OWNER sslc" >/dev/null
    echo "postgresql://sslc:sslc@127.0.0.1:$port/sslc" | tee "$dir/url"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
