#!/usr/bin/env bash
# Crash test, long version: the `acknowledged_writes_survive_repeated_sigkill` test of
# tests/sync_durability.rs, release build, 100 SIGKILL/restart cycles by default.
#
#   bash benches/crash/run.sh                  # 100 cycles, fresh random kill timings
#   CYCLES=300 bash benches/crash/run.sh       # more cycles
#   SEED=1234 bash benches/crash/run.sh        # replay the kill timings of an earlier run
#
# Each cycle starts the server (a child process on 127.0.0.1, port 0, SQLite storage in a
# temporary directory that survives the cycles), checks that it serves every update
# acknowledged so far, puts it under load (4 raw y-websocket clients writing to the `blog`
# room, each update followed by SYNC_STATUS, and 1 REST client upserting rows), waits until
# every writer has an acknowledged write, lets the load run 50–400 ms, and SIGKILLs it. A
# last start checks everything once more. A sync update counts as acknowledged once a
# SYNC_STATUS sent after it was echoed, a REST row once its 201 arrived.
#
# Prints one line per cycle and a summary (cycles, acknowledged updates, presence checks,
# elapsed, seed); exits non-zero, naming the missing updates, if any acknowledged update was
# lost.
set -euo pipefail
cd "$(dirname "$0")/../.."

export EPICENTER_CRASH_CYCLES=${CYCLES:-100}
if [ -n "${SEED:-}" ]; then export EPICENTER_CRASH_SEED=$SEED; fi

cargo test --release --test sync_durability --no-run
start=$(date +%s.%N)
cargo test --release --test sync_durability -- --nocapture --exact \
  acknowledged_writes_survive_repeated_sigkill
end=$(date +%s.%N)
printf 'crash run: %s cycles, wall time %.1f s (test binary only, build excluded)\n' \
  "$EPICENTER_CRASH_CYCLES" "$(awk "BEGIN { print $end - $start }")"
