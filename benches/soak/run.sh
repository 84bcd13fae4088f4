#!/usr/bin/env bash
# Memory soak: connect/edit/disconnect churn against our server (the release `blog` example,
# workspace `blog`) while its RSS is sampled; after the churn, and once the room is evicted,
# the RSS should be back at its baseline.
#
#   bash benches/soak/run.sh                       # 60 s warm-up, then 10 minutes of churn
#   DURATION=120 WARMUP=30 bash benches/soak/run.sh
#   DATA=map AWARENESS_IDS=worker bash benches/soak/run.sh
#
# It runs the `churn` scenario of the load generator (loadgen/) against a freshly started server
# (empty data directory), in four phases:
#   1. warm-up   WARMUP=60 s of the same churn as phase 3 (allocator pools, the SQLite cache,
#                the room's buffers reach their working size).
#   2. idle      IDLE=65 s without connections: the room is evicted (the blog example keeps the
#                default room_idle_timeout of 60 s; it has no setting for it). The RSS at the
#                end is the baseline. WARMUP=0 skips 1 and 2: the baseline is then the fresh
#                server's RSS.
#   3. churn     DURATION=600 s: WORKERS=50 clients, each over and over: connects, sends step 1
#                and an awareness state, answers the server's step 1 and applies its step 2,
#                makes EDITS=3 updates (one frame each), sends SYNC_STATUS and waits for its echo
#                (applied and durable), then disconnects with a close frame, or (every
#                ABRUPT_EVERY=10th connection) drops the TCP connection without one. A worker
#                keeps its doc and client id between connections, as a reconnecting client does;
#                AWARENESS_IDS=connection (default) gives each connection a new awareness client
#                id, as a page load does (=worker: the worker's id every time).
#   4. idle      IDLE s again (the room is evicted): the final RSS.
# Data: DATA=list (default): each worker owns one Y.Array and every edit replaces its single
# value; the deleted items are consecutive, so Yjs merges them into one tombstone per worker and
# the doc keeps its size however many edits are made (but for a few bytes as the clock numbers
# grow; the JSON gives its size after the warm-up and after the churn). DATA=map: every edit overwrites one of KEYS=100 keys of one
# Y.Map: the content is bounded, but each overwritten value leaves a tombstone item (Yjs cannot
# merge deleted map entries), so the doc, and the server's memory with it, grows with every edit.
#
# The server runs with SERVER_ENV=MIMALLOC_PURGE_DELAY=0 (its allocator, mimalloc, then returns
# freed pages to the OS at once instead of on later allocator activity; an idle server would
# otherwise keep counting memory it has freed). SERVER_ENV= runs it as shipped. Baseline and
# final RSS are taken after 100 `GET /` requests and a second, for the same reason; the RSS
# before them is reported too.
#
# The server's RSS and the connections made so far are sampled every SAMPLE=5 s (progress on
# stderr every 30 s); connections/s in the churn's first and last minute show whether the
# server slows down as the churn goes on. The result is a one-line JSON summary (every sample
# included) and a human line; the JSON is also appended to $OUT (default: a temporary file,
# named at the end). The exit status is non-zero if a connection failed.
# Other settings: PORT=39150, THREADS=1 (generator worker threads), EXTRA_ARGS (passed on).
set -euo pipefail
cd "$(dirname "$0")/../.."

case "${1:-}" in
-h | --help)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 0
  ;;
esac

PORT=${PORT:-39150}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-50}
DURATION=${DURATION:-600}
WARMUP=${WARMUP:-60}
IDLE=${IDLE:-65}
EDITS=${EDITS:-3}
DATA=${DATA:-list}
KEYS=${KEYS:-100}
AWARENESS_IDS=${AWARENESS_IDS:-connection}
ABRUPT_EVERY=${ABRUPT_EVERY:-10}
SAMPLE=${SAMPLE:-5}
SERVER_ENV=${SERVER_ENV-MIMALLOC_PURGE_DELAY=0}
EXTRA_ARGS=${EXTRA_ARGS:-}
OUT=${OUT:-$(mktemp -t sync-soak.XXXXXX.jsonl)}

ulimit -n "$(ulimit -Hn)"

echo "building (release)..." >&2
cargo build --release -p epicenter-server --example blog >&2
cargo build --release -p epicenter-loadgen >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples
loadgen=${CARGO_TARGET_DIR:-target}/release/sync_load

data=$(mktemp -d)
server=
stop_server() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
  rm -rf "$data"
}
trap stop_server EXIT

# shellcheck disable=SC2086 # SERVER_ENV is split into assignments on purpose
env $SERVER_ENV EPICENTER_DATA_DIR="$data" PORT="$PORT" RUST_LOG=warn NO_COLOR=1 \
  "$bin/blog" >"$data/server.log" &
server=$!
started=
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    started=1
    break
  fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$started" ]; then
  echo "the server did not start on port $PORT" >&2
  exit 1
fi
sleep 0.5
url="ws://127.0.0.1:$PORT/workspaces/blog/sync"
echo "== churn against ours ($url): ${WARMUP} s warm-up, ${DURATION} s churn; server env: ${SERVER_ENV:-none}" >&2
status=0
# shellcheck disable=SC2086 # EXTRA_ARGS is split into flags on purpose
"$loadgen" churn --url "$url" --server-pid "$server" --threads "$THREADS" \
  --workers "$WORKERS" --duration "$DURATION" --warmup "$WARMUP" --idle "$IDLE" \
  --edits "$EDITS" --data "$DATA" --keys "$KEYS" --awareness-ids "$AWARENESS_IDS" \
  --abrupt-every "$ABRUPT_EVERY" --sample-s "$SAMPLE" $EXTRA_ARGS | tee -a "$OUT" || status=1
warnings=$(grep -c WARN "$data/server.log" || true)
if [ "$warnings" -gt 0 ]; then
  echo "the server logged $warnings warnings; the first ones:" >&2
  grep WARN "$data/server.log" | head -5 >&2
fi
sed -i -n '/^{/p' "$OUT"
echo "JSON summary: $OUT" >&2
exit "$status"
