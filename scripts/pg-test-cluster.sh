#!/usr/bin/env bash
# PostgreSQL for the test suite (tests/integration/test_replicas.py, tests/contract/test_store_contract.py).
#   scripts/pg-test-cluster.sh start   prints shell `export` lines: MPS_TEST_DATABASE_URL, and
#                                      PG_TEST_CLUSTER_DIR when it started a cluster of its own
#   scripts/pg-test-cluster.sh stop    stops and removes that cluster
# A server already answering at MPS_TEST_DATABASE_URL, or postgres@127.0.0.1:5432 (trust
# auth), is used as it is. Otherwise Debian's postgresql is installed if missing and a
# throwaway cluster is made with initdb in a temporary folder, listening on 127.0.0.1 on a
# free port, trust authentication, owned by the current user (postgres when root); tests create and drop their
# own databases in it.
set -euo pipefail

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        echo "== installing PostgreSQL (Debian package) for the tests" >&2
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
        dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi
    echo "$dir"
}

answers() {  # answers DSN: true when a PostgreSQL server accepts the DSN
    PGCONNECT_TIMEOUT=3 .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import asyncio, sys
import asyncpg
async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1], timeout=3)
    await conn.close()
asyncio.run(main())
PY
}

case "${1:-}" in
start)
    cd "$(dirname "$0")/.."
    for dsn in "${MPS_TEST_DATABASE_URL:-}" "postgresql://postgres@127.0.0.1:5432/postgres"; do
        # PG_TEST_THROWAWAY=1: always start a cluster of its own (to try this path).
        if [ -n "$dsn" ] && [ "${PG_TEST_THROWAWAY:-}" != 1 ] && answers "$dsn"; then
            echo "export MPS_TEST_DATABASE_URL='$dsn'"
            exit 0
        fi
    done
    bin="$(pg_bin)"
    dir="$(mktemp -d "${TMPDIR:-/tmp}/mps-pg.XXXXXX")"
    port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as=()
    if [ "$(id -u)" -eq 0 ]; then  # PostgreSQL refuses to run as root: use Debian's postgres user
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1
    # Throwaway: no fsync (the durability tests are on SQLite); sockets in the temp folder.
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >&2
    echo "export MPS_TEST_DATABASE_URL='postgresql://postgres@127.0.0.1:$port/postgres'"
    echo "export PG_TEST_CLUSTER_DIR='$dir'"
    ;;
stop)
    if [ -n "${PG_TEST_CLUSTER_DIR:-}" ] && [ -d "$PG_TEST_CLUSTER_DIR/data" ]; then
        bin="$(pg_bin)"
        as=()
        if [ "$(id -u)" -eq 0 ]; then as=(runuser -u postgres --); fi
        "${as[@]}" "$bin/pg_ctl" -D "$PG_TEST_CLUSTER_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_TEST_CLUSTER_DIR"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
