#!/usr/bin/env bash
# Fair share between tenants: B's time to first token while A floods, and
# A's throughput, FIFO against fair admission. Prints a table.
# Usage: scripts/bench-fairness.sh [MODEL_DIR] [B_REQUESTS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
model=${1:-}
[ -n "$model" ] || model=$(bash scripts/convert-default-model.sh)
log "building the gateway and the benchmark"
cargo build --quiet --bin loragate --example fairness
LORAGATE_BIN="$LORAGATE_BIN" "$CARGO_TARGET_DIR/debug/examples/fairness" "$model" "${2:-20}"
