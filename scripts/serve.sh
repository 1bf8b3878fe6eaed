#!/usr/bin/env bash
# The service on this machine: `amc serve` on 127.0.0.1 and one `amc worker`, both on the SQLite files
# under service/ (jobs and tokens in service.db, the huey queue in queue.db, one run folder per job in
# runs/; the worker under `--nice 10`, so that the server stays responsive). Prints the page's URL with a
# fresh token for $USER (the token travels in the URL's #fragment, which the browser never sends to the
# server). Ctrl-C stops both.
# PORT=8000, AMC_SERVICE_ROOT=service and extra flags for the worker (e.g. --device cpu) may be given.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-venv.sh
.venv/bin/python -c "import fastapi, uvicorn, huey, multipart" 2>/dev/null || .venv/bin/python -m pip install -q -e ".[dev]"
export AMC_SERVICE_ROOT="${AMC_SERVICE_ROOT:-service}"
PORT="${PORT:-8000}"
TOKEN="$(.venv/bin/amc token create "${USER:-user}" --note serve.sh | head -1)"
.venv/bin/amc serve --host 127.0.0.1 --port "$PORT" &
SERVER=$!
.venv/bin/amc worker --nice 10 "$@" &
WORKER=$!
trap 'kill -INT $SERVER $WORKER 2>/dev/null || true; wait' EXIT INT TERM
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done
echo "amc-service on http://127.0.0.1:$PORT/  (API docs: http://127.0.0.1:$PORT/docs)"
echo "open:  http://127.0.0.1:$PORT/#token=$TOKEN"
echo "token: $TOKEN   (curl -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:$PORT/api/v1/jobs)"
wait
