#!/usr/bin/env bash
# WebSocket sync load: runs the load generator (`loadgen/`, binary `sync_load`) against our
# server (the release `blog` example, workspace `blog`) or the reference y-websocket server
# (@y/websocket-server from tests/js/node_modules: `npm ci --prefix tests/js` first).
#
#   bash benches/sync/run.sh ours                  # every scenario against our server
#   bash benches/sync/run.sh reference             # the same against the reference server
#   bash benches/sync/run.sh compare fanout        # ours, then the reference, then the
#                                                  # floor: one table from one run
#   bash benches/sync/run.sh ours fanout join      # only some scenarios
#   FANOUT_RATE=300 JOIN_MB=5 bash benches/sync/run.sh reference fanout join
#
# Scenarios and their defaults (environment variables):
#   connect    CONNECT_CLIENTS=10000 connections to one room, at most CONCURRENCY=200
#              handshakes at a time; server RSS per connection
#   fanout     FANOUT_CLIENTS=100 clients, FANOUT_WRITERS=10 of them writing FANOUT_RATE=1000
#              updates/s in all for FANOUT_DURATION=20 s; deliveries/s, latency, lost, convergence.
#              Then the floor at the same size and rate (raw loopback writes, one update per
#              write and FLOOR_PER_WRITE=4 per write; no server; its receivers on one thread,
#              like the generator's), with its CPU per delivery and its latency, for the
#              same table.
#              FANOUT_SLOW=N (default 0) adds N slow consumers: they join the room, complete the
#              handshake, then never read until the run is over (the server should close them
#              with 1013 once its send queue for one overflows); afterwards each reads to the
#              end and its close code is reported, with the server's own count of slow-consumer
#              closes (from its log), its peak RSS and the kernel's TCP memory. Latency, lost and convergence count the N normal ones.
#              Compare with FANOUT_SLOW=0 at the same settings for the p99. FANOUT_VALUE_BYTES=B
#              (default 0: an 8-byte time) makes each update carry a B-byte string: at 1,000
#              updates/s of ~50-byte updates the kernel's socket buffers (~3-4 MB a connection)
#              hold a minute of a slow consumer's backlog before the server's queue fills.
#   join       JOIN_CLIENTS=150 empty clients join a room holding JOIN_MB=20 MB at once;
#              time until all have it, server peak RSS (targets: < 3 s, < 500 MB); the
#              joiners stream the step 2 (length + CRC-32, checked against one full fetch)
#              so the generator's own memory and CPU stay small; each joiner's socket has a
#              4 MiB receive buffer (EXTRA_ARGS="--recv-buffer 0" for the kernel's autotuning,
#              which makes the generator's one thread the limit: see loadgen/src/main.rs)
#   awareness  AWARENESS_CLIENTS=200 clients set awareness every AWARENESS_INTERVAL_MS=1000 ms
#              for AWARENESS_DURATION=10 s; messages/s, latency, server CPU
# Other settings: PORT=39140, THREADS=1 (generator worker threads; the other core is the
# server's), EXTRA_ARGS (passed to every scenario), STORAGE=sqlite (ours stores every
# update durably in SQLite; STORAGE=memory stores nothing, to measure the sync path alone:
# the reference server stores nothing either).
#
# Each scenario gets a freshly started server (so its memory figures are its own) and prints
# a one-line JSON summary and a human line; all JSON lines are also collected in
# $OUT (default: a temporary file, named at the end). The exit status is non-zero if a
# scenario failed its checks. The file descriptor limit is raised to the hard limit (10,000
# connections need as many on each side).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${1:-}
case "$target" in
ours | reference | compare) shift ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(connect fanout join awareness)

PORT=${PORT:-39140}
THREADS=${THREADS:-1}
CONCURRENCY=${CONCURRENCY:-200}
CONNECT_CLIENTS=${CONNECT_CLIENTS:-10000}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-100}
FANOUT_WRITERS=${FANOUT_WRITERS:-10}
FANOUT_RATE=${FANOUT_RATE:-1000}
FANOUT_DURATION=${FANOUT_DURATION:-20}
FANOUT_SLOW=${FANOUT_SLOW:-0}
FANOUT_VALUE_BYTES=${FANOUT_VALUE_BYTES:-0}
JOIN_CLIENTS=${JOIN_CLIENTS:-150}
JOIN_MB=${JOIN_MB:-20}
AWARENESS_CLIENTS=${AWARENESS_CLIENTS:-200}
AWARENESS_DURATION=${AWARENESS_DURATION:-10}
AWARENESS_INTERVAL_MS=${AWARENESS_INTERVAL_MS:-1000}
EXTRA_ARGS=${EXTRA_ARGS:-}
STORAGE=${STORAGE:-sqlite}
OUT=${OUT:-$(mktemp -t sync-load.XXXXXX.jsonl)}

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((CONNECT_CLIENTS + 100)) ]; then
  echo "warning: open-file limit $(ulimit -n) is below what $CONNECT_CLIENTS connections need" >&2
