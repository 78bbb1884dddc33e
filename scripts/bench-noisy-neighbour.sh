#!/usr/bin/env bash
# Noisy neighbours: the victim tenant's latency while an attacker tenant runs
# each isolation attack in turn, against the victim alone. Prints a table.
# Usage: scripts/bench-noisy-neighbour.sh [MODEL_DIR] [REQUESTS]
# (default: the converted default model, 30 victim requests per row)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
model=${1:-}
[ -n "$model" ] || model=$(bash scripts/convert-default-model.sh)
log "building the gateway and the benchmark"
cargo build --quiet --bin loragate --example noisy_neighbour
LORAGATE_BIN="$LORAGATE_BIN" "$CARGO_TARGET_DIR/debug/examples/noisy_neighbour" "$model" "${2:-30}"
