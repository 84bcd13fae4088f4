#!/usr/bin/env bash
# The seeded fault schedule of tests/cluster_faults.rs, longer: three `blog` nodes over a
# PostgreSQL and a Redis server of their own, writes round-robin under faults (a node killed
# with SIGKILL and restarted, Redis restarted empty, PostgreSQL restarted with -m immediate);
# afterwards every node must have every acknowledged write.
#
#   benches/cluster/faults.sh                 # 100 cycles, the default seed
#   CYCLES=500 SEED=7 benches/cluster/faults.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --all-features --example blog >&2
EPICENTER_FAULT_CYCLES="${CYCLES:-100}" EPICENTER_FAULT_SEED="${SEED:-20261203}" \
  cargo test --all-features --test cluster_faults seeded_fault_schedule -- --nocapture
