#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port, data under DIR.
#   scripts/postgres.sh start DIR   prints "export AMC_TEST_POSTGRES_URL=..." (eval it)
#   scripts/postgres.sh stop DIR
# Installs Debian's postgresql package first when initdb/pg_ctl are missing (as root, with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ] || { [ "$1" != start ] && [ "$1" != stop ]; }; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
have_pg() {
  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if [ "$1" = start ] && ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; } >&2
  else
    echo "postgres.sh: PostgreSQL is not installed and apt-get cannot install it here (not root?)" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m tests.pg "$1" "$2"
