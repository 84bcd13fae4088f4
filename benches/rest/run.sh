#!/usr/bin/env bash
# REST throughput of the release `blog` example, measured with wrk (Debian package `wrk`).
#
#   bash benches/rest/run.sh            # 2 threads, 64 connections, 10 s per case
#   DURATION=30s CONNECTIONS=128 bash benches/rest/run.sh
#   BLOG=/path/to/blog bash benches/rest/run.sh   # a given server binary (no build)
#
# Cases: GET one row, GET a 1,000-row list, POST upsert (unique ids, SQLite storage on,
# every response sent only after the write is durable).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-39130}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

if [ -z "${BLOG:-}" ]; then
  cargo build --release --example blog >/dev/null
  BLOG="${CARGO_TARGET_DIR:-target}/release/examples/blog"
fi
data=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
EPICENTER_DATA_DIR="$data" PORT="$PORT" RUST_LOG=warn "$BLOG" >/dev/null &
server=$!
base="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$base/" >/dev/null && break; sleep 0.1; done

# 1,000 rows to read.
wrk -t1 -c8 -d30s -s benches/rest/seed.lua "$base/workspaces/blog/tables/posts" >/dev/null &
seeder=$!
until [ "$(curl -sf "$base/workspaces/blog/tables/posts?offset=999&limit=1" | grep -c '"id"')" = 1 ]; do sleep 0.2; done
kill "$seeder" 2>/dev/null || true; wait "$seeder" 2>/dev/null || true

echo "== GET one row"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$base/workspaces/blog/tables/posts/seed-500"
echo "== GET a 1,000-row list"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$base/workspaces/blog/tables/posts?limit=1000"
echo "== POST upsert (durable)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/rest/post.lua "$base/workspaces/blog/tables/posts"