fi

reference_server=tests/js/node_modules/@y/websocket-server/src/server.js
if [ "$target" != ours ] && [ ! -f "$reference_server" ]; then
  echo "the reference server is missing: run 'npm ci --prefix tests/js'" >&2
  exit 1
fi

echo "building (release)..." >&2
cargo build --release -p epicenter-server --example blog >&2
cargo build --release -p epicenter-loadgen >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples
loadgen=${CARGO_TARGET_DIR:-target}/release/sync_load

server=
data=
stop_server() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
  if [ -n "$data" ]; then
    rm -rf "$data"
    data=
  fi
}
trap stop_server EXIT

# Starts a fresh server; sets $server (its pid) and $url (the room for scenario $1).
start_server() {
  stop_server
  if [ "$target" = ours ]; then
    data=$(mktemp -d)
    log="$data/server.log"
    store=$data
    [ "$STORAGE" = memory ] && store=memory
    EPICENTER_DATA_DIR="$store" PORT="$PORT" RUST_LOG=warn NO_COLOR=1 "$bin/blog" >"$log" &
    server=$!
    url="ws://127.0.0.1:$PORT/workspaces/blog/sync"
  else
    log=
    HOST=127.0.0.1 PORT="$PORT" node "$reference_server" >/dev/null &
    server=$!
    url="ws://127.0.0.1:$PORT/bench-$1"
  fi
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.2
      return 0
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  echo "the $target server did not start on port $PORT" >&2
  exit 1
}

kinds=("$target")
[ "$target" = compare ] && kinds=(ours reference)
status=0
for scenario in "${scenarios[@]}"; do
  case "$scenario" in
  connect) flags=(--clients "$CONNECT_CLIENTS" --concurrency "$CONCURRENCY") ;;
  fanout) flags=(--clients "$FANOUT_CLIENTS" --writers "$FANOUT_WRITERS" --rate "$FANOUT_RATE"
    --duration "$FANOUT_DURATION" --concurrency "$CONCURRENCY" --slow-clients "$FANOUT_SLOW"
    --value-bytes "$FANOUT_VALUE_BYTES") ;;
  join) flags=(--clients "$JOIN_CLIENTS" --doc-mb "$JOIN_MB") ;;
  awareness) flags=(--clients "$AWARENESS_CLIENTS" --duration "$AWARENESS_DURATION"
    --interval-ms "$AWARENESS_INTERVAL_MS" --concurrency "$CONCURRENCY") ;;
  *)
    echo "unknown scenario: $scenario (connect, fanout, join, awareness)" >&2
    exit 2
    ;;
  esac
  for target in "${kinds[@]}"; do
    start_server "$scenario"
    run_flags=("${flags[@]}")
    # Our server logs (warn) each slow-consumer close: the generator counts them.
    if [ "$scenario" = fanout ] && [ -n "$log" ]; then
      run_flags+=(--server-log "$log")
    fi
    echo "== $scenario against $target ($url)" >&2
    # shellcheck disable=SC2086 # EXTRA_ARGS is split into flags on purpose
    if ! "$loadgen" "$scenario" --url "$url" --server-pid "$server" --threads "$THREADS" \
      "${run_flags[@]}" $EXTRA_ARGS | tee -a "$OUT"; then
      status=1
    fi
    stop_server
  done
  # The floor at the same size and rate, in the same run: raw loopback writes, one update
  # per write and FLOOR_PER_WRITE (default 4) per write (see loadgen/src/floor.rs).
  if [ "$scenario" = fanout ]; then
    for per_write in 1 "${FLOOR_PER_WRITE:-4}"; do
      echo "== floor, $per_write update(s) per write" >&2
      "$loadgen" floor --clients "$FANOUT_CLIENTS" --rate "$FANOUT_RATE" \
        --duration "$FANOUT_DURATION" --per-write "$per_write" | tee -a "$OUT" || status=1
    done
  fi
done
# tee copies the human lines too; keep only the JSON ones in $OUT.
sed -i -n '/^{/p' "$OUT"
echo "JSON summaries: $OUT" >&2
exit "$status"
