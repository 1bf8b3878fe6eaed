#!/usr/bin/env bash
# The test command: installs into .venv if needed, lints, starts a throwaway PostgreSQL server for the
# multi-worker tests (unless AMC_TEST_POSTGRES_URL names one), runs the test suite, stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
# the browser test drives Debian's Chromium (Playwright's Python package, no browser download): install it
# when missing and we may (root with apt-get); otherwise that one test skips
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } >&2 \
    || echo "test.sh: could not install chromium; the browser test will skip" >&2
fi
.venv/bin/ruff check .
.venv/bin/mypy
if [ -z "${AMC_TEST_POSTGRES_URL:-}" ]; then
  pgdir=$(mktemp -d "${TMPDIR:-/tmp}/amc-pg-XXXXXX")
  trap './scripts/postgres.sh stop "$pgdir" || true; rm -rf "$pgdir"' EXIT
  if pgenv=$(./scripts/postgres.sh start "$pgdir"); then
    eval "$pgenv"
  elif [ "${AMC_REQUIRE_POSTGRES:-0}" = 1 ]; then
    echo "test.sh: cannot start PostgreSQL (AMC_REQUIRE_POSTGRES=1)" >&2
    exit 1
  else
    echo "test.sh: no PostgreSQL server; the PostgreSQL tests will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
