#!/usr/bin/env bash
# User-space instructions the release `blog` example runs per GET of one row, counted by
# callgrind (Debian package `valgrind`): unlike requests/s, the count does not depend on what
# else runs on the machine.
#
#   bash benches/rest/instructions.sh             # 2,000 keep-alive GETs after 2,000 to warm up
#   N=5000 BLOG=/path/to/blog bash benches/rest/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-2000}
PORT=${PORT:-39131}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

if [ -z "${BLOG:-}" ]; then
  cargo build --release --example blog >/dev/null
  BLOG="${CARGO_TARGET_DIR:-target}/release/examples/blog"
fi
data=$(mktemp -d)
out=$(mktemp -d)
EPICENTER_DATA_DIR="$data" PORT="$PORT" RUST_LOG=warn valgrind --tool=callgrind \
  --callgrind-out-file="$out/callgrind.out" "$BLOG" >/dev/null 2>"$out/valgrind.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data" "$out"' EXIT
base="http://127.0.0.1:$PORT"
for _ in $(seq 300); do curl -sf "$base/" >/dev/null && break; sleep 0.2; done
curl -sf -X POST -H 'content-type: application/json' \
  -d '{"id":"seed-500","title":"Seed post number 500"}' "$base/workspaces/blog/tables/posts" >/dev/null

# One curl reuses its connection for every URL it is given.
urls=()
for _ in $(seq "$N"); do urls+=("$base/workspaces/blog/tables/posts/seed-500"); done
curl -sf "${urls[@]}" >/dev/null
callgrind_control -z "$server" >/dev/null 2>&1
curl -sf "${urls[@]}" >/dev/null
callgrind_control -d "$server" >/dev/null 2>&1
# The dump is written before callgrind_control returns; the totals line holds the count.
dump=$(ls -t "$out"/callgrind.out* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "GET one row: $((total / N)) instructions per request (user space, $N requests)"
