#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with schemathesis.
#
# Builds the `blog` example, then runs two passes, each against a fresh server on a free
# port with a fresh data directory:
#   1. open:  no auth (the default), every operation fuzzed;
#   2. token: EPICENTER_TOKEN set and sent as `Authorization: Bearer`, with the
#             `ignored_auth` check (requests without or with a wrong token must get 401/403).
# Every response is checked for a 5xx, a status code or content type the document does not
# list, and a body that does not match the documented schema. Exits non-zero when any pass
# reports a failure or an error, or when the server dies.
#
#   tests/schemathesis/run.sh                     # from anywhere in the repo
#   ST=/path/to/st tests/schemathesis/run.sh      # use that schemathesis instead
#   SCHEMATHESIS_SEED=123 SCHEMATHESIS_MAX_EXAMPLES=500 tests/schemathesis/run.sh
#
# Reports (JUnit, and a HAR file of every request and response), schemathesis' output and
# the servers' logs go to target/schemathesis/<pass>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

# At most this many generated cases per operation and phase. The seed is fixed so that CI
# runs the same cases every time; set SCHEMATHESIS_SEED to explore other inputs.
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
seed="${SCHEMATHESIS_SEED:-20261126}"
# A bound on each pass, in case something hangs.
time_limit="${SCHEMATHESIS_TIME_LIMIT:-300}"
checks="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

st="${ST:-}"
if [ -z "$st" ]; then
  st="$(bash "$here/install.sh")"
fi
"$st" --version

out="$root/target/schemathesis"
rm -rf "$out"
mkdir -p "$out"

echo "schemathesis: building the blog example"
cargo build --quiet --example blog
target_dir="$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
blog="${target_dir:-$root/target}/debug/examples/blog"

server_pid=""
data_dir=""
stop_server() {
  if [ -n "$server_pid" ]; then
    if kill -0 "$server_pid" 2>/dev/null; then
      kill -TERM "$server_pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$data_dir" ]; then
    rm -rf "$data_dir"
    data_dir=""
  fi
}
trap stop_server EXIT

# start_server LOG [VAR=VALUE...]: starts the blog example with that environment on a free
# port (PORT=0: it binds one and logs the address) and sets `base` once it answers.
start_server() {
  local log="$1"
  shift
  data_dir="$(mktemp -d)"
  env -u EPICENTER_TOKEN PORT=0 EPICENTER_DATA_DIR="$data_dir" NO_COLOR=1 \
    RUST_LOG="${RUST_LOG:-warn,epicenter_server=info}" "$@" "$blog" >"$log" 2>&1 &
  server_pid=$!
  local port=""
  for _ in $(seq 1 300); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "schemathesis: the blog example exited before serving; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    port="$(grep -o '127\.0\.0\.1:[0-9]\+' "$log" | head -n 1 | cut -d: -f2 || true)"
    if [ -n "$port" ] &&
      curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/openapi/json" 2>/dev/null; then
      base="http://127.0.0.1:$port"
      echo "schemathesis: blog example serving on $base"
      return 0
    fi
    sleep 0.1
  done
  echo "schemathesis: the blog example did not answer within 30 s; its log:" >&2
  cat "$log" >&2
  return 1
}

failed=()
# fuzz NAME [st options...]: one schemathesis run against the server at $base.
fuzz() {
  local name="$1"
  shift
  local dir="$out/$name"
  local cmd=(
    "$st" run "$base/openapi/json"
    --max-examples "$max_examples"
    --seed "$seed"
    --workers 2
    --request-timeout 10
    --generation-database none
    --report junit,har
    --report-dir "$dir"
    --no-color
    "$@"
  )
  echo
  echo "schemathesis: pass '$name': ${cmd[*]}"
  local start=$SECONDS status=0
  # From the report folder: schemathesis keeps a `.schemathesis/` cache in its working dir.
  # pipefail: the pipeline fails with schemathesis' (or timeout's) status.
  (cd "$dir" && timeout --kill-after=10 "$time_limit" "${cmd[@]}") 2>&1 |
    tee "$dir/output.txt" || status=$?
  echo "schemathesis: pass '$name' finished in $((SECONDS - start)) s with exit code $status"
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "schemathesis: the server died during pass '$name'; the end of its log:" >&2
    tail -n 50 "$dir/server.log" >&2
    status=1
  fi
  if [ "$status" -ne 0 ]; then
    failed+=("$name")
  fi
}

# Pass 1: no auth.
mkdir -p "$out/open"
start_server "$out/open/server.log"
# One row, so reads and updates of an existing id have something to hit from the start.
curl -fsS -o /dev/null --max-time 5 -X POST "$base/workspaces/blog/tables/posts" \
  -H 'content-type: application/json' -d '{"id":"seed","title":"Seeded"}'
fuzz open --checks "$checks"
stop_server

# Pass 2: a token server, fuzzed with the token (and probed without it by ignored_auth).
token="schemathesis-$RANDOM$RANDOM"
mkdir -p "$out/token"
start_server "$out/token/server.log" EPICENTER_TOKEN="$token"
fuzz token --checks "$checks,ignored_auth" --header "Authorization: Bearer $token"
stop_server

echo
# The closing line counts passes (schemathesis runs), in the plain form CI logs read.
passes=2
echo "schemathesis: $((passes - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "schemathesis: failed pass(es): ${failed[*]} (reports and server logs: $out)" >&2
  exit 1
fi
