#!/usr/bin/env bash
# Start a private, throwaway PostgreSQL for the `postgres` tests and print its URL.
#
# Idempotent: installs the server with apt-get only if it is missing, creates the cluster in
# $EXITNAS_PG_DIR (default /tmp/exitnas-postgres) only once, starts it only if it is down, and
# (re)creates role `exitnas` (password auth) owning database `exitnas_test`. The server listens
# on 127.0.0.1:$EXITNAS_PG_PORT (default 55432) and on a Unix socket in $EXITNAS_PG_DIR that
# only its owner can reach; it runs as user `postgres` when this script runs as root.
# Durability is switched off (fsync, synchronous_commit): test data only.
#
# Progress goes to stderr; stdout is the single line
#   EXITNAS_TEST_POSTGRES_URL=postgresql+psycopg2://exitnas:PASSWORD@127.0.0.1:PORT/exitnas_test
# Exits non-zero, with the server log, if the server is not up within $EXITNAS_PG_WAIT_S seconds.
set -euo pipefail

PG_DIR="${EXITNAS_PG_DIR:-/tmp/exitnas-postgres}"
PG_PORT="${EXITNAS_PG_PORT:-55432}"
PG_PASSWORD="${EXITNAS_PG_PASSWORD:-exitnas}"
WAIT_S="${EXITNAS_PG_WAIT_S:-60}"
DATA="$PG_DIR/data"
LOG="$PG_DIR/server.log"

say() { echo "postgres.sh: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

[[ "$PG_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]] || die "EXITNAS_PG_PASSWORD: use letters, digits, . _ ~ -"
[[ "$PG_PORT" =~ ^[0-9]+$ ]] || die "EXITNAS_PG_PORT is not a number: $PG_PORT"

find_bindir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$dir" ]] && command -v initdb >/dev/null; then
    dir="$(dirname "$(command -v initdb)")"
  fi
  echo "$dir"
}

bindir="$(find_bindir)"
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed; installing it with apt-get needs root"
  say "installing PostgreSQL with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 600 apt-get install -y -qq --no-install-recommends postgresql >&2
  bindir="$(find_bindir)"
  [[ -n "$bindir" && -x "$bindir/initdb" ]] || die "apt-get installed no initdb"
fi

# The server refuses to run as root: as root, run it (and its admin client) as `postgres`.
if [[ $EUID -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "no user 'postgres' to run the server as"
  as_server() { (cd / && runuser -u postgres -- "$@"); }
  mkdir -p "$PG_DIR"
  chown postgres: "$PG_DIR"
else
  as_server() { (cd / && "$@"); }
  mkdir -p "$PG_DIR"
fi
chmod 700 "$PG_DIR"
as_server test -w "$PG_DIR" || die "$PG_DIR is not writable by the server's user"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
  say "creating a cluster in $DATA"
  as_server "$bindir/initdb" -D "$DATA" -E UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi

if as_server "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  say "server already running from $DATA"
else
  say "starting the server on 127.0.0.1:$PG_PORT"
  options="-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR"
  options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if ! as_server timeout $((WAIT_S + 15)) "$bindir/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$WAIT_S" \
    -o "$options" start >/dev/null; then
    tail -n 30 "$LOG" >&2 || true
    die "the server did not start (log: $LOG)"
  fi
fi

for ((i = 0; ; i++)); do
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 && break
  if ((i >= WAIT_S)); then
    tail -n 30 "$LOG" >&2 || true
    die "no server accepts connections on 127.0.0.1:$PG_PORT after ${WAIT_S}s" \
      "(is another program using the port, or the server running on another one?)"
  fi
  sleep 1
done

# Role and database, created once; the password is (re)set every time.
as_server timeout 60 "$bindir/psql" -h "$PG_DIR" -p "$PG_PORT" -d postgres -X -q \
  -v ON_ERROR_STOP=1 -v pw="$PG_PASSWORD" >/dev/null <<'SQL'
SELECT 'CREATE ROLE exitnas LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'exitnas')
\gexec
ALTER ROLE exitnas LOGIN PASSWORD :'pw';
SELECT 'CREATE DATABASE exitnas_test OWNER exitnas'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'exitnas_test')
\gexec
SQL

# The URL works: password login over TCP as `exitnas`.
PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=10 timeout 60 "$bindir/psql" -h 127.0.0.1 \
  -p "$PG_PORT" -U exitnas -d exitnas_test -X -q -At -c "SELECT 1" >/dev/null ||
  die "cannot log in as exitnas on 127.0.0.1:$PG_PORT"
say "ready"
echo "EXITNAS_TEST_POSTGRES_URL=postgresql+psycopg2://exitnas:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/exitnas_test"
